"""The TypeScript compiler, batched: one `node tscheck.cjs` program for many snippets."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from qi_expert.core import lifetime, node
from qi_expert.core.config import ROOT

CHECKER = Path(__file__).with_name("tscheck.cjs")


class TypeCheckError(RuntimeError):
    pass


def node_modules() -> Path:
    found = node.modules()
    if found is None:
        raise TypeCheckError(f"TypeScript is not installed: run `npm ci` in {ROOT} (make setup does)")
    return found


def _node() -> str:
    found = node.binary()
    if found is None:
        raise TypeCheckError("node is not on PATH: the TypeScript check needs Node.js 18 or newer")
    return found


QI_MODULES = ("@qi/base", "@qi/core")


def check(sources: Mapping[str, str], project: Path, tsconfig: str = "tsconfig.json",
          options: Mapping | None = None, timeout: float = 900,
          exports: Sequence[str] = (), isolated: bool = False,
          dependencies: Path | None = None, facts: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Diagnostics per snippet name ([] = compiles), all snippets in one compiler program.

    Snippets are placed inside `project` (virtually; nothing is written there), so its
    tsconfig's `paths` map @qi/base and @qi/core to the project's own sources. With `exports`
    (module names), the result also holds "__exports__": {module: [{name, file}] or None}, the
    modules' export lists as the same compiler program resolves them. `isolated` (untrusted
    sources: model completions) runs the compiler inside the eval's bubblewrap sandbox, reading only
    the project, TypeScript and this checker. `dependencies` (a node_modules folder outside the
    checkout: npmdeps.install) resolves the npm packages the corpus imports. With `facts` (the @qi
    wrappers a try/catch may sit in), the result also holds "__facts__": {name: {qi_calls, forbidden}},
    what each snippet calls and does by the checker's symbols (tscheck.cjs, `facts`).
    """
    if not sources and not exports:
        return {}
    payload = json.dumps({"project": str(project), "tsconfig": tsconfig, "options": dict(options or {}),
                          "files": dict(sources), "exports": list(exports),
                          "facts": None if facts is None else {"try_catch_allowed": list(facts)},
                          "node_modules": str(Path(dependencies).resolve()) if dependencies else None})
    # A scrubbed environment: the compiler needs none of the caller's variables (tokens, keys).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "NODE_PATH": str(node_modules().resolve())}
    cmd = [_node(), str(CHECKER)]
    if isolated:
        from qi_expert.typescript import sandbox

        modules = node_modules()
        shown = [modules.resolve()] + ([(modules.resolve(), modules)] if modules.is_symlink() else [])
        shown += [Path(dependencies).resolve()] if dependencies else []
        cmd = sandbox.bwrap_command(read_only=[Path(project).resolve(), *shown, CHECKER.parent],
                                    env=env, chdir=CHECKER.parent) + cmd
    proc = subprocess.run(lifetime.tied(cmd), input=payload, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise TypeCheckError(f"TypeScript check failed for project {project}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def check_one_process_each(sources: Mapping[str, str], project: Path, tsconfig: str = "tsconfig.json",
                           options: Mapping | None = None) -> dict[str, list[dict]]:
    """The slow way, one compiler process per snippet: kept for the batching benchmark."""
    out = {}
    for name, code in sources.items():
        out.update(check({name: code}, project, tsconfig, options))
    return out


def module_exports(project: Path, tsconfig: str = "tsconfig.json", modules: Sequence[str] = QI_MODULES,
                   missing_ok: bool = False) -> dict[str, list[dict]]:
    """{module: [{name, file}]} for the corpus's @qi packages; a module the compiler cannot resolve is
    an error (left out with `missing_ok`: a corpus of @qi/base alone)."""
    found = check({}, project, tsconfig, exports=modules)["__exports__"]
    missing = [m for m, names in found.items() if names is None]
    if missing_ok:
        return {m: names for m, names in found.items() if names is not None}
    if missing:
        raise TypeCheckError(f"{project}/{tsconfig} does not resolve {', '.join(missing)}: the @qi packages "
                             "must be reachable from the corpus (its tsconfig `paths` or node_modules)")
    return found
