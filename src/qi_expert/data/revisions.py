"""A git checkout's corpus folder as it was at a revision, and commits sampled from its history
(the drift report's surface diff and the pattern history read them; nothing is checked out)."""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Iterator


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def tree_at(corpus_root: Path, rev: str) -> Iterator[Path]:
    """The corpus folder as it was at git revision `rev` of the checkout holding it, in a temporary
    folder (git archive: nothing is checked out); the checkout's node_modules linked in."""
    corpus_root = Path(corpus_root).resolve()
    try:
        top = Path(_git(corpus_root, "rev-parse", "--show-toplevel").strip())
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        raise ValueError(f"{corpus_root} is not in a git checkout: its history cannot be read") from e
    sub = corpus_root.relative_to(top).as_posix()
    try:  # from the top: pathspecs are relative to git's working folder
        archive = subprocess.run(["git", "-C", str(top), "archive", "--format=tar", rev, "--", sub],
                                 capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise ValueError(f"git archive {rev} of {corpus_root}: {e.stderr.decode().strip()}") from e
    with tempfile.TemporaryDirectory(prefix="qi-rev-") as tmp:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        old_root = Path(tmp) / sub
        if (corpus_root / "node_modules").exists() and not (old_root / "node_modules").exists():
            (old_root / "node_modules").symlink_to(corpus_root / "node_modules")
        yield old_root


def sampled_commits(corpus_root: Path, n: int) -> list[dict]:
    """Up to `n` commits that touched the corpus folder, evenly spaced, oldest first, the newest included."""
    lines = _git(Path(corpus_root), "log", "--format=%H %cs", "--", ".").split("\n")
    commits = [{"commit": c, "date": d} for c, d in (line.split() for line in lines if line.strip())][::-1]
    if len(commits) <= n:
        return commits
    step = (len(commits) - 1) / max(1, n - 1)
    return [commits[round(i * step)] for i in range(n)]
