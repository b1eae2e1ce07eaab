"""Loading's seams: what the loader hands the constructor, the key table's one answer, the CLI's family flags."""

from dataclasses import replace

import pytest
import torch

from lalm_lens import HookedLALM, ProjectorConfig
from lalm_lens.components.projector_registry import PROJECTORS, build_projector
from lalm_lens.families import family_for
from weight_conversion.keys import DROP, KeyMap, Rule, Target, split, transpose


def test_constructor_takes_what_the_loader_knows(qwen2_audio_dir, qwen2_audio):
    """from_pretrained passes family, prompts and name to the constructor; a model built from a config has none."""
    from lalm_lens.hub import resolve_checkpoint

    assert qwen2_audio.name_or_path == str(qwen2_audio_dir)
    assert qwen2_audio.family is family_for("qwen2_audio") and qwen2_audio.prompts is not None
    assert qwen2_audio.tokenizer is qwen2_audio.prompts.tokenizer
    assert qwen2_audio.processor is qwen2_audio.prompts.processor
    bare = HookedLALM(qwen2_audio.config)
    assert (bare.name_or_path, bare.family, bare.prompts, bare.processor, bare.tokenizer) == (None,) * 5
    ckpt = resolve_checkpoint(qwen2_audio_dir)
    assert HookedLALM.from_pretrained(ckpt, device="cpu").name_or_path == str(ckpt.folder)


def test_lookup_answers_one_target_or_drop():
    table = KeyMap([Rule("enc.{}.w", "blocks.{}.W", transpose), Rule("enc.{}.qkv", ("q{}", "k{}", "v{}"), split(3)),
                    Rule("enc.unused", None)], aliases={"old.": "enc."}, drop_prefixes=("decoder.",))
    assert table.lookup("enc.3.w") == Target("blocks.3.W", transpose) == table.lookup("old.3.w")
    assert table.lookup("enc.3.w").names == ("blocks.3.W",)
    fused = table.lookup("enc.12.qkv")
    assert isinstance(fused, Target) and fused.names == ("q12", "k12", "v12")
    assert table.lookup("enc.unused") is DROP and table.lookup("decoder.layers.0.w") is DROP
    with pytest.raises(KeyError):
        table.lookup("enc.3.bias")


def test_unknown_projector_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown projector kind 'nope'.*linear"):
        build_projector(ProjectorConfig(kind="nope", d_in=4, d_out=4), torch.float32)
    assert set(PROJECTORS) >= {"linear", "stack", "mlp", "qformer", "tagged", "identity"}


def test_cli_family_flags_come_from_family_options(monkeypatch):
    """A family's `options` and `prepare_options` become flags of the commands, passed on to from_pretrained
    and prepare."""
    import lalm_lens.families as families
    from lalm_lens.cli import args as cli_args
    from lalm_lens.cli import build_parser
    from lalm_lens.families import Option

    extra = replace(family_for("qwen2_audio"), name="extra", model_types=("extra",),
                    options=(Option("vocoder_path", "a local vocoder folder"),),
                    prepare_options=(Option("speaker", "the speaker's name"),))
    monkeypatch.setattr(families, "REGISTRY", families.REGISTRY + (extra,))
    parser = build_parser()
    trace = parser.parse_args(["trace", "--model", "m", "--prompt", "p", "--answer", "a", "--vocoder-path", "v",
                               "--llm-path", "l", "--speaker", "Ann", "--transcript", " "])
    verify = parser.parse_args(["verify", "m", "--vocoder-path", "v"])
    assert cli_args.load_options(trace) == {"vocoder_path": "v", "llm_path": "l"}
    assert cli_args.prepare_options(trace) == {"speaker": "Ann", "transcript": " "}
    assert cli_args.load_options(verify) == {"vocoder_path": "v"} and cli_args.prepare_options(verify) == {}
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0].choices["verify"]._actions}
    assert helps["vocoder_path"] == "extra: a local vocoder folder" and helps["speaker"] == "extra: the speaker's name"
    assert helps["llm_path"].startswith("desta25, desta2: ") and helps["transcript"].startswith("desta25, desta2: ")
    seen = {}
    monkeypatch.setattr(HookedLALM, "from_pretrained", classmethod(lambda cls, name, **kw: seen.update(kw, name=name)))
    cli_args.load_model(trace)
    assert seen == dict(name="m", device=None, dtype=None, vocoder_path="v", llm_path="l")
