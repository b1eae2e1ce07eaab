"""When in the clip does the answer come from? Restore the audio positions of each 0.5 s window at each layer.

A layer x time map with the clip's spectrogram under the time axis (seconds from
the family's token timing), through the fast exact engine, and its speed-up over
one forward per cell (the reference engine).

    python examples/audio_time_sweep.py                                   # demo model
    python examples/audio_time_sweep.py --model Qwen/Qwen2-Audio-7B-Instruct --audio clip.wav \\
        --prompt "What is the gender of the speaker? Possible options: male, female." \\
        --answer-prefix "The speaker's gender is" --answer male --options male female --dtype bfloat16
"""

import time

from _item import load, parser

from lalm_lens.tracing import audio_time_trace, plots


def main():
    p = parser(__doc__)
    p.add_argument("--window-seconds", type=float, default=0.5)
    args = p.parse_args()
    model, inp, answer = load(args)
    start = time.perf_counter()
    result = audio_time_trace(model, inp, answer=answer, window_seconds=args.window_seconds)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    audio_time_trace(model, inp, answer=answer, window_seconds=args.window_seconds, engine="reference")
    reference = time.perf_counter() - start
    print(result.summary())
    print(f"fast engine {fast:.2f} s, one forward per cell {reference:.2f} s: {reference / fast:.1f}x")
    result.save(f"{args.out}/audio_time.json")
    print("wrote", plots.save(result.plot(), f"{args.out}/audio_time.png"))


if __name__ == "__main__":
    main()
