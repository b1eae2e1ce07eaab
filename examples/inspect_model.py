"""A tour of a hooked LALM: the cache, the audio encoder's hooks, text-to-audio attention, a logit lens.

    python examples/inspect_model.py [--model demo]
"""

import argparse

import torch

from lalm_lens import HookedLALM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="demo")
    p.add_argument("--audio")
    p.add_argument("--prompt")
    args = p.parse_args()
    model = HookedLALM.from_pretrained(args.model)
    if args.audio is None:
        from lalm_lens.demo import demo_example

        args.audio, args.prompt, answer, options, prefix = demo_example("inspect_clip.wav")
    else:
        options, prefix = None, None
    inp = model.prepare(args.audio, args.prompt, answer_prefix=prefix, options=options)
    print(inp)

    # 1. Everything is cached under TransformerLens names.
    logits, cache = model.run_with_cache(inp)
    print(f"{len(cache)} activations cached; a few:", [k for k in cache.keys()][:6], "...")
    print("encoder output", tuple(cache["audio_encoder.hook_out"].shape),
          "| audio vectors", tuple(cache["hook_audio_embeds"].shape),
          "| residual entering LM layer 0", tuple(cache["resid_pre", 0].shape))

    # 2. Inside the audio encoder: how much each encoder layer's attention looks at the first frames.
    for i in range(len(model.audio_encoder.blocks)):
        pattern = cache[f"audio_encoder.blocks.{i}.attn.hook_pattern"][0]  # [head, frame, frame]
        print(f"encoder layer {i}: mean attention entropy "
              f"{(-(pattern * (pattern + 1e-9).log()).sum(-1)).mean():.2f} nats over {pattern.shape[-1]} frames")

    # 3. How much the final token attends to the audio tokens, per LM layer (mean over heads).
    audio = inp.audio_positions[0]
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer][0, :, -1]  # [head, key]
        print(f"LM layer {layer}: final token -> audio attention {pattern[:, audio].sum(-1).mean():.2f}")

    # 4. Logit lens: the top token read from the residual stream after each layer.
    resid, labels = cache.accumulated_resid(pos_slice=-1, apply_ln=True, return_labels=True)
    lens = resid[:, 0] @ model.W_U  # [layer, vocab]
    for label, row in zip(labels, lens):
        print(f"{label:>10s}: {model.to_str_tokens(row.argmax()[None])[0]!r}")
    print("model's answer:", model.to_str_tokens(logits[0, -1].argmax()[None])[0])


if __name__ == "__main__":
    with torch.no_grad():
        main()
