"""The records file of a dataset run: JSON lines behind a header that holds the settings.

Safe to resume, retry and share a folder:
- the first line is `{"header": {"schema", "settings", ...}}`; resuming with other
  settings is refused, naming what differs;
- a truncated last line (a kill mid-write) is dropped with a warning and its item redone;
- a lock file next to it stops a second run on the same file (a stale lock — its
  process gone — is taken over with a warning).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Optional

SCHEMA = 2


class SettingsMismatch(ValueError):
    """A records file written with other settings."""


class RunLocked(RuntimeError):
    """Another run is writing the same records file."""


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every setting that differs (nested dicts flattened)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def read_records(path: Path, repair: bool = True) -> tuple[Optional[dict], list[dict]]:
    """The header and the records of a file; a torn last line is dropped (and, with `repair`, cut from
    the file: only its writer may do that)."""
    path = Path(path)
    if not path.exists():
        return None, []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    header, records, good_bytes = None, [], 0
    for n, line in enumerate(lines):
        last = n == len(lines) - 1
        if not line.strip():
            good_bytes += len(line) + (0 if last else 1)
            continue
        try:
            value = json.loads(line)
            if last and not raw.endswith(b"\n"):
                raise ValueError("no line end")
        except ValueError:
            if last or all(not rest.strip() for rest in lines[n + 1:]):
                if repair:
                    warnings.warn(f"{path.name}: the last line is incomplete (the run was interrupted while "
                                  "writing); it is dropped and its item will be traced again")
                    with open(path, "r+b") as f:
                        f.truncate(good_bytes)
                break
            raise ValueError(f"{path} line {n + 1} is not valid JSON; the records file is damaged") from None
        good_bytes += len(line) + 1
        if isinstance(value, dict) and "header" in value:
            header = value["header"]
        else:
            records.append(value)
    return header, records


def make_header(settings: dict) -> dict:
    from lalm_lens import __version__

    return {"schema": SCHEMA, "settings": settings, "lalm_lens": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def check_header(path: Path, header: Optional[dict], settings: dict, has_records: bool) -> None:
    """Refuse to resume a file written with other settings (or of an unknown schema)."""
    if header is None:
        if has_records:
            raise SettingsMismatch(f"{path} holds records without a settings header (an older lalm-lens wrote it); "
                                   "use a new --out, or --overwrite to start over")
        return
    if header.get("schema", 0) > SCHEMA:
        raise SettingsMismatch(f"{path} was written with records schema {header.get('schema')}; this lalm-lens "
                               f"reads up to {SCHEMA} (upgrade lalm-lens)")
    diff = differences(header.get("settings", {}), settings)
    if diff:
        raise SettingsMismatch(f"{path} was written with other settings ({'; '.join(diff)}): its records cannot "
                               "be reused. Use a new --out (out=), or --overwrite (overwrite=True) to start over")


def rank_file(out: Path, rank: int) -> Path:
    """Where rank `rank` of a torchrun writes: `records.rank3.jsonl` beside `records.jsonl`."""
    return out.with_name(f"{out.stem}.rank{rank}{out.suffix}")


def rank_files(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.stem}.rank*{out.suffix}"))


def read_all(out: Path, settings: dict) -> dict[str, dict]:
    """Every record of a run so far — the merged file and any rank's — by id, settings checked.
    The last record of an id wins: a retried item's, or a changed item's new one (rank files are newer
    than the merged file, and lines are in the order they were written)."""
    done: dict[str, dict] = {}
    for path in [out] + rank_files(out):
        header, records = read_records(path, repair=False)
        check_header(path, header, settings, bool(records))
        for record in records:
            done.pop(record["id"], None)  # re-inserted last: the merged file keeps the order of writing
            done[record["id"]] = record
    return done


def superseded(path: Path) -> bool:
    """Whether a records file holds more than one record for an id (a retried or redone item)."""
    _, records = read_records(path, repair=False)
    return len({r["id"] for r in records}) < len(records)


def merge(out: Path, settings: dict) -> None:
    """Fold every rank's records into `out` (rewritten whole, then swapped in) and remove the rank files."""
    records = read_all(out, settings)
    take_lock(out.with_name(out.name + ".lock"))
    try:
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps({"header": make_header(settings)}) + "\n")
            for record in records.values():
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, out)
        for path in rank_files(out):
            path.unlink()
    finally:
        release_lock(out.with_name(out.name + ".lock"))


class RecordsWriter:
    """Appends records to a file under a lock; one JSON object per line, flushed as it is written."""

    def __init__(self, path: Path, settings: dict, overwrite: bool = False):
        self.path = Path(path)
        self.lock = self.path.with_name(self.path.name + ".lock")
        self.settings = settings
        self.overwrite = overwrite
        self.handle = None

    def __enter__(self) -> "RecordsWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        take_lock(self.lock)
        try:
            if self.overwrite and self.path.exists():
                self.path.unlink()
            header, records = read_records(self.path)
            check_header(self.path, header, self.settings, bool(records))
            self.records = records
            self.handle = self.path.open("a")
            if header is None:
                self.write({"header": make_header(self.settings)})
        except BaseException:
            release_lock(self.lock)
            raise
        return self

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()
        release_lock(self.lock)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_lock(lock: Path) -> None:
    """Create `lock` (pid and host inside), or refuse when a live process holds it."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                other = {}
            same_host = other.get("host") == me["host"]
            if same_host and isinstance(other.get("pid"), int) and not _alive(other["pid"]):
                warnings.warn(f"{lock.name}: the run that held this lock (pid {other['pid']}) is gone; taking it over")
                lock.unlink(missing_ok=True)
                continue
            raise RunLocked(f"another run (pid {other.get('pid')} on {other.get('host')}) is writing "
                            f"{lock.name[:-5]}; wait for it, or delete {lock} if that run is dead") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise RunLocked(f"could not take {lock}")


def release_lock(lock: Path) -> None:
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass
