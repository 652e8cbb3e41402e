"""Exact and near duplicates of code, compared as token streams.

Tokens are tree-sitter's leaves with comments dropped, so whitespace, formatting and comments
never make two copies of the same function look different. Near duplicates are token-shingle
Jaccard similarity at or above a threshold.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Sequence

from qi_expert.typescript import tsast


def tokens(code: str) -> list[str]:
    root = tsast.parse(code).root_node
    out: list[str] = []
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == "comment":
            continue
        if n.child_count == 0 or n.type in ("string", "template_string"):
            t = tsast.text(n)
            if t:
                out.append(t)
            continue
        stack.extend(reversed(n.children))
    return out


def normal_form_hash(toks: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(toks).encode("utf-8")).hexdigest()


def shingles(toks: Sequence[str], k: int) -> frozenset[int]:
    # Stable hashes (not hash(), which is salted per process): results must not vary by run.
    if len(toks) < k:
        return frozenset({_stable_hash(toks)})
    return frozenset(_stable_hash(toks[i:i + k]) for i in range(len(toks) - k + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


class NearDuplicateIndex:
    """Shingle sets seen so far; `match` finds the first earlier entry at or above threshold.

    An inverted index from shingle to entries keeps this well below all-pairs cost: only entries
    that share a shingle are compared, and a size bound skips those that cannot reach the threshold.
    """

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.entries: list[tuple[str, frozenset[int]]] = []
        self.postings: dict[int, list[int]] = {}

    def match(self, sh: frozenset[int]) -> tuple[str, float] | None:
        counts: dict[int, int] = {}
        for s in sh:
            for i in self.postings.get(s, ()):
                counts[i] = counts.get(i, 0) + 1
        best = None
        for i, inter in counts.items():
            other = self.entries[i][1]
            sim = inter / (len(sh) + len(other) - inter)
            if sim >= self.threshold and (best is None or sim > best[1] or (sim == best[1] and i < best[2])):
                best = (self.entries[i][0], sim, i)
        return (best[0], best[1]) if best else None

    def add(self, key: str, sh: frozenset[int]) -> None:
        idx = len(self.entries)
        self.entries.append((key, sh))
        for s in sh:
            self.postings.setdefault(s, []).append(idx)


def copy_detector(originals: Sequence[str], threshold: float, shingle_size: int) -> Callable[[str], bool]:
    """f(code) -> is it one of `originals`, exactly (token stream) or as a near copy (shingle Jaccard)?

    Decontamination uses it: no training row or retrieved example may copy a benchmark task's code.
    """
    index = NearDuplicateIndex(threshold)
    exact = set()
    for i, code in enumerate(originals):
        toks = tokens(code)
        exact.add(normal_form_hash(toks))
        index.add(str(i), shingles(toks, shingle_size))

    def is_copy(code: str) -> bool:
        toks = tokens(code)
        return normal_form_hash(toks) in exact or index.match(shingles(toks, shingle_size)) is not None

    return is_copy


def _stable_hash(toks: Iterable[str]) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(toks).encode("utf-8"), digest_size=8).digest(), "big")
