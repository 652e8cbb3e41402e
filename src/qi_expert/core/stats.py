"""Paired statistics for eval deltas: the same tasks scored under two arms (base vs tuned, ...).

Two arms answer the same 54 tasks, so every comparison is PAIRED: the unit is a task, and what
varies is the per-task difference. For each metric:
- a bootstrap 95% interval of the mean difference (tasks resampled with replacement, percentile
  interval, seeded so the same results give the same interval);
- an exact test: McNemar's for binary outcomes (a two-sided binomial test on the discordant
  pairs: tasks that one arm gets right and the other wrong), the sign test for graded ones (a
  two-sided binomial test on the tasks whose value went up vs down; ties dropped).
`significant` means both agree: the interval excludes zero AND the exact test's p < 0.05. (With
few tasks a percentile bootstrap interval can exclude zero on 3 same-signed differences, where the
exact test says p = 0.25; requiring both keeps "significant" honest at any size.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import binomtest

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


def exact_binomial_p(successes: int, trials: int) -> float:
    """Two-sided exact binomial test of `successes` in `trials` against p = 1/2 (1.0 when trials == 0)."""
    return 1.0 if trials == 0 else float(binomtest(successes, trials, 0.5).pvalue)


def bootstrap_interval(diffs: Sequence[float], *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (one value per task)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return (float(lo), float(hi))


def paired(a: Sequence[float], b: Sequence[float], *, binary: bool, seed: int = 0) -> dict:
    """Arm a minus arm b on the same tasks (a[i] and b[i] belong to task i)."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs one value per task in both arms, got {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diffs = x - y
    up, down = int((diffs > 0).sum()), int((diffs < 0).sum())
    lo, hi = bootstrap_interval(diffs, seed=seed)
    out = {
        "n": int(diffs.size),
        "a": round(float(x.mean()), 4) if diffs.size else 0.0,
        "b": round(float(y.mean()), 4) if diffs.size else 0.0,
        "delta": round(float(diffs.mean()), 4) if diffs.size else 0.0,
        "ci95": [round(lo, 4), round(hi, 4)],
        "test": "mcnemar_exact" if binary else "sign",
        # McNemar: a right & b wrong (up) vs a wrong & b right (down); sign test: went up vs down.
        "up": up,
        "down": down,
        "p_value": round(exact_binomial_p(up, up + down), 6),
    }
    out["significant"] = bool((lo > 0 or hi < 0) and out["p_value"] < ALPHA)
    return out
