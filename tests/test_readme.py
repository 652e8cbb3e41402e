"""The README's figures are written from the metrics, not by hand."""

from __future__ import annotations

import importlib.util
import json

from qi_expert.config import ROOT


def test_the_readme_eval_table_is_the_metrics():
    spec = importlib.util.spec_from_file_location("eval_table", ROOT / "scripts" / "eval_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    metrics = json.loads((ROOT / "metrics" / "eval.json").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table.readme_block(readme) == table.tables(metrics).strip(), "run `make report` after `dvc repro`"


def test_every_javascript_file_of_the_package_parses():
    """The JavaScript the Python runs lives in .cjs/.mjs files: node checks their syntax."""
    import subprocess

    scripts = sorted((ROOT / "src" / "qi_expert").rglob("*.[cm]js"))
    assert len(scripts) >= 9
    for script in scripts:
        proc = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (script.name, proc.stderr)
