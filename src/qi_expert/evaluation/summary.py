"""The eval's figures from its scored rows: rates per arm, pass@k, by category, and paired comparisons.

pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k) per task, averaged over tasks. Two
arms are compared on the same tasks (paired): a bootstrap interval of the difference and an exact
test (core/stats.py).
"""

from __future__ import annotations

import csv
import io as _io
from collections import defaultdict
from typing import Mapping, Sequence

from qi_expert.core import stats
from qi_expert.evaluation import graded
from qi_expert.typescript import patterns

METRIC_KEYS = ("compile_rate", "compliance_rate", "compliance_score", "forbidden_rate", "test_pass_rate")


# --- pass@k ----------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task: n samples, c of them correct (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


# --- summaries -------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def summarize(rows: Sequence[Mapping], ks: Sequence[int] = (1,)) -> dict:
    """Metrics of one model's rows: rates over completions, pass@k over tasks, per category."""
    by_task: dict[str, list[Mapping]] = defaultdict(list)
    for r in rows:
        by_task[r["task_id"]].append(r)

    def block(task_ids: Sequence[str]) -> dict:
        rs = [r for t in task_ids for r in by_task[t]]
        out = {
            "tasks": len(task_ids),
            "completions": len(rs),
            "compile_rate": _mean([float(r["compiled"]) for r in rs]),
            "compliance_rate": _mean([float(r["compliance"]["pass"]) for r in rs]),
            "compliance_score": _mean([r["compliance"]["score"] for r in rs]),
            "forbidden_rate": _mean([float(bool(r["forbidden_found"])) for r in rs]),
            "test_pass_rate": _mean([float(r["passed"]) for r in rs]),
        }
        n_min = min((len(by_task[t]) for t in task_ids), default=0)
        for k in ks:
            if 0 < k <= n_min:
                out[f"pass@{k}"] = _mean([pass_at_k(len(by_task[t]), sum(r["passed"] for r in by_task[t]), k)
                                          for t in task_ids])
        return out

    tasks = list(by_task)
    summary = block(tasks)
    cats: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        cats[by_task[t][0]["category"]].append(t)
    summary["by_category"] = {c: block(cats[c]) for c in patterns.CATEGORIES if c in cats}
    statuses: dict[str, int] = defaultdict(int)
    for r in rows:
        statuses[r["test"]["status"]] += 1
    summary["test_status"] = dict(sorted(statuses.items()))
    if all("graded" in r for r in rows):
        summary["graded"] = graded.summarize(rows)
        summary["graded"]["by_category"] = {c: {k: v for k, v in graded.summarize([r for t in cats[c] for r in by_task[t]]).items()
                                                if k not in ("invented_names", "not_imported_names")}
                                            for c in patterns.CATEGORIES if c in cats}
    return summary


def paired_comparison(a_rows: Sequence[Mapping], b_rows: Sequence[Mapping], seed: int = 0) -> dict:
    """Arm a vs arm b on the tasks both answered: stats.paired for every measure of graded.PAIRED_MEASURES.

    A task's value is the mean over its samples; tasks where a measure is undefined in either arm
    (reference loss of a task without a reference) are left out of that measure.
    """
    def per_task(rows, value):
        by_task: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            v = value(r)
            if v is not None:
                by_task[r["task_id"]].append(float(v))
        return {t: sum(v) / len(v) for t, v in by_task.items()}

    out = {}
    for name, value, binary in graded.PAIRED_MEASURES:
        if name != "pass@1" and not all("graded" in r for r in [*a_rows, *b_rows]):
            continue
        a, b = per_task(a_rows, value), per_task(b_rows, value)
        tasks = [t for t in a if t in b]
        if not tasks:
            continue
        xs, ys = [a[t] for t in tasks], [b[t] for t in tasks]
        is_binary = binary and all(v in (0.0, 1.0) for v in xs + ys)
        out[name] = stats.paired(xs, ys, binary=is_binary, seed=seed)
    return out


def comparisons(arm_names: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs an eval reports (a - b): what tuning adds, what retrieval adds, and both together."""
    wanted = [("tuned", "base"), ("base+retrieval", "base"), ("tuned+retrieval", "tuned"),
              ("tuned+retrieval", "base"), ("tuned", "base+retrieval"),
              # what checking before answering adds, on each model, and the fine-tune's share under it
              ("tuned+verify", "tuned"), ("base+verify", "base"), ("tuned+verify", "base+verify"),
              ("tuned+retrieval+verify", "tuned+retrieval")]
    return [(a, b) for a, b in wanted if a in arm_names and b in arm_names]


def deltas(tuned: Mapping, base: Mapping) -> dict:
    """tuned - base for every shared rate and pass@k, overall and per category."""
    def diff(a: Mapping, b: Mapping) -> dict:
        return {k: round(a[k] - b[k], 4) for k in a
                if k in b and (k in METRIC_KEYS or k.startswith("pass@")) and isinstance(a[k], (int, float))}

    out = diff(tuned, base)
    out["by_category"] = {c: diff(tuned["by_category"][c], base["by_category"][c])
                          for c in tuned.get("by_category", {}) if c in base.get("by_category", {})}
    return out


# pass@1, compile and compliance are rates; compliance_score (the share of a task's @qi rules met)
# tells arms apart while the rates are all near 0 (a 135M model: dvc.yaml plots each).
PLOT_COLUMNS = ("category", "model", "pass@1", "compile", "compliance", "compliance_score", "label")


def category_table(summaries: Mapping[str, Mapping]) -> str:
    """CSV for the DVC bar plot: one row per (category, model), plus `overall`.

    `label` ("basic · tuned") is what the bar chart's axis shows, so that the base and tuned bars
    of a category stand side by side rather than on top of each other.
    """
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PLOT_COLUMNS)
    cats = [c for c in patterns.CATEGORIES if any(c in s["by_category"] for s in summaries.values())]
    for cat in [*cats, "overall"]:
        for model, s in summaries.items():
            m = s if cat == "overall" else s["by_category"].get(cat)
            if m is None:
                continue
            w.writerow([cat, model, m.get("pass@1", 0.0), m["compile_rate"], m["compliance_rate"], m["compliance_score"],
                        f"{cat} · {model}"])
    return buf.getvalue()
