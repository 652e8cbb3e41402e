"""Test cases as records: each `it`/`test` call (Vitest/Jest modifiers and loops that make cases
included) with its describe titles and the hooks and declarations of those blocks it uses.
"""

from __future__ import annotations

from typing import Iterable

from tree_sitter import Node

from qi_expert.data.units import Unit
from qi_expert.typescript import tsast

# ---------------------------------------------------------------- test cases

_TEST_CASES = frozenset({"test", "it"})
_HOOKS = frozenset({"beforeEach", "afterEach", "beforeAll", "afterAll"})

_MODIFIERS = frozenset({"skip", "only", "skipIf", "runIf", "each", "concurrent", "sequential", "todo", "fails"})


def _test_call(stmt: Node) -> tuple[str, Node] | None:
    """(callee, call) for a statement `name(...)`: describe, it, test, a hook, anything called.

    Vitest/Jest modifiers count as their test function: `it.skip(...)`, `describe.skipIf(c)(...)`,
    `it.each(table)(...)` are `it`/`describe` calls whose title and callback are the last call's.
    """
    call = stmt.named_children[0] if stmt.type == "expression_statement" and stmt.named_children else None
    if call is None or call.type != "call_expression":
        return None
    fn = call.child_by_field_name("function")
    while fn is not None and fn.type != "identifier":
        if fn.type == "call_expression":
            fn = fn.child_by_field_name("function")
        elif fn.type == "member_expression" and tsast.text(fn.child_by_field_name("property")) in _MODIFIERS:
            fn = fn.child_by_field_name("object")
        else:
            return None
    return (tsast.text(fn), call) if fn is not None else None


def _title(call: Node) -> str:
    args = call.child_by_field_name("arguments")
    return tsast.text(args.named_children[0]).strip("'\"`") if args is not None and args.named_children else ""


def _callback_body(call: Node) -> Node | None:
    args = call.child_by_field_name("arguments")
    for a in reversed(args.named_children if args is not None else []):
        if a.type in ("arrow_function", "function_expression"):
            body = a.child_by_field_name("body")
            return body if body is not None and body.type == "statement_block" else None
    return None


def test_cases(stmt: Node, path: list[tuple[Node, Node]]) -> Iterable[tuple[list[tuple[Node, Node]], Node]]:
    """Each it/test statement under `stmt` with its describe path [(describe statement, body)].

    A loop that declares test cases (`for (const c of cases) it(...)`) is one test case: the loop
    is what makes its cases.
    """
    called = _test_call(stmt)
    if called is None:
        if stmt.type in ("for_statement", "for_in_statement") and count_test_cases(stmt):
            yield path, stmt
        return
    name, call = called
    if name in _TEST_CASES:
        yield path, stmt
    elif name == "describe" and (body := _callback_body(call)) is not None:
        for s in body.named_children:
            yield from test_cases(s, path + [(stmt, body)])


def _indent(node: Node) -> str:
    return " " * node.start_point[1]  # the statement's column (indentation is re-made with spaces)


def test_case_unit(path: list[tuple[Node, Node]], case: Node, declarations: dict[str, Node],
                    imports: list[Node]) -> Unit:
    """One test case as a module of its own: its describe blocks (titles kept), the setup it uses
    from each of them (hooks, and the declarations the case or that setup refers to), and the case.

    A long describe block is no longer one unit too long to keep: each case is cut out with what
    it needs, and still compiles and runs alone.
    """
    setup: list[Node] = []  # candidates, outermost first
    for _, body in path:
        for s in body.named_children:
            called = _test_call(s)
            if s.type == "comment" or (called is not None and called[0] in _TEST_CASES | {"describe"}):
                continue
            setup.append(s)
    picked = {id(s) for s in setup if s.type == "expression_statement"}  # hooks and other calls: setup
    used = tsast.referenced_names(case)
    for s in setup:
        if id(s) in picked:
            used |= tsast.referenced_names(s)
    changed = True
    while changed:
        changed = False
        for s in setup:
            if id(s) not in picked and used.intersection(tsast.declared_names(s)):
                picked.add(id(s))
                used |= tsast.referenced_names(s)
                changed = True
    lines: list[str] = []
    for depth, (describe, body) in enumerate(path):
        lines.append(_indent(describe) + describe.text[: body.start_byte - describe.start_byte + 1].decode("utf-8"))
        lines += [_indent(s) + tsast.text(s) for s in body.named_children if id(s) in picked]
    lines.append(_indent(case) + tsast.text(case))
    for describe, body in reversed(path):
        lines.append(_indent(describe) + describe.text[body.end_byte - 1 - describe.start_byte:].decode("utf-8"))
    kept = [s for s in setup if id(s) in picked]
    # The file's declarations the case, its setup or its describe headers use
    # (`describe.skipIf(!(await isRedisAvailable()))(...)`).
    headers = [declarations[n] for d, body in path for n in tsast.referenced_names_outside(d, body)
               if n in declarations]
    needed = {id(d): d for n in kept + [case] for d in tsast.dependencies(n, declarations)}
    needed |= {id(d): d for h in headers for d in [h, *tsast.dependencies(h, declarations)]}
    support = [tsast.text(n) for n in sorted(needed.values(), key=lambda d: d.start_byte)]
    called = _test_call(case) or next((c for n in tsast.walk(case) if n.type == "expression_statement"
                                       and (c := _test_call(n)) and c[0] in _TEST_CASES), None)
    return Unit("test_case", _title(called[1]), "\n".join(lines), case.start_point[0] + 1, case.end_point[0] + 1,
                support=support, nodes=imports + kept + [case],
                describe=[_title(_test_call(d)[1]) for d, _ in path])


def count_test_cases(root: Node) -> int:
    return sum(1 for n in tsast.walk(root) if n.type == "expression_statement"
               and (_test_call(n) or ("",))[0] in _TEST_CASES)
