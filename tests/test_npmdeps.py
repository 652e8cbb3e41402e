"""npmdeps: the corpus's npm packages installed outside the checkout, and the type check resolving them."""

import json
import stat

import pytest

from qi_expert.core.config import ROOT
from qi_expert.typescript import npmdeps, typecheck

SAMPLE = ROOT / "data/sample/typescript"


def _checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "lib/base").mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({
        "name": "workspace", "workspaces": ["lib/base"],
        "dependencies": {"schema-lite": "^1.0.0", "@qi/base": "workspace:*"},
        "devDependencies": {"local-thing": "file:../thing"}}))
    (root / "lib/base/package.json").write_text(json.dumps({
        "name": "@qi/base", "dependencies": {"schema-lite": "^2.0.0", "logger-lite": "~3.1.0"}}))
    (root / "tsconfig.json").write_text((SAMPLE / "tsconfig.json").read_text())
    return root


def _fake_npm(tmp_path, log):
    """An `npm` that records its arguments and installs schema-lite's type declarations."""
    npm = tmp_path / "npm"
    npm.write_text("#!/bin/sh\n"
                   f"echo \"$@\" >> {log}\n"
                   "mkdir -p node_modules/schema-lite\n"
                   "echo 'export declare function parse(s: string): number;' > node_modules/schema-lite/index.d.ts\n"
                   "echo 'exports.parse = (s) => Number(s);' > node_modules/schema-lite/index.js\n"
                   "echo '{\"name\": \"schema-lite\", \"main\": \"index.js\", \"types\": \"index.d.ts\"}' > node_modules/schema-lite/package.json\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return str(npm)


def test_declared_packages_leave_out_the_checkouts_own_and_local_ones(tmp_path):
    assert npmdeps.declared(_checkout(tmp_path)) == {"logger-lite": "~3.1.0", "schema-lite": "^1.0.0"}


def test_install_runs_npm_without_scripts_once_and_the_check_resolves_the_package(tmp_path):
    root = _checkout(tmp_path)
    log = tmp_path / "npm.log"
    cache = tmp_path / "cache"
    modules = npmdeps.install(root, npm=_fake_npm(tmp_path, log), cache=cache, log=lambda *_: None)
    assert modules.parent.parent == cache and (modules / "schema-lite/index.d.ts").is_file()
    assert "--ignore-scripts" in log.read_text().split()
    assert not list(root.rglob("node_modules"))  # nothing written into the checkout
    # Installed once: the same declarations reuse the folder without npm (offline).
    assert npmdeps.install(root, npm="/nonexistent/npm", cache=cache) == modules
    assert log.read_text().count("install") == 1

    snippet = {"use": "import { parse } from 'schema-lite';\nexport const n: number = parse('1');\n"}
    without = typecheck.check(snippet, root)["use"]
    assert [d["code"] for d in without] == [2307]  # cannot find module
    assert typecheck.check(snippet, root, dependencies=modules)["use"] == []


def test_a_failing_install_names_the_setting_and_leaves_no_folder(tmp_path):
    root = _checkout(tmp_path)
    npm = tmp_path / "npm"
    npm.write_text("#!/bin/sh\necho 'E404 not found: schema-lite' >&2\nexit 1\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(npmdeps.DependencyError, match="corpus.install_dependencies.*E404"):
        npmdeps.install(root, npm=str(npm), cache=tmp_path / "cache", log=lambda *_: None)
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_sandbox_runs_code_against_the_installed_packages(tmp_path):
    from qi_expert.typescript import sandbox

    modules = npmdeps.install(_checkout(tmp_path), npm=_fake_npm(tmp_path, tmp_path / "npm.log"),
                              cache=tmp_path / "cache", log=lambda *_: None)
    job = ("uses", "import { parse } from 'schema-lite';\nexport const n = parse('41') + 1;\n",
           "import { strict as assert } from 'node:assert';\nimport { n } from './solution';\nassert.equal(n, 42);\n")
    with sandbox.Sandbox(SAMPLE, dependencies=modules) as sb:
        assert sb.run_tests([job])[0].status == "pass"
    with sandbox.Sandbox(SAMPLE) as sb:  # without them: cannot find the package
        assert sb.run_tests([job])[0].status == "fail"
