"""What does each layer already predict? A logit lens at the final position and over the audio positions.

P(answer) and the top tokens after every layer (clean vs silence), and, per audio
token and layer, the answer's rank (AudioLens-style).

    python examples/logit_lens.py                         # demo model
"""

from _item import load, parser

from lalm_lens.tracing import logit_lens, plots


def main():
    args = parser(__doc__).parse_args()
    model, inp, answer = load(args)
    result = logit_lens(model, inp, answer=answer)
    print(result.summary())
    result.save(f"{args.out}/lens.json")
    print("wrote", plots.save(result.plot(), f"{args.out}/lens.png"))


if __name__ == "__main__":
    main()
