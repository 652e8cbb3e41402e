"""The learning curve: the eval's graded metrics against training steps, from DVC experiments.

    for steps in 10 20 80 160; do dvc exp run eval -S max_steps=$steps; done   # plus the workspace's 40
    python scripts/learning_curve.py          # -> metrics/learning_curve/<arm>.csv (dvc plots show)

Reads every experiment `dvc exp show --json -A` lists (all commits, their experiments, the workspace), one row per max_steps
(the newest experiment wins when two share one): one CSV per eval arm (one line per arm in the
DVC plots of dvc.yaml), columns the graded and binary metrics plus the train stage's final
validation loss. Experiments that differ from the workspace in
anything but max_steps/eval_steps are left out, so the curve varies one thing.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "metrics/learning_curve"
VARIED = {"max_steps", "eval_steps"}
GRADED = ("reference_loss", "syntax_valid_rate", "type_errors_mean", "qi_names_real_per_completion",
          "qi_names_invented_per_completion", "only_missing_qi_imports_rate", "qi_api_valid_share")
BINARY = ("compile_rate", "compliance_rate", "compliance_score", "pass@1")


def experiments(show: list) -> list[dict]:
    """Every {name, timestamp, params, metrics} in `dvc exp show --json` output (DVC 3 layout)."""
    found = []

    def visit(node, name=None):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data:
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                metrics = {path: (m or {}).get("data", {}) for path, m in (data.get("metrics") or {}).items()}
                found.append({"name": node.get("name") or name or node.get("rev"), "rev": node.get("rev"),
                              "timestamp": data.get("timestamp") or "", "params": params, "metrics": metrics})
            for v in node.values():
                visit(v, node.get("name", name))
        elif isinstance(node, list):
            for v in node:
                visit(v, name)

    visit(show)
    return found


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def curve(exps: list[dict], reference: dict) -> list[dict]:
    ref = {k: v for k, v in _flat(reference).items() if k.split(".")[0] not in VARIED}
    rows: dict[int, dict] = {}
    for e in sorted(exps, key=lambda e: e["timestamp"]):
        flat = _flat(e["params"])
        if not flat or any(flat.get(k) != v for k, v in ref.items() if not k.startswith("mlflow")):
            continue
        ev, tr = e["metrics"].get("metrics/eval.json", {}), e["metrics"].get("metrics/train.json", {})
        if not ev or tr.get("steps") != e["params"].get("max_steps"):
            continue
        steps = e["params"]["max_steps"]
        # DVC keeps only numbers of a metrics file: the arms are the blocks that hold graded metrics.
        arms = [k for k, v in ev.items() if isinstance(v, dict) and "graded" in v]
        rows[steps] = {arm: {"max_steps": steps, **{k: ev[arm]["graded"].get(k) for k in GRADED},
                             **{k: ev[arm].get(k) for k in BINARY}, "val_loss": tr.get("val_loss_final"),
                             "experiment": e["name"]}
                       for arm in arms}
    return [rows[k] for k in sorted(rows) if rows[k]]


def main() -> int:
    show = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "-A"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout)
    import yaml

    reference = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    rows = curve(experiments(show), reference)
    if not rows:
        print("learning_curve: no experiment with eval metrics matches params.yaml but for max_steps", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    arms = list(dict.fromkeys(a for point in rows for a in point))
    for arm in arms:
        with (OUT / f"{arm}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["max_steps", *GRADED, *BINARY, "val_loss", "experiment"], lineterminator="\n")
            w.writeheader()
            w.writerows(point[arm] for point in rows if arm in point)
    steps = ", ".join(str(next(iter(p.values()))["max_steps"]) for p in rows)
    print(f"learning_curve: {len(rows)} points (max_steps {steps}), arms {', '.join(arms)} -> {OUT}/<arm>.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
