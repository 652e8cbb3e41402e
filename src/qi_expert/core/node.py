"""Where Node.js and the pinned TypeScript are. The compiler (typecheck.py) and the sandbox that runs
the tests (sandbox.py) both need them; each raises its own error when they are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

from qi_expert.core.config import PACKAGE_ROOT, ROOT


def binary() -> str | None:
    return shutil.which("node")


def modules() -> Path | None:
    """The node_modules holding the pinned TypeScript: this checkout's, else an enclosing one
    (a queued DVC experiment runs in a copy under .dvc/tmp/exps without node_modules), else the
    installed package's."""
    for folder in (ROOT, *ROOT.parents, PACKAGE_ROOT):
        if (folder / "node_modules" / "typescript").is_dir():
            return folder / "node_modules"
    return None
