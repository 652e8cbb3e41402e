"""Deterministic, atomic file output: sorted keys, fixed separators, newline at the end.

Two runs of a data stage must give byte-identical files, so every JSON goes through here. Each
file is written under a temporary name beside it and moved into place when complete, so an
interrupted stage never leaves a half-written file that looks whole.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Iterable, Iterator


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open `path` for writing under a temporary name; it replaces `path` only if the block completes.

    An error while writing (a full disk) names `path`, not the temporary file, and leaves `path`
    as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open(mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (None, str(tmp)):
            e.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of `path` left by a writer that was killed outright (SIGKILL runs no cleanup)."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = old.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and not _running(int(pid)):
            old.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(final: Path) -> Path:
    """An empty folder beside `final` to build it in (a killed run's leftovers removed)."""
    staging = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def replace_dir(staging: Path, final: Path) -> None:
    """Move a completed folder into place: `final` is the old folder or the new one, never a mix."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n


def read_jsonl(path: Path, skip_broken: bool = False) -> Iterator[dict]:
    """Rows of a JSONL file; a line that is not JSON is an error naming it, or, with `skip_broken`
    (a log appended to by a process that may have died mid-line), left out."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    if not skip_broken:
                        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e


def append_jsonl(path: Path, row: Any) -> None:
    """One row added to a log, in one write (O_APPEND): concurrent writers never interleave a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(dumps(row) + "\n")


def write_json(path: Path, obj: Any) -> None:
    """Pretty JSON for metrics files people read and diff."""
    write_text(path, json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks; remembered while its size and mtime stay the
    same (a model folder is hashed once per process, not once per cache key)."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
