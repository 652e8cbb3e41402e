"""The @qi benchmark: held-out tasks with reference solutions and executable tests."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import yaml

# `reference` may be missing or empty: such a task is scored, but its reference loss is skipped
# (and counted) by the eval.
REQUIRED_KEYS = ("id", "category", "pattern_types", "instruction", "signature", "entry",
                 "required_calls", "forbidden", "test")


def load_tasks(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist (format.benchmark / eval.benchmark)")
    tasks = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    seen = set()
    for i, t in enumerate(tasks):
        missing = [k for k in REQUIRED_KEYS if k not in t]
        if missing:
            raise ValueError(f"{path}: task #{i} ({t.get('id', '?')}) lacks {', '.join(missing)}")
        if t["id"] in seen:
            raise ValueError(f"{path}: task id {t['id']} appears twice")
        seen.add(t["id"])
    return tasks


def contamination_sources(tasks: list[dict]) -> list[str]:
    """The code a training row must not copy: every reference solution and every test."""
    return [t[k] for t in tasks for k in ("reference", "test") if t.get(k)]


DEV_FRACTION = 3  # one task in three, within each category


def split(tasks: list[dict]) -> tuple[list[dict], list[dict]]:
    """(dev, test): settings are chosen on dev (decoding, retrieval), figures reported on test.

    Fixed by the task ids alone (a hash, not the file's order), stratified by category: the first
    third of each category's tasks in hash order is dev. A task added later falls where its hash
    puts it, and no other task moves."""
    rank = lambda t: hashlib.sha256(f"qi-bench-split:{t['id']}".encode()).hexdigest()
    dev_ids: set[str] = set()
    for category in sorted({t["category"] for t in tasks}):
        members = sorted((t for t in tasks if t["category"] == category), key=rank)
        dev_ids |= {t["id"] for t in members[: -(-len(members) // DEV_FRACTION)]}
    return [t for t in tasks if t["id"] in dev_ids], [t for t in tasks if t["id"] not in dev_ids]


def token_budget(setting, tasks: list[dict], tokenizer, quantile: float = 0.95, param: str = "eval.max_new_tokens") -> int:
    """eval.max_new_tokens: a number as it is, or `auto`: the `quantile` of the reference solutions'
    lengths in this model's tokens, each written as the model answers (one fenced block), so that a
    model writing as much as the reference has room to finish (the 384 of before covered 61% of
    them in SmolLM2's tokens; the 95% quantile is 784)."""
    if str(setting) != "auto":
        try:
            return int(setting)
        except (TypeError, ValueError):
            raise ValueError(f"{param} is {setting!r}: a number of tokens, or auto") from None
    lengths = sorted(len(tokenizer(f"```typescript\n{t['reference'].strip()}\n```", add_special_tokens=False)["input_ids"])
                     for t in tasks if t.get("reference"))
    if not lengths:
        raise ValueError(f"{param}=auto needs reference solutions in the benchmark to measure")
    return lengths[min(len(lengths) - 1, math.ceil(quantile * len(lengths)) - 1)]
