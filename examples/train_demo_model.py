"""Train the bundled demo LALM (a tiny Qwen2-Audio-format model on synthesized sounds).

    python examples/train_demo_model.py          # ~10 min on 2 CPU cores, into lalm_lens_out/demo_model_retrained/
    python examples/train_demo_model.py --out lalm_lens/demo_model   # replace the bundled model

Seeded and deterministic on CPU (fixed --threads, deterministic algorithms): the same seed, threads and torch
build give the same losses, logged in training_report.json.

See `lalm_lens/demo/train.py` for the recipe and `lalm_lens/demo/synth.py` for the data.
"""

from lalm_lens.demo.train import main

if __name__ == "__main__":
    main()
