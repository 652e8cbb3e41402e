"""Training rows rewritten from the corpus's own records, offline and checked before admission.

Each variant is the same code written another way a user of @qi writes it, built on the AST
(tree-sitter), never by a model. Validate admits a variant only when its module compiles alone,
it breaks no anti-pattern rule and it is not a near copy of an accepted record; format drops any
that copies a benchmark task, and keeps variants out of the validation split.

- explicit_error_type: `Result<T>` written `Result<T, QiError>` (QiError is the default error
  type of @qi/base's Result), with `type QiError` imported: the form every benchmark signature has.
- function_form: `export const f = (a: A): R => expr` written `export function f(a: A): R { return expr; }`,
  the form of an exported function the benchmark asks for.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Mapping, Sequence

from qi_expert.typescript import tsast

KINDS = ("explicit_error_type", "function_form")


def _replace(code: str, edits: Sequence[tuple[int, int, str]]) -> str:
    """Apply (start byte, end byte, new text) edits that do not overlap."""
    data = code.encode("utf-8")
    out, at = bytearray(), 0
    for start, end, new in sorted(edits):
        out += data[at:start] + new.encode("utf-8")
        at = end
    return (out + data[at:]).decode("utf-8")


def explicit_error_type(code: str) -> str | None:
    """`Result<T>` -> `Result<T, QiError>` everywhere in `code`; None when there is none to rewrite."""
    root = tsast.parse(code).root_node
    edits = []
    for n in tsast.walk(root):
        if n.type != "generic_type" or tsast.text(n.child_by_field_name("name")) != "Result":
            continue
        args = n.child_by_field_name("type_arguments") or next((c for c in n.children if c.type == "type_arguments"), None)
        if args is not None and len(args.named_children) == 1:
            edits.append((args.end_byte - 1, args.end_byte - 1, ", QiError"))
    return _replace(code, edits) if edits else None


def function_form(code: str) -> str | None:
    """`[export] const f = [async] <T>(params): R => body;` as a function declaration; None if `code` is not one."""
    root = tsast.parse(code).root_node
    statements = [c for c in root.children if c.type != "comment"]
    if len(statements) != 1:
        return None
    stmt = statements[0]
    exported = stmt.type == "export_statement"
    decl = stmt.child_by_field_name("declaration") if exported else stmt
    if decl is None or decl.type != "lexical_declaration" or len(decl.named_children) != 1:
        return None
    d = decl.named_children[0]
    fn = d.child_by_field_name("value")
    if d.child_by_field_name("type") is not None or fn is None or fn.type != "arrow_function":
        return None
    params = fn.child_by_field_name("parameters")
    if params is None:  # `x => ...`: an untyped single parameter, nothing to declare it with
        return None
    type_params = fn.child_by_field_name("type_parameters")
    ret = fn.child_by_field_name("return_type")
    body = fn.child_by_field_name("body")
    if "this" in tsast.referenced_names(body) or any(n.type == "this" for n in tsast.walk(body)):
        return None  # an arrow keeps the enclosing `this`; a function would not
    is_async = any(c.type == "async" for c in fn.children)
    block = tsast.text(body) if body.type == "statement_block" else "{\n  return " + tsast.text(body) + ";\n}"
    head = ("export " if exported else "") + ("async " if is_async else "") + "function " + tsast.text(d.child_by_field_name("name"))
    return head + tsast.text(type_params) + tsast.text(params) + tsast.text(ret) + " " + block + "\n"


def _signature(code: str) -> str:
    """The declaration's head up to its body, on one line (as extract writes signatures)."""
    root = tsast.parse(code).root_node
    stmt = next((c for c in root.children if c.type != "comment"), None)
    fn = next((n for n in tsast.walk(stmt) if n.type in ("function_declaration", "arrow_function")), None) if stmt else None
    body = fn.child_by_field_name("body") if fn is not None else None
    if body is None:
        return ""
    head = " ".join(code.encode("utf-8")[stmt.start_byte: body.start_byte].decode("utf-8").split())
    return head.removesuffix("=>").strip()


def _qi_error_import(rec: Mapping) -> list[str]:
    return list(rec.get("imports", [])) + ['import type { QiError } from "@qi/base";']


def variants(records: Sequence[Mapping], kinds: Sequence[str]) -> list[dict]:
    """Candidate variants (not yet verified) of accepted records, each a record of its own.

    A variant keeps its parent's source file (so the split keeps it beside its parent), context
    and pattern types; `origin` names the rewrite, `parent_id` the record it came from.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"augment.kinds: unknown {unknown}; known: {list(KINDS)}")
    rewrites: dict[str, Callable[[Mapping], dict | None]] = {
        "explicit_error_type": _explicit_error_type_record,
        "function_form": _function_form_record,
    }
    out = []
    for rec in records:
        if rec["counter_example"] or rec["unit"] not in ("function", "arrow_function"):
            continue
        for kind in kinds:
            new = rewrites[kind](rec)
            if new is not None:
                vid = hashlib.sha256(f"{rec['id']}:{kind}".encode()).hexdigest()[:16]
                out.append({**rec, **new, "id": vid, "origin": kind, "parent_id": rec["id"],
                            "context": {**rec.get("context", {}), "signature": _signature(new["code"])}})
    return out


def _explicit_error_type_record(rec: Mapping) -> dict | None:
    if any("type Result" in s or "interface Result" in s for s in rec.get("support", [])):
        return None  # a file that declares its own Result (the library itself)
    code = explicit_error_type(rec["code"])
    if code is None:
        return None
    return {"code": code, "support": [explicit_error_type(s) or s for s in rec.get("support", [])],
            "imports": _qi_error_import(rec)}


def _function_form_record(rec: Mapping) -> dict | None:
    code = function_form(rec["code"])
    if code is None:
        return None
    # The benchmark's form in full: an exported function whose Result names its error type.
    new = {"code": code, "unit": "function"}
    return new | (_explicit_error_type_record({**rec, **new}) or {})


def capped(variants_: Sequence[dict], corpus_rows: int, max_share: float) -> list[dict]:
    """At most `max_share` of all rows are variants: a stable choice by id when there are more."""
    if not 0 <= max_share < 1:
        raise ValueError(f"augment.max_share must be in [0, 1), got {max_share}")
    limit = int(max_share / (1 - max_share) * corpus_rows)
    chosen = {v["id"] for v in sorted(variants_, key=lambda v: v["id"])[:limit]}
    return [v for v in variants_ if v["id"] in chosen]
