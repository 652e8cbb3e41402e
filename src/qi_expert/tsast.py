"""tree-sitter-typescript: one parser, and the few tree walks every module needs."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Iterator

import tree_sitter_markdown
import tree_sitter_typescript
from tree_sitter import Language, Node, Parser, Query, QueryCursor, Tree

TYPESCRIPT = Language(tree_sitter_typescript.language_typescript())
MARKDOWN = Language(tree_sitter_markdown.language())


@lru_cache(maxsize=2)
def _parser(language: Language) -> Parser:
    return Parser(language)


def parse(source: str | bytes) -> Tree:
    data = source.encode("utf-8") if isinstance(source, str) else source
    return _parser(TYPESCRIPT).parse(data)


def parse_markdown(source: str | bytes) -> Tree:
    """Markdown's block structure (headings, paragraphs, fenced code), by tree-sitter-markdown."""
    data = source.encode("utf-8") if isinstance(source, str) else source
    return _parser(MARKDOWN).parse(data)


_local = threading.local()


def _thread_parser(language: Language) -> Parser:
    parsers = _local.__dict__.setdefault("parsers", {})
    if language not in parsers:
        parsers[language] = Parser(language)
    return parsers[language]


def parse_many(sources: list[tuple[Language, bytes]], workers: int = 2) -> list[Tree]:
    """Parse many files at once; tree-sitter releases the GIL while it parses."""
    def one(item: tuple[Language, bytes]) -> Tree:
        return _thread_parser(item[0]).parse(item[1])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, sources))


@lru_cache(maxsize=None)
def _query(source: str) -> Query:
    return Query(TYPESCRIPT, source)


def captures(node: Node, query: str) -> dict[str, list[Node]]:
    """Run a tree-sitter query below `node`; matching happens in C, far faster than a walk."""
    return QueryCursor(_query(query)).captures(node)


_NAMES_QUERY = "[(identifier) (type_identifier)] @name"


def referenced_names(node: Node) -> set[str]:
    """Identifiers and type names used anywhere below `node`."""
    return {text(n) for n in captures(node, _NAMES_QUERY).get("name", [])}


def walk(node: Node) -> Iterator[Node]:
    """Every node below `node` (itself included), in source order, without recursion limits."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def has_errors(node: Node) -> bool:
    return node.has_error


def first_error(node: Node) -> Node | None:
    for n in walk(node):
        if n.type == "ERROR" or n.is_missing:
            return n
    return None


def text(node: Node | None) -> str:
    return node.text.decode("utf-8") if node is not None and node.text is not None else ""


FUNCTION_TYPES = frozenset(
    {"function_declaration", "function_expression", "arrow_function", "method_definition",
     "generator_function_declaration", "function"}
)


def enclosing_function(node: Node) -> Node | None:
    p = node.parent
    while p is not None and p.type not in FUNCTION_TYPES:
        p = p.parent
    return p


def function_name(fn: Node) -> str:
    """The name a function is known by: its own, its method name, or the const it is bound to."""
    name = fn.child_by_field_name("name")
    if name is not None:
        return text(name)
    parent = fn.parent
    if parent is not None and parent.type in ("variable_declarator", "pair", "public_field_definition"):
        key = parent.child_by_field_name("name") or parent.child_by_field_name("key")
        return text(key)
    return ""


def callee_name(call: Node) -> tuple[str, str]:
    """("", name) for `name(...)`, (object, property) for `obj.prop(...)`."""
    fn = call.child_by_field_name("function")
    if fn is None:
        return "", ""
    if fn.type == "identifier":
        return "", text(fn)
    if fn.type == "member_expression":
        obj = fn.child_by_field_name("object")
        prop = fn.child_by_field_name("property")
        return text(obj), text(prop)
    return "", ""
