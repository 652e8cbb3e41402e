"""How the corpus uses the @qi patterns, where the training data is thin, and how the usage moved
over the checkout's git history (`qi-expert patterns`).

- usage: records per pattern type (patterns.PATTERN_TYPES) and kind (implementation, test, app,
  tutorial), from the extract stage's records;
- gaps: pattern types with fewer than `minimum` accepted training records or benchmark tasks;
- history: the same usage at sampled commits of the checkout, each commit's files read with `git
  archive` (nothing checked out) and extracted as the extract stage does; a pattern type whose
  share of the records grew by more than `threshold` from the first sampled commit to the last is
  emerging, one whose share fell by as much declining. Each commit's counts are kept in the cache
  ($QI_CACHE_DIR/pattern_history), keyed by the commit and the extraction code, so a rerun after a
  new commit extracts only the new one;
- since the last run: the newest commit's counts against those of the commit the previous run over
  the checkout ended on (what is new since it was last processed).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from qi_expert.core import gencache
from qi_expert.data.revisions import tree_at
from qi_expert.typescript import patterns


def usage(records: Iterable[Mapping]) -> dict[str, dict[str, int]]:
    """{pattern type: {kind: records}} (a record counts once for each of its pattern types)."""
    out: dict[str, Counter] = {p: Counter() for p in patterns.PATTERN_TYPES}
    for r in records:
        for p in r.get("pattern_types") or ():
            out.setdefault(p, Counter())[r.get("source_kind", "")] += 1
    return {p: dict(sorted(c.items())) for p, c in out.items()}


def gaps(accepted: Iterable[Mapping], tasks: Sequence[Mapping], minimum: int = 10) -> list[dict]:
    """Pattern types with fewer than `minimum` accepted training records or benchmark tasks."""
    trained = Counter(p for r in accepted for p in r.get("pattern_types") or ())
    asked = Counter(p for t in tasks for p in t.get("pattern_types") or ())
    return [{"pattern": p, "training_records": trained[p], "benchmark_tasks": asked[p]}
            for p in patterns.PATTERN_TYPES if trained[p] < minimum or asked[p] < minimum]


# --- the checkout's history (revisions.py reads it) ------------------------------------------------

def history(corpus_root: Path, commits: Sequence[Mapping], count: Callable[[Path], dict[str, int]],
            code_key: str, log=print) -> list[dict]:
    """[{commit, date, records, counts: {pattern: records}}] at each commit; cached per commit and `code_key`."""
    out = []
    for c in commits:
        key = hashlib.sha256(f"{c['commit']}\0{code_key}".encode()).hexdigest()
        found = gencache.load(key, kind="pattern_history")
        if found is None:
            with tree_at(corpus_root, c["commit"]) as tree:
                found = count(tree)
            gencache.store(key, found, kind="pattern_history")
            log(f"patterns: {c['commit'][:8]} ({c['date']}): {found.get('records', 0)} records")
        out.append({**c, **found})
    return out


def trends(points: Sequence[Mapping], threshold: float = 0.05) -> dict[str, dict]:
    """Each pattern type's share of the records at the first and last sampled commit, and whether it
    is emerging (the share grew by more than `threshold`), declining or steady."""
    if not points:
        return {}
    first, last = points[0], points[-1]
    share = lambda point, p: point["counts"].get(p, 0) / max(1, point["records"])  # noqa: E731
    out = {}
    for p in patterns.PATTERN_TYPES:
        a, b = share(first, p), share(last, p)
        out[p] = {"first": round(a, 4), "last": round(b, 4),
                  "trend": "emerging" if b - a > threshold else "declining" if a - b > threshold else "steady"}
    return out


def since_last(corpus_root: Path, head: Mapping) -> dict:
    """What is new at `head` (the newest sampled commit) since the commit the previous run over this
    checkout processed: records per pattern type added or gone, pattern types that were not used at
    all before. Remembers `head` for the next run ($QI_CACHE_DIR/pattern_history)."""
    key = hashlib.sha256(f"last-processed\0{Path(corpus_root).resolve()}".encode()).hexdigest()
    last = gencache.load(key, kind="pattern_history")
    gencache.store(key, {k: head[k] for k in ("commit", "date", "records", "counts")}, kind="pattern_history")
    if last is None:
        return {"last": None, "head": head["commit"]}
    before, now = last.get("counts", {}), head.get("counts", {})
    changed = {p: now.get(p, 0) - before.get(p, 0) for p in sorted(set(before) | set(now)) if now.get(p, 0) != before.get(p, 0)}
    return {"last": last["commit"], "last_date": last.get("date"), "head": head["commit"],
            "records": head.get("records", 0) - last.get("records", 0), "by_pattern": changed,
            "new_patterns": sorted(p for p in now if now[p] and not before.get(p))}


def counts_of(records: Sequence[Mapping]) -> dict:
    """What history() keeps per commit: the records and the records per pattern type."""
    return {"records": len(records),
            "counts": dict(Counter(p for r in records for p in r.get("pattern_types") or ()))}


def code_key() -> str:
    """The extraction code's bytes: a commit's counts are redone when the extraction changes."""
    here = Path(__file__).parent
    names = ("corpus.py", "extract.py", "units.py", "testcases.py", "doc_blocks.py", "evolution.py")
    return hashlib.sha256(json.dumps({n: hashlib.sha256((here / n).read_bytes()).hexdigest() for n in names}
                                     | {"patterns": hashlib.sha256(Path(patterns.__file__).read_bytes()).hexdigest()},
                                     sort_keys=True).encode()).hexdigest()
