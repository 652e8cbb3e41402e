"""The README and docs/: their figures are written from the metrics, not by hand, and their links resolve."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "scripts" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def test_every_figure_block_is_the_metrics():
    """Every block scripts/report.py writes is where it belongs and reads as the metrics say now."""
    assert _report().stale(ROOT) == [], "run `make report` after `dvc repro`"


def test_the_readme_eval_table_is_the_metrics():
    report = _report()
    blocks = report.blocks_in(README.read_text(encoding="utf-8"))
    assert blocks["eval-table"] == report.render(ROOT)["eval-table"].strip()


def test_a_block_that_differs_from_the_metrics_is_found(tmp_path):
    """The check itself: a hand-edited figure, a lost marker and an unknown block are each named."""
    report = _report()
    (tmp_path / "docs").mkdir()
    (tmp_path / "metrics").symlink_to(ROOT / "metrics")
    for rel in {home for home, _ in report.BLOCKS.values()}:
        (tmp_path / rel).write_text((ROOT / rel).read_text(encoding="utf-8"), encoding="utf-8")
    assert report.stale(tmp_path) == []
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    table = report.blocks_in(readme)["eval-table"]
    edited = table.replace(" of 54 |", " of 55 |", 1)
    assert edited != table
    (tmp_path / "README.md").write_text(readme.replace(table, edited), encoding="utf-8")
    (tmp_path / "docs" / "extra.md").write_text("<!-- made-up: written by scripts/report.py -->\nx\n<!-- made-up end -->\n",
                                                 encoding="utf-8")
    stages = (tmp_path / "docs" / "stages.md").read_text(encoding="utf-8")
    (tmp_path / "docs" / "stages.md").write_text(stages.replace(report.end("gguf-figures"), ""), encoding="utf-8")
    problems = "\n".join(report.stale(tmp_path))
    assert "README.md: block eval-table differs" in problems
    assert "docs/extra.md: block made-up is not one" in problems
    assert "docs/stages.md: block gguf-figures is missing" in problems


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http(s), mailto: not checked offline; anchors within the page
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    readme = README.read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README has no link to docs/{page.name}"
        first = page.read_text(encoding="utf-8").splitlines()[:4]
        assert first[0].startswith("# ") and any("](../README.md)" in line for line in first), page.name


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    quick = text.split("## Quick start", 1)[1]
    block = quick.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in block] == [["make", "repro"], ["make", "test"]]


def test_every_javascript_file_of_the_package_parses():
    """The JavaScript the Python runs lives in .cjs/.mjs files: node checks their syntax."""
    scripts = sorted((ROOT / "src" / "qi_expert").rglob("*.[cm]js"))
    assert len(scripts) >= 9
    for script in scripts:
        proc = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (script.name, proc.stderr)
