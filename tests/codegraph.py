"""The qi_expert modules a file imports, read from its source (tests/test_layout.py, test_config.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from qi_expert.core.config import ROOT

PACKAGE = ROOT / "src" / "qi_expert"


def module_file(dotted: str) -> Path | None:
    """src/qi_expert/... file of a dotted module name (a package stands for its __init__.py)."""
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_modules(path: Path) -> set[Path]:
    """The qi_expert module files `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from qi_expert.data import bench`: the module bench, or a name defined in the package.
            targets = [f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}") else node.module
                       for a in node.names]
        else:
            continue
        for dotted in targets:
            if dotted == "qi_expert" or dotted.startswith("qi_expert."):
                file = module_file(dotted)
                if file is not None and file.name != "__init__.py":
                    found.add(file)
    return found


# Code that carries a stage's outputs without deciding them: reading params (config), atomic
# writes (files), child processes that die with the stage (lifetime), finding node (node), MLflow
# logging (tracking: no DVC out), the process set-up (runtime, quiet: speed and messages). Not
# deps, so that changing how a file is written does not rerun a 40-minute eval.
PLUMBING = ("config.py", "files.py", "lifetime.py", "node.py", "tracking.py", "runtime.py", "quiet.py")


def closure(script: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imported_modules(path)
    return seen - {script}
