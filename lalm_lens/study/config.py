"""A study configuration (TOML or YAML): models x item sets x corruptions x modes.

    out = "study-out"
    modes = ["layers", "tokens"]
    corruptions = ["silence"]                  # or {kind = "noise", scale = 3, n_samples = 10, seed = 0}, ...
    [trace]                                    # settings every run shares (trace_dataset's keywords)
    states = "resid_post"
    batch_items = "auto"
    [[models]]
    name = "Qwen2-Audio-7B-Instruct"
    path = "Qwen/Qwen2-Audio-7B-Instruct"
    dtype = "bfloat16"                         # also: device, encoder_path, llm_path
    [[item_sets]]
    name = "Gender"
    sakura = {root = "SAKURA", track = "Gender"}   # or items = "gender.jsonl"; limit = 500
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lalm_lens.tracing.interventions import Corruption, GaussianNoise, Silence, WhiteNoise

TRACE_KEYS = ("states", "metric", "window", "engine", "min_effect", "filter", "batch_items", "layers")
MODEL_KEYS = ("name", "path", "dtype", "device", "encoder_path", "llm_path")
SET_KEYS = ("name", "items", "sakura", "limit")
CORRUPTIONS = {"silence": Silence, "noise": GaussianNoise, "snr": WhiteNoise}


class StudyConfigError(ValueError):
    """The study file is not what `lalm-lens study` reads."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    dtype: Optional[str] = None
    device: Optional[str] = None
    encoder_path: Optional[str] = None
    llm_path: Optional[str] = None


@dataclass(frozen=True)
class ItemSet:
    name: str
    items: Optional[str] = None  # a JSONL file (relative to the config's folder)
    sakura: Optional[dict] = None  # {root, track, template}
    limit: Optional[int] = None

    def load(self) -> list:
        from lalm_lens.tracing import load_sakura, read_items

        items = load_sakura(**self.sakura) if self.sakura else read_items(self.items)
        return items[: self.limit]


@dataclass
class Study:
    out: Path
    models: list[ModelSpec]
    item_sets: list[ItemSet]
    corruptions: dict[str, Corruption]  # label -> value
    modes: list[str]
    trace: dict[str, Any] = field(default_factory=dict)

    def runs(self):
        """(model, item set, corruption label, mode) in the order they run (a model loads once)."""
        for model in self.models:
            for item_set in self.item_sets:
                for label in self.corruptions:
                    for mode in self.modes:
                        yield model, item_set, label, mode

    def run_dir(self, model: ModelSpec, item_set: ItemSet, label: str, mode: str) -> Path:
        return self.out / slug(model.name) / slug(item_set.name) / slug(label) / mode


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _corruption(entry, where: str) -> tuple[str, Corruption]:
    if isinstance(entry, str):
        if entry not in CORRUPTIONS:
            raise StudyConfigError(f"{where}: unknown corruption {entry!r}; choose from {sorted(CORRUPTIONS)}")
        return entry, CORRUPTIONS[entry]()
    if not isinstance(entry, dict) or entry.get("kind") not in CORRUPTIONS:
        raise StudyConfigError(f"{where}: a corruption is a name or a table with kind = one of {sorted(CORRUPTIONS)}")
    entry = dict(entry)
    kind = entry.pop("kind")
    label = entry.pop("label", kind if not entry else kind + "-" + "-".join(f"{k}{v}" for k, v in entry.items()))
    try:
        value = CORRUPTIONS[kind](**entry)
        value.check()
    except (TypeError, ValueError) as err:
        raise StudyConfigError(f"{where}: {err}") from None
    return label, value


def _known(table: dict, keys, where: str) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise StudyConfigError(f"{where}: unknown key(s) {unknown}; known: {', '.join(keys)}")


def read_study(path) -> Study:
    """Read and check a study file (`.toml`, `.yaml`/`.yml`); relative paths are the file's folder's."""
    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"no study file {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raise StudyConfigError(f"{path}: a study file is .toml or .yaml")
    except StudyConfigError:
        raise
    except Exception as err:  # the parser's own error, with its line
        raise StudyConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{path} must hold a table of settings")
    _known(raw, ("out", "models", "item_sets", "corruptions", "modes", "trace"), str(path))
    base = path.parent

    def local(p: Optional[str]) -> Optional[str]:
        return None if p is None else str(p if Path(p).is_absolute() else base / p)

    models = []
    for n, m in enumerate(raw.get("models") or []):
        _known(m, MODEL_KEYS, f"{path.name} models[{n}]")
        if "path" not in m:
            raise StudyConfigError(f"{path.name} models[{n}] needs path (a hub id or folder)")
        p = str(m["path"])
        if p != "demo" and (base / p).exists():  # a folder beside the config; else a hub id or a path as given
            p = local(p)
        models.append(ModelSpec(name=m.get("name", Path(m["path"]).name), path=p, dtype=m.get("dtype"),
                                device=m.get("device"), encoder_path=local(m.get("encoder_path")),
                                llm_path=local(m.get("llm_path"))))
    sets = []
    for n, s in enumerate(raw.get("item_sets") or []):
        _known(s, SET_KEYS, f"{path.name} item_sets[{n}]")
        if bool(s.get("items")) == bool(s.get("sakura")):
            raise StudyConfigError(f"{path.name} item_sets[{n}] needs items = FILE or sakura = {{root, track}}")
        sakura = dict(s["sakura"], root=local(s["sakura"]["root"])) if s.get("sakura") else None
        sets.append(ItemSet(name=s.get("name", f"set{n}"), items=local(s.get("items")), sakura=sakura,
                            limit=s.get("limit")))
    if not models or not sets:
        raise StudyConfigError(f"{path.name} needs at least one [[models]] and one [[item_sets]]")
    corruptions = dict(_corruption(c, f"{path.name} corruptions") for c in raw.get("corruptions", ["silence"]))
    modes = list(raw.get("modes", ["layers", "tokens"]))
    bad = [m for m in modes if m not in ("layers", "tokens")]
    if bad or not modes:
        raise StudyConfigError(f"{path.name}: modes must be a non-empty list of 'layers' and 'tokens', got {modes}")
    trace = dict(raw.get("trace") or {})
    _known(trace, TRACE_KEYS, f"{path.name} [trace]")
    names = [m.name for m in models]
    if len(set(names)) != len(names) or len({s.name for s in sets}) != len(sets):
        raise StudyConfigError(f"{path.name}: model names and item set names must be unique")
    return Study(out=Path(local(raw.get("out", "study-out"))), models=models, item_sets=sets, corruptions=corruptions,
                 modes=modes, trace=trace)
