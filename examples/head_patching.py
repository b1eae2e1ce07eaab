"""Which heads carry the audio? Restore one head's attention output (z) at a time, at every layer.

Layer x head maps of the recovery, and of the attention each head pays from the
final position to the audio (clean vs corrupted).

    python examples/head_patching.py                      # demo model, z at every position
    python examples/head_patching.py --positions final
"""

from _item import load, parser

from lalm_lens.tracing import head_trace, plots


def main():
    p = parser(__doc__)
    p.add_argument("--positions", default="all", choices=["all", "final"])
    args = p.parse_args()
    model, inp, answer = load(args)
    result = head_trace(model, inp, answer=answer, positions=args.positions)
    print(result.summary())
    result.save(f"{args.out}/heads.json")
    print("wrote", plots.save(result.plot(), f"{args.out}/heads.png"))


if __name__ == "__main__":
    main()
