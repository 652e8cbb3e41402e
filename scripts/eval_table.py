"""The README's eval results, written from metrics/eval.json (never by hand).

    python scripts/eval_table.py [metrics/eval.json]
    python scripts/eval_table.py --readme     # rewrite the README's table in place (`make report`)

Prints two Markdown tables: the headline figures per arm (with each arm's decoding cost), and the
paired comparisons that say what the fine-tune and checking before answering add (delta, 95%
interval, exact p; bold where significant). The README's "Results" section is this output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [  # (label, how to read it from an arm's summary)
    ("compiles", lambda s: _rate(s["compile_rate"], s["tasks"])),
    ("complies (required @qi calls run, no anti-pattern)", lambda s: _rate(s["compliance_rate"], s["tasks"])),
    ("passes its test (pass@1)", lambda s: _rate(s["pass@1"], s["tasks"])),
    ("compliance score", lambda s: f"{s['compliance_score']:.3f}"),
    ("reference loss (nats/token)", lambda s: f"{s['graded']['reference_loss']:.3f}" if s["graded"].get("reference_loss") is not None else "-"),
    ("type errors per completion", lambda s: f"{s['graded']['type_errors_mean']:.1f}"),
    ("real @qi names per completion", lambda s: f"{s['graded']['qi_names_real_per_completion']:.2f}"),
    ("invented @qi names per completion", lambda s: f"{s['graded']['qi_names_invented_per_completion']:.2f}"),
    ("answers ending in a loop", lambda s: _rate(s["generation"]["stop_reasons"].get("repetition", 0) / max(1, s["generation"]["rows"]),
                                                 s["generation"]["rows"])),
    ("new tokens per task (all candidates)", lambda s: f"{s['generation']['new_tokens'] / s['tasks']:.0f}"),
    ("candidates / repair turns per task", lambda s: (f"{s['generation']['verify']['candidates_per_task']:.2f} / "
                                                      f"{s['generation']['verify']['rounds_per_task']:.2f}")
                                           if "verify" in s["generation"] else "1 / 0"),
]
PAIRS = ["tuned vs base", "tuned+verify vs tuned", "base+verify vs base", "tuned+verify vs base+verify",
         "tuned+retrieval vs tuned"]
MEASURES = [("compile_rate", "compiles"), ("compliance_rate", "complies"), ("pass@1", "pass@1"),
            ("type_errors_mean", "type errors"), ("reference_loss", "reference loss"),
            ("qi_names_real_per_completion", "real @qi names")]


def _rate(value: float, n: int) -> str:
    return f"{round(value * n)} of {n}"


def tables(metrics: dict) -> str:
    arms = [a for a in metrics["models"]]
    out = ["| measure | " + " | ".join(f"`{a}`" for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for label, read in ROWS:
        cells = []
        for a in arms:
            try:
                cells.append(read(metrics[a]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "| paired, same tasks | " + " | ".join(label for _, label in MEASURES) + " |",
            "|---|" + "---|" * len(MEASURES)]
    for pair in PAIRS:
        if pair not in metrics.get("paired", {}):
            continue
        cells = []
        for key, _ in MEASURES:
            p = metrics["paired"][pair].get(key)
            if p is None:
                cells.append("-")
                continue
            pv = "p < 0.0001" if p["p_value"] < 1e-4 else f"p = {p['p_value']:.2g}"
            text = f"{p['delta']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], {pv}"
            cells.append(f"**{text}**" if p.get("significant") else text)
        out.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(out)


START, END = "<!-- eval-table: written by scripts/eval_table.py -->", "<!-- eval-table end -->"


def readme_block(readme: str) -> str:
    """The README's table as it stands (between the markers)."""
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def write_readme(readme_path: Path, metrics: dict) -> None:
    text = readme_path.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    readme_path.write_text(head + START + "\n" + tables(metrics) + "\n" + END + rest.split(END, 1)[1], encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        write_readme(ROOT / "README.md", json.loads((ROOT / "metrics/eval.json").read_text(encoding="utf-8")))
        sys.exit(0)
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "metrics/eval.json"
    print(tables(json.loads(path.read_text(encoding="utf-8"))))
