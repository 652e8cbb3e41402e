"""Graded measures of a completion: how close it came, not only whether it passed.

A 135M model trained for minutes rarely writes code that compiles, so the binary rates
(compile, compliance, pass@1) stay at zero while it is visibly learning. These measures move
before they do, each from a library that knows the language:
- syntax valid: tree-sitter parses the code without an error or missing node;
- @qi API validity: the @qi names the code imports (or reaches through `import * as qi`) that
  the corpus's @qi packages really export, by the TypeScript compiler's own export list; the
  others are hallucinated names (`import { validatePrice } from "@qi/base"`);
- type errors: the compiler's diagnostics per completion (counted by the scorer);
- @qi names not imported: real @qi names the code uses without importing them (the compiler's
  "Cannot find name 'QiError'"), the most frequent error between a tuned model and compiling code;
- only missing @qi imports: every diagnostic is "Cannot find name 'X'" for an X that @qi exports,
  so adding import lines would make the code compile;
- reference loss (refloss.py): the model's per-token loss on the task's reference solution.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Iterable, Mapping, Sequence

from qi_expert.typescript import patterns, tsast

# TS2304 "Cannot find name 'X'." and TS2552 "Cannot find name 'X'. Did you mean 'Y'?";
# TS2503 "Cannot find namespace 'X'." (a type used as QiError.Foo).
MISSING_NAME_CODES = frozenset({2304, 2552, 2503})
_MISSING_NAME = re.compile(r"Cannot find (?:name|namespace) '([\w$]+)'")


def syntax_valid(code: str) -> bool:
    return bool(code.strip()) and not tsast.has_errors(tsast.parse(code).root_node)


def qi_names(code: str) -> list[tuple[str, str]]:
    """(module, name) for each @qi name the code imports or uses through a namespace import."""
    if not code.strip():
        return []
    root = tsast.parse(code).root_node
    imported, namespaces = patterns.qi_bindings(root)
    out: list[tuple[str, str]] = [(module, name) for module, name in imported.values()]
    if namespaces:
        for n in tsast.walk(root):
            if n.type in ("member_expression", "nested_type_identifier"):
                obj = n.child_by_field_name("object") or (n.named_children[0] if n.named_children else None)
                prop = n.child_by_field_name("property") or n.child_by_field_name("name")
                if obj is not None and prop is not None and tsast.text(obj) in namespaces:
                    out.append((namespaces[tsast.text(obj)], tsast.text(prop)))
    return list(dict.fromkeys(out))


def api_validity(code: str, exports: Mapping[str, Iterable[str]]) -> dict:
    """The @qi names of `code` split into real ones and hallucinated ones (module-qualified)."""
    known = {m: set(names) for m, names in exports.items()}
    real, invented = [], []
    for module, name in qi_names(code):
        # A module the corpus does not have (@qi/utils) makes every name from it invented.
        (real if name in known.get(module, ()) else invented).append(f"{module}:{name}")
    used = len(real) + len(invented)
    return {"used": used, "real": real, "invented": invented,
            "share": round(len(real) / used, 4) if used else None}


def _qi_names(exports: Mapping[str, Iterable[str]]) -> set[str]:
    return set().union(*(set(v) for v in exports.values())) if exports else set()


def _missing_qi_name(diag: Mapping, names: set[str]) -> str | None:
    """The @qi name a "Cannot find name 'X'" diagnostic is about, if X is one @qi exports."""
    m = _MISSING_NAME.search(str(diag.get("message", "")))
    return m.group(1) if int(diag.get("code", 0)) in MISSING_NAME_CODES and m and m.group(1) in names else None


def only_missing_qi_imports(diagnostics: Sequence[Mapping], exports: Mapping[str, Iterable[str]]) -> bool:
    """Every diagnostic is a missing name that @qi exports: the imports alone stand between it and compiling."""
    names = _qi_names(exports)
    return bool(diagnostics) and all(_missing_qi_name(d, names) for d in diagnostics)


def not_imported(diagnostics: Sequence[Mapping], exports: Mapping[str, Iterable[str]]) -> list[str]:
    """The real @qi names the compiler could not find: used, but not imported (sorted, each once)."""
    names = _qi_names(exports)
    return sorted({n for d in diagnostics if (n := _missing_qi_name(d, names))})


def grade(code: str, diagnostics: Sequence[Mapping], exports: Mapping[str, Iterable[str]]) -> dict:
    """The graded fields of one result row."""
    return {"syntax_valid": syntax_valid(code), "api": api_validity(code, exports),
            "not_imported": not_imported(diagnostics, exports),
            "only_missing_qi_imports": only_missing_qi_imports(diagnostics, exports)}


def summarize(rows: Sequence[Mapping]) -> dict:
    """Graded metrics over rows of one arm (rows carry `graded`, `n_compile_errors`, maybe `reference_nll`)."""
    if not rows:
        return {}
    errors = [r["n_compile_errors"] for r in rows]
    used = sum(r["graded"]["api"]["used"] for r in rows)
    real = sum(len(r["graded"]["api"]["real"]) for r in rows)
    invented = Counter(n for r in rows for n in r["graded"]["api"]["invented"])
    missing = Counter(n for r in rows for n in r["graded"].get("not_imported", []))
    out = {
        "syntax_valid_rate": round(sum(r["graded"]["syntax_valid"] for r in rows) / len(rows), 4),
        "type_errors_mean": round(statistics.fmean(errors), 4),
        "type_errors_median": float(statistics.median(errors)),
        "only_missing_qi_imports_rate": round(sum(r["graded"]["only_missing_qi_imports"] for r in rows) / len(rows), 4),
        # Pooled over every @qi name any completion used: real / used.
        "qi_api_valid_share": round(real / used, 4) if used else None,
        "qi_names_used": used,
        "qi_names_real_per_completion": round(real / len(rows), 4),
        "qi_names_invented_per_completion": round(sum(invented.values()) / len(rows), 4),
        "qi_uses_rate": round(sum(r["graded"]["api"]["used"] > 0 for r in rows) / len(rows), 4),
        "qi_names_not_imported_per_completion": round(sum(missing.values()) / len(rows), 4),
        "not_imported_rate": round(sum(bool(r["graded"].get("not_imported")) for r in rows) / len(rows), 4),
        # Most frequent first; ties by name, so the lists are stable.
        "invented_names": [[n, c] for n, c in sorted(invented.items(), key=lambda x: (-x[1], x[0]))[:15]],
        "not_imported_names": [[n, c] for n, c in sorted(missing.items(), key=lambda x: (-x[1], x[0]))[:15]],
    }
    nll = [r["reference_nll"] for r in rows if r.get("reference_nll") is not None]
    if nll:
        out["reference_loss"] = round(statistics.fmean(nll), 4)
    return out


# Per-task values compared between arms (stats.paired): (name, row -> value, binary?).
PAIRED_MEASURES = (
    ("pass@1", lambda r: float(r["passed"]), True),
    ("compile_rate", lambda r: float(r["compiled"]), True),
    ("compliance_rate", lambda r: float(r["compliance"]["pass"]), True),
    ("compliance_score", lambda r: float(r["compliance"]["score"]), False),
    ("syntax_valid_rate", lambda r: float(r["graded"]["syntax_valid"]), True),
    ("only_missing_qi_imports_rate", lambda r: float(r["graded"]["only_missing_qi_imports"]), True),
    ("type_errors_mean", lambda r: float(r["n_compile_errors"]), False),
    ("qi_names_real_per_completion", lambda r: float(len(r["graded"]["api"]["real"])), False),
    ("qi_names_invented_per_completion", lambda r: float(len(r["graded"]["api"]["invented"])), False),
    ("qi_names_not_imported_per_completion", lambda r: float(len(r["graded"].get("not_imported", []))), False),
    ("reference_loss", lambda r: r.get("reference_nll"), False),
)
