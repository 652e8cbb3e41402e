"""The corpus's npm dependencies, installed for type checking outside the checkout.

A checkout without node_modules leaves every `import { z } from "zod"` unresolved, so the compiler
reports "cannot find module" and everything typed through it as `any`, hiding real errors. With
`corpus.install_dependencies=true` the validate stage installs what the checkout's package.json
files declare (dependencies and devDependencies, its own workspace packages left out) with npm,
scripts disabled (`--ignore-scripts`: no package's install hook runs on this machine), into a
content-keyed folder of the cache ($QI_CACHE_DIR/npm/<key>, default ~/.cache/qi-expert/npm). The
checkout is never written to. A folder already installed for the same declarations is used as it
is, without npm, so a rerun works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

from qi_expert.core import lifetime

# Specifiers npm cannot fetch from the registry: the checkout's own packages and local paths.
LOCAL_SPECS = ("workspace:", "file:", "link:", "portal:")
INSTALL_TIMEOUT_SECONDS = 900


class DependencyError(RuntimeError):
    """The corpus's dependencies cannot be installed: the stage stops naming the setting."""


def cache_root() -> Path:
    return Path(os.environ.get("QI_CACHE_DIR") or Path.home() / ".cache/qi-expert") / "npm"


def _package_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("package.json"), key=lambda p: (len(p.parts), p)):  # the root's first
        if "node_modules" not in path.relative_to(root).parts:
            yield path


def declared(root: Path) -> dict[str, str]:
    """{package: version range} the checkout's package.json files declare, its own packages left
    out; the first declaration of a package wins (the root's, then the workspaces' in path order)."""
    manifests = []
    for path in _package_files(root):
        try:
            manifests.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DependencyError(f"{path} is not valid JSON ({e}): corpus.install_dependencies reads it") from None
    own = {m.get("name") for _, m in manifests}
    deps: dict[str, str] = {}
    for _, m in manifests:
        for section in ("dependencies", "devDependencies"):
            for name, spec in (m.get(section) or {}).items():
                if name not in own and isinstance(spec, str) and not spec.startswith(LOCAL_SPECS):
                    deps.setdefault(name, spec)
    return dict(sorted(deps.items()))


def install(root: Path, *, npm: str = "npm", cache: Path | None = None, log=print) -> Path | None:
    """The node_modules folder holding the corpus's declared packages (None when it declares none)."""
    deps = declared(root)
    if not deps:
        return None
    key = hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16]
    folder = (cache or cache_root()) / key
    if (folder / "installed.json").is_file():
        return folder / "node_modules"
    if shutil.which(npm) is None:
        raise DependencyError(f"corpus.install_dependencies needs npm on PATH ({len(deps)} packages to install)")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "package.json").write_text(json.dumps({"name": "qi-expert-corpus-deps", "private": True,
                                                      "dependencies": deps}, indent=2) + "\n")
    log(f"npm: installing {len(deps)} packages the corpus declares into {folder} (scripts disabled)")
    cmd = [npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--legacy-peer-deps", "--loglevel=error"]
    try:
        proc = subprocess.run(lifetime.tied(cmd), cwd=staging, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise DependencyError(f"npm install of the corpus's {len(deps)} packages took over "
                              f"{INSTALL_TIMEOUT_SECONDS} s; set corpus.install_dependencies=false") from None
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise DependencyError(f"npm install of the corpus's packages failed (corpus.install_dependencies): "
                              f"{proc.stderr.strip()[-1500:]}")
    (staging / "installed.json").write_text(json.dumps(deps, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # whole or absent: an interrupted install is redone, never half used
    return folder / "node_modules"
