"""@qi names that exist: a decoding constraint on the names a completion imports from the @qi packages.

While the model writes

- the names of an `import { ... }` (or `import type { ... }`) list: only tokens that continue a name
  some @qi package exports (or the keywords `type` and `as`; an alias after `as` is free);
- the module of that import (`} from "`): only a @qi module that exports every name of the list
  (any @qi module when none exports them all);
- a member of a @qi namespace (`import * as qi from "@qi/base"`, then `qi.`): only that module's names,

every other token is banned for that step (a logits processor, through the stop policy's bans:
decoding.StopPolicy.banned, which both backends apply). Outside those places nothing changes.
Left to right, the names of an import come before its module, so an import of names from another
package (`import { readFile } from "node:fs"`) is constrained too: the eval's answers import from
@qi (the measurement is the eval's `+names` arms: invented @qi names per completion).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qi_expert.generation import decoding

KEYWORDS = ("type", "as")
_IDENT = re.compile(r"[A-Za-z0-9_$]")
_NAMES = re.compile(r"\bimport\s+(?:type\s+)?\{([^}]*)$")
_MODULE = re.compile(r"\bimport\s+(?:type\s+)?\{([^}]*)\}\s*from\s*([\"'])([^\"'\n]*)$")
_NAMESPACE = re.compile(r"\bimport\s+(?:type\s+)?\*\s+as\s+([A-Za-z_$][\w$]*)\s+from\s+[\"']([^\"']+)[\"']")


def code_digest() -> str:
    """This file's bytes: part of the generation cache's key when the constraint is on."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class QiNames:
    """The constraint for one tokenizer and one corpus's @qi export lists ({module: [names]})."""

    def __init__(self, tokenizer, exports: Mapping[str, Iterable[str]]):
        self.exports = {m: frozenset(n for n in names if re.fullmatch(r"[A-Za-z_$][\w$]*", n))
                        for m, names in exports.items() if names}
        if not self.exports:
            raise ValueError("the @qi names constraint needs the @qi packages' export lists (none were found)")
        self.names = frozenset().union(*self.exports.values())
        prefixes = lambda names: frozenset(n[:i] for n in names for i in range(1, len(n) + 1))
        self.prefixes = prefixes(self.names) | prefixes(KEYWORDS)
        self.module_prefixes = {m: prefixes(n) for m, n in self.exports.items()}
        self.tokenizer = tokenizer
        # Every token's text, decoded once (a byte-level piece of a longer character decodes to U+FFFD:
        # never part of a name).
        self.pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        self.digest = hashlib.sha256(repr(sorted((m, sorted(n)) for m, n in self.exports.items())).encode()).hexdigest()[:16]

    # -- where in the answer we are ------------------------------------------------------------
    def state(self, text: str):
        """("names", partial identifier) | ("module", allowed modules, partial) |
        ("member", module, partial) | None (unconstrained)."""
        m = _MODULE.search(text)
        if m:
            names = [n.strip().removeprefix("type ").split(" as ")[0].strip() for n in m.group(1).split(",")]
            names = [n for n in names if n]
            allowed = [mod for mod, ex in self.exports.items() if set(names) <= ex] or list(self.exports)
            return ("module", tuple(sorted(allowed)), m.group(3))
        m = _NAMES.search(text)
        if m:
            inside = m.group(1)
            if re.search(r"\bas\s+[A-Za-z0-9_$]*$", inside):
                return None  # an alias is the user's own name
            partial = re.search(r"[A-Za-z0-9_$]*$", inside).group(0)
            return ("names", partial)
        m = re.search(r"(?<![\w$.])([A-Za-z_$][\w$]*)\.([A-Za-z0-9_$]*)$", text)
        if m:
            spaces = {alias: module for alias, module in _NAMESPACE.findall(text)}
            module = spaces.get(m.group(1))
            if module in self.exports:
                return ("member", module, m.group(2))
        return None

    # -- which tokens may come next -------------------------------------------------------------
    @staticmethod
    def _name_run(ident: str, piece: str, prefixes: frozenset[str]) -> tuple[str, int] | None:
        """`ident` extended by the identifier characters `piece` starts with: (the name so far, where
        the piece goes on), or None when no allowed name starts so."""
        for i, ch in enumerate(piece):
            if not _IDENT.match(ch):
                return ident, i
            ident += ch
            if ident not in prefixes:
                return None
        return ident, len(piece)

    def _names_ok(self, ident: str, piece: str, names: frozenset[str], prefixes: frozenset[str]) -> bool:
        """Inside `import { ... }`: names, the keywords, whitespace and commas, up to the `}`."""
        while piece:
            run = self._name_run(ident, piece, prefixes)
            if run is None:
                return False
            ident, at = run
            if at == len(piece):
                return True
            if ident == "as":
                return True  # the alias that follows is free
            ch = piece[at]
            if (ident and ident not in names and ident not in KEYWORDS) or not (ch.isspace() or ch in ",}"):
                return False
            if ch == "}":
                return True
            ident, piece = "", piece[at + 1:]
        return True

    def _member_ok(self, ident: str, piece: str, names: frozenset[str], prefixes: frozenset[str]) -> bool:
        """After `qi.`: one name of the namespace's module, then anything."""
        run = self._name_run(ident, piece, prefixes)
        return run is not None and (run[1] == len(piece) or run[0] in names)

    def _module_ok(self, allowed: Sequence[str], partial: str, piece: str) -> bool:
        text = partial + piece
        for q in ("\"", "'"):
            if q in text:
                return text[: text.index(q)] in allowed
        return any(mod.startswith(text) for mod in allowed)

    def allowed(self, text: str) -> set[int] | None:
        """The token ids that may come after `text` (None: any)."""
        st = self.state(text)
        if st is None:
            return None
        if st[0] == "names":
            return {i for i, p in enumerate(self.pieces)
                    if p and "\ufffd" not in p and self._names_ok(st[1], p, self.names, self.prefixes)}
        if st[0] == "member":
            names, prefixes = self.exports[st[1]], self.module_prefixes[st[1]]
            return {i for i, p in enumerate(self.pieces) if p and "\ufffd" not in p and self._member_ok(st[2], p, names, prefixes)}
        return {i for i, p in enumerate(self.pieces) if p and self._module_ok(st[1], st[2], p)}

    def banned(self, tokens: Sequence[int]) -> set[int]:
        allowed = self.allowed(self.tokenizer.decode(list(tokens)))
        if allowed is None:
            return set()
        return set(range(len(self.pieces))) - allowed


@dataclass(frozen=True)
class NamesPolicy(decoding.StopPolicy):
    """The eval's stop policy, with the @qi names constraint added to its bans. The backends apply
    a policy's bans when `no_repeat_ngram` is on (the eval's default), so it must be."""
    names: QiNames | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.names is not None and not self.no_repeat_ngram:
            raise ValueError("the @qi names constraint (+names arms) needs eval.no_repeat_ngram > 0: "
                             "the backends apply a policy's bans only then")

    def banned(self, tokens: Sequence[int]) -> set[int]:
        ngrams = super().banned(tokens)
        if self.names is None:
            return ngrams
        both = ngrams | self.names.banned(tokens)
        # Never every token: where the two together leave nothing, the n-gram rule alone holds.
        return both if len(both) < len(self.names.pieces) else ngrams
