"""The package's plan, checked against its imports: the subpackages are layers, imports run down
them, no two modules import each other (directly or around a circle), and every stage's dvc.yaml
entry lists each file of the code it runs (so DVC reruns it when that code changes)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from codegraph import PACKAGE, PLUMBING, closure, imported_modules

from qi_expert.core.config import ROOT

# Bottom to top; a module may import its own subpackage and those below it, never one above.
LAYERS = ("core", "typescript", "data", "generation", ("train", "evaluation"), "export", "serve", "cli")


def _layer(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part == layer or (isinstance(layer, tuple) and part in layer):
            return i
    raise AssertionError(f"src/qi_expert/{part} is in no layer of tests/test_layout.py")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _place(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_imports_run_down_the_layers():
    upward = [f"{m.relative_to(PACKAGE)} -> {t.relative_to(PACKAGE)}"
              for m in _modules() for t in imported_modules(m) if _layer(_place(t)) > _layer(_place(m))]
    assert not upward, f"imports that run up the layers (see qi_expert/__init__.py): {upward}"


def test_every_module_sits_in_a_subpackage_with_a_docstring_saying_what_it_owns():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "cli.py")]
    assert not loose, f"modules outside the subpackages: {loose}"
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and (init.parent.name == "core" or "May import" in doc), init


def test_no_module_imports_itself_around_a_circle():
    graph = {m: imported_modules(m) - {m} for m in _modules()}
    state: dict[Path, int] = {}

    def visit(m: Path, trail: list[Path]) -> None:
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                circle = trail[trail.index(t):] + [t] if t in trail else [m, t]
                pytest.fail("import circle: " + " -> ".join(str(p.relative_to(PACKAGE)) for p in circle))
            if t not in state:
                visit(t, trail + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_importing_the_package_changes_nothing_in_the_process():
    """No work at import: the process set-up is core.runtime.setup(), which entry points call."""
    import subprocess
    import sys

    probe = ("import os, sys; before = dict(os.environ); import qi_expert, qi_expert.core.config; "
             "sys.exit(0 if dict(os.environ) == before and 'qi_expert.core.runtime' not in sys.modules else 1)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", probe], env=env, timeout=120).returncode == 0


def _assets(module: Path) -> set[Path]:
    """Non-Python files beside a module that it names (node scripts, the sandbox's JavaScript)."""
    text = module.read_text(encoding="utf-8")
    return {p for p in module.parent.iterdir() if p.suffix != ".py" and p.name != "__pycache__"
            and f'"{p.name}"' in text}


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_each_stage_lists_the_code_it_runs_among_its_deps(stage):
    entry = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    script = ROOT / entry["cmd"].split()[-1]
    deps = [ROOT / d for d in entry.get("deps", []) if "${" not in str(d)]
    covered = lambda p: any(p == d or d in p.parents for d in deps)  # noqa: E731
    needed = {script} | closure(script)
    needed |= {a for m in list(needed) for a in _assets(m)}
    needed = {p for p in needed if p.parent != PACKAGE or p.name != "__init__.py"}
    needed -= {PACKAGE / "core" / name for name in PLUMBING}
    missing = sorted(str(p.relative_to(ROOT)) for p in needed if not covered(p))
    assert not missing, f"dvc.yaml stage {stage} runs code it does not list among its deps: {missing}"
