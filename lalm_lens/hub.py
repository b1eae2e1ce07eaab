"""Checkpoints by hub id or folder, fetching only the files the loader reads.

A hub id first brings the small files (configs, tokenizer and processor files,
shard indices, chat templates); weight files come later, one by one, when a
family asks for them — the shards its index lists for the keys it reads, never
`consolidated.safetensors` (9 GB for Voxtral Mini), Whisper's extra float32
shards, or Qwen2.5-Omni's talker and vocoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from weight_conversion.errors import CheckpointError
from weight_conversion.reading import checkpoint_shards, shard_names

METADATA_PATTERNS = ["*.json", "*.jinja", "*.model", "*.tiktoken", "*.txt"]  # no weight files


@dataclass(frozen=True)
class Checkpoint:
    """A local checkpoint folder, and the hub repository it came from (None: a local folder)."""

    folder: Path
    repo_id: Optional[str] = None

    @property
    def name(self) -> str:
        return self.repo_id or self.folder.name

    def fetch(self, names: Sequence[str]) -> list[Path]:
        """The files `names` of the checkpoint, downloaded first when missing and from the hub."""
        paths = [self.folder / n for n in names]
        missing = [n for n, p in zip(names, paths) if not p.is_file()]
        if missing and self.repo_id is not None:
            from huggingface_hub import hf_hub_download

            revision = self.folder.name  # snapshot folders are named by commit
            for name in missing:
                try:
                    hf_hub_download(self.repo_id, name, revision=revision)
                except Exception as err:  # offline, gated, removed
                    raise CheckpointError(
                        f"could not download {name} of {self.repo_id}; pass a local folder or check the network "
                        f"({type(err).__name__})"
                    ) from None
        return paths

    def shards(self, stem: str = "model", keep: Optional[Callable[[str], bool]] = None) -> tuple[Path, ...]:
        """The weight files holding the keys `keep` accepts (all keys by default)."""
        self.fetch(shard_names(self.folder, stem, keep))
        return tuple(checkpoint_shards(self.folder, stem, keep))

    def config(self) -> dict:
        """`config.json`, with a clear error naming the file when it is missing or unreadable."""
        path = self.folder / "config.json"
        if not path.is_file():
            raise CheckpointError(f"no config.json in {self.folder}")
        try:
            config = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not readable JSON: {err}") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        return config


def resolve_checkpoint(name_or_path: Union[str, Path, Checkpoint]) -> Checkpoint:
    """A checkpoint from a folder, "demo" or "demo-letters" (the bundled models), or a hub id (its small
    files fetched now)."""
    if isinstance(name_or_path, Checkpoint):
        return name_or_path
    if str(name_or_path) in ("demo", "demo-letters"):
        from lalm_lens.demo import DEMO_DIR, DEMO_LETTERS_DIR

        folder, task = (DEMO_DIR, "") if str(name_or_path) == "demo" else (DEMO_LETTERS_DIR, " --task letters")
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"the {name_or_path} model is missing from {folder}; rebuild it with "
                                  f"python -m lalm_lens.demo.train{task} --out {folder}")
        return Checkpoint(folder)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return Checkpoint(path)
    if path.exists():
        raise CheckpointError(f"{path} is a file; give the checkpoint folder (with config.json)")
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint folder {name!r}, and it is not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        return Checkpoint(Path(snapshot_download(name, allow_patterns=METADATA_PATTERNS)), name)
    except Exception as err:  # offline, unknown repo, gated repo, ...
        raise CheckpointError(
            f"could not download {name!r} from the Hugging Face hub; pass a local folder or check the network "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
