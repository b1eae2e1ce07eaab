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
    item_sets = ["Gender"]                     # only these item sets (default: every one)
    [[item_sets]]
    name = "Gender"
    sakura = {root = "SAKURA", track = "Gender"}   # or items = "gender.jsonl"; limit = 500
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from lalm_lens.study.checks import (MODEL_KEYS, SAKURA_KEYS, SET_KEYS, TOP_KEYS, StudyConfigError, check_dtype,
                                    check_trace, integer, known, nearest, refuse_duplicates, refuse_shared_folders,
                                    text)
from lalm_lens.tracing.interventions import Corruption, GaussianNoise, Silence, WhiteNoise

CORRUPTIONS = {"silence": Silence, "noise": GaussianNoise, "snr": WhiteNoise}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    dtype: Optional[str] = None
    device: Optional[str] = None
    encoder_path: Optional[str] = None
    llm_path: Optional[str] = None
    item_sets: Optional[tuple] = None  # the item sets this model is traced on (None: every one)


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
                if model.item_sets is not None and item_set.name not in model.item_sets:
                    continue
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
            raise StudyConfigError(f"{where}: unknown corruption {entry!r}{nearest(entry, CORRUPTIONS)}; choose from "
                                   f"{sorted(CORRUPTIONS)}")
        return entry, CORRUPTIONS[entry]()
    if not isinstance(entry, dict) or entry.get("kind") not in CORRUPTIONS:
        kind = entry.get("kind") if isinstance(entry, dict) else entry
        raise StudyConfigError(f"{where}: a corruption is a name or a table with kind = one of {sorted(CORRUPTIONS)}"
                               f", got {kind!r}{nearest(kind, CORRUPTIONS)}")
    entry = dict(entry)
    kind = entry.pop("kind")
    known(entry, ("label", *(f.name for f in fields(CORRUPTIONS[kind]))), f"{where} ({kind})")
    label = entry.pop("label", kind if not entry else kind + "-" + "-".join(f"{k}{v}" for k, v in entry.items()))
    text(label, f"{where} label")
    try:
        value = CORRUPTIONS[kind](**entry)
        value.check()
    except (TypeError, ValueError) as err:
        raise StudyConfigError(f"{where}: {err}") from None
    return label, value


def read_study(path) -> Study:
    """Read and check a whole study file (`.toml`, `.yaml`/`.yml`) before any model loads; relative paths are
    the file's folder's."""
    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"no study file {path}")
    text_ = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text_)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text_)
        else:
            raise StudyConfigError(f"{path}: a study file is .toml or .yaml")
    except StudyConfigError:
        raise
    except Exception as err:  # the parser's own error, with its line
        raise StudyConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{path} must hold a table of settings")
    known(raw, TOP_KEYS, str(path))
    base, name = path.parent, path.name

    def local(p: Optional[str]) -> Optional[str]:
        return None if p is None else str(p if Path(p).is_absolute() else base / p)

    models = [_model(m, f"{name} models[{n}]", base, local) for n, m in enumerate(_list(raw, "models", name))]
    sets = [_item_set(s, f"{name} item_sets[{n}]", n, local) for n, s in enumerate(_list(raw, "item_sets", name))]
    if not models or not sets:
        raise StudyConfigError(f"{name} needs at least one [[models]] and one [[item_sets]]")
    entries = raw.get("corruptions", ["silence"])
    if not isinstance(entries, list) or not entries:
        raise StudyConfigError(f"{name} corruptions must be a non-empty list, got {entries!r}")
    pairs = [_corruption(c, f"{name} corruptions[{n}]") for n, c in enumerate(entries)]
    modes = raw.get("modes", ["layers", "tokens"])
    if not isinstance(modes, list) or not modes or any(m not in ("layers", "tokens") for m in modes):
        raise StudyConfigError(f"{name}: modes must be a non-empty list of 'layers' and 'tokens', got {modes}")
    trace = check_trace(raw.get("trace"), f"{name} [trace]")
    for what, names in (("models", [m.name for m in models]), ("item_sets", [s.name for s in sets]),
                        ("corruptions", [label for label, _ in pairs])):
        refuse_duplicates(names, what, name)
        refuse_shared_folders(names, what, name, slug)
    for n, m in enumerate(models):
        unknown = [s for s in m.item_sets or () if s not in {x.name for x in sets}]
        if unknown:
            raise StudyConfigError(f"{name} models[{n}] item_sets: no item set named {unknown[0]!r}"
                                   f"{nearest(unknown[0], [x.name for x in sets])}")
    out = raw.get("out", "study-out")
    return Study(out=Path(local(text(out, f"{name} out"))), models=models, item_sets=sets, corruptions=dict(pairs),
                 modes=list(dict.fromkeys(modes)), trace=trace)


def _list(raw: dict, key: str, name: str) -> list:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise StudyConfigError(f"{name} {key} must be a list of tables ([[{key}]]), got {value!r}")
    return value


def _model(m, where: str, base: Path, local) -> ModelSpec:
    known(m, MODEL_KEYS, where)
    if "path" not in m:
        raise StudyConfigError(f"{where} needs path (a hub id or folder)")
    p = text(m["path"], f"{where} path")
    if p not in ("demo", "demo-letters") and (base / p).exists():  # beside the config; else a hub id or as given
        p = local(p)
    sets = m.get("item_sets")
    if sets is not None and (not isinstance(sets, list) or not sets or not all(isinstance(s, str) for s in sets)):
        raise StudyConfigError(f"{where} item_sets must be a non-empty list of item set names, got {sets!r}")
    return ModelSpec(name=text(m.get("name", Path(p).name), f"{where} name"), path=p,
                     dtype=check_dtype(m.get("dtype"), f"{where} dtype"), device=m.get("device"),
                     encoder_path=local(m.get("encoder_path")), llm_path=local(m.get("llm_path")),
                     item_sets=None if sets is None else tuple(sets))


def _item_set(s, where: str, n: int, local) -> ItemSet:
    known(s, SET_KEYS, where)
    if bool(s.get("items")) == bool(s.get("sakura")):
        raise StudyConfigError(f"{where} needs items = FILE or sakura = {{root, track}}")
    sakura = None
    if s.get("sakura"):
        known(s["sakura"], SAKURA_KEYS, f"{where} sakura")
        if "root" not in s["sakura"] or "track" not in s["sakura"]:
            raise StudyConfigError(f"{where} sakura needs root and track")
        sakura = dict(s["sakura"], root=local(s["sakura"]["root"]))
    limit = s.get("limit")
    return ItemSet(name=text(s.get("name", f"set{n}"), f"{where} name"),
                   items=local(text(s["items"], f"{where} items")) if s.get("items") else None, sakura=sakura,
                   limit=None if limit is None else integer(limit, f"{where} limit", 1))
