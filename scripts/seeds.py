"""The seed-to-seed spread of the headline figures, beside each figure's task-level interval.

    dvc exp run --queue -S seed=1,2,3 && dvc queue start   # one experiment per seed (or dvc exp run -S seed=N)
    python scripts/seeds.py                                 # `make exps` prints it after the table
    python scripts/seeds.py --json                          # the same as JSON
    python scripts/seeds.py --write metrics/seeds.json      # saved for the README (scripts/report.py)

Reads `dvc exp show --json -A` (the workspace, every commit and its experiments), keeps the runs
whose eval metrics exist, and groups the runs whose params are equal except `seed` (and the eval's
arm list: a seed run may score fewer arms). For each figure an arm has in every run of a group
(compile, compliance, pass@1 as rates; reference loss and the syntax-valid share), on each
benchmark, it prints the mean, the standard deviation and the range across seeds, next to the
task-level 95% interval of one run (Wilson, at the benchmark's task count, for a share of the
tasks; none for the reference loss): when the seeds' spread is of the interval's size, a
difference between two single runs says little.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Params that do not make two runs a different setting: the seed itself, which arms were scored,
# and the settings of the +retrieval and +verify arms alone (a seed run may score only base and tuned;
# two runs that both score those arms with other settings are not told apart: keep them equal).
IGNORED = ("seed", "eval.arms", "eval.retrieval", "eval.verify")
RATES = ("compile_rate", "compliance_rate", "pass@1")
GRADED = ("reference_loss", "syntax_valid_rate")
# Shares of the tasks (one completion a task), whose one-run interval is a binomial one.
SHARES = RATES + ("syntax_valid_rate",)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def runs(exp_show: list) -> list[dict]:
    """[{name, params (flat), eval (metrics/eval.json)}] from `dvc exp show --json` output."""
    found = []

    def add(entry: dict, name: str) -> None:
        data = entry.get("data") or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
        metrics = ((data.get("metrics") or {}).get("metrics/eval.json") or {}).get("data")
        if params and metrics:
            found.append({"name": name, "rev": data.get("rev") or entry.get("rev"), "params": _flat(params), "eval": metrics})

    for baseline in exp_show:
        rev = str(baseline.get("rev", ""))
        add(baseline, baseline.get("name") or (rev if rev == "workspace" else rev[:7]))
        for exp in baseline.get("experiments") or []:
            if ((exp.get("executor") or {}).get("state") or "success") not in ("success",):
                continue  # queued or still running: its figures are its baseline's until it ends
            for rev in exp.get("revs") or []:
                add(rev, rev.get("name") or exp.get("name") or str(rev.get("rev", ""))[:7])
    # The same run can appear twice (the workspace and the commit it equals): keep one per seed and setting.
    unique = {}
    for r in found:
        unique.setdefault((_setting(r), r["params"].get("seed")), r)
    return list(unique.values())


def _setting(run: dict) -> str:
    return json.dumps({k: v for k, v in run["params"].items() if k not in IGNORED and not k.startswith(tuple(f"{i}." for i in IGNORED))},
                      sort_keys=True, default=str)


def wilson(p: float, n: int) -> list[float]:
    """The 95% Wilson interval [low, high] of a share p seen on n tasks (not centred on p)."""
    if n <= 0:
        return [float("nan"), float("nan")]
    z = 1.96
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def spread(group: list[dict]) -> list[dict]:
    """One row per benchmark, arm and figure found in every run of the group."""
    rows = []
    for bench, pick in (("hand-written", lambda m: m), ("corpus", lambda m: m.get("corpus_benchmark") or {})):
        sections = [pick(r["eval"]) for r in group]
        # The arms every run scored (`dvc exp show` keeps numbers only: no `models` list).
        is_arm = lambda v: isinstance(v, dict) and "compile_rate" in v and "completions" in v  # (not `delta`)
        arms = [a for a, v in sections[0].items() if is_arm(v) and all(is_arm(s.get(a)) for s in sections)]
        for arm in arms:
            for figure in RATES + GRADED:
                values = [(s[arm] if figure in RATES else s[arm].get("graded", {})).get(figure) for s in sections]
                if any(v is None for v in values):
                    continue
                n = min(int(s.get("benchmark_tasks", 0)) for s in sections)
                mean = statistics.fmean(values)
                rows.append({"benchmark": bench, "arm": arm, "figure": figure, "seeds": len(values),
                             "tasks": n, "mean": mean, "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                             "min": min(values), "max": max(values),
                             "task_ci95": wilson(mean, n) if figure in SHARES else None})
    return rows


def groups(all_runs: list[dict]) -> list[list[dict]]:
    by_setting: dict[str, list[dict]] = {}
    for r in all_runs:
        by_setting.setdefault(_setting(r), []).append(r)
    return [sorted(g, key=lambda r: int(r["params"].get("seed", 0))) for g in by_setting.values() if len(g) > 1]


def table(group: list[dict], rows: list[dict]) -> str:
    seeds = ", ".join(str(r["params"].get("seed")) for r in group)
    out = [f"seeds {seeds} ({', '.join(r['name'] for r in group)}):",
           f"  {'benchmark':13s} {'arm':22s} {'figure':18s} {'mean':>7s} {'sd':>7s} {'range':>15s} {'one run, 95% (tasks)':>20s}"]
    for r in rows:
        ci = f"[{r['task_ci95'][0]:.3f}, {r['task_ci95'][1]:.3f}]" if r["task_ci95"] is not None else "-"
        out.append(f"  {r['benchmark']:13s} {r['arm']:22s} {r['figure']:18s} {r['mean']:7.3f} {r['sd']:7.3f} "
                   f"{r['min']:7.3f}-{r['max']:<7.3f} {ci:>20s}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--write", help="also save the rows as JSON to this file (metrics/seeds.json: the README's table)")
    ap.add_argument("--from", dest="source", help="a saved `dvc exp show --json -A` output instead of running it")
    args = ap.parse_args(argv)
    if args.source:
        exp_show = json.loads(Path(args.source).read_text())
    else:
        dvc = Path(sys.executable).parent / "dvc"
        proc = subprocess.run([str(dvc), "exp", "show", "--json", "-A", "--no-pager"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"seeds: dvc exp show failed: {proc.stderr.strip()}", file=sys.stderr)
            return 1
        exp_show = json.loads(proc.stdout)
    found = groups(runs(exp_show))
    if not found:
        print("seeds: no two runs differ only by seed yet (dvc exp run --queue -S seed=1,2,3; dvc queue start)")
        return 0
    result = [{"seeds": [r["params"].get("seed") for r in g], "runs": [r["name"] for r in g], "rows": spread(g)} for g in found]
    print(json.dumps(result, indent=1) if args.json else "\n\n".join(table(g, spread(g)) for g in found))
    if args.write:
        Path(args.write).write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
