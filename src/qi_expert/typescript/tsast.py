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
TSX = Language(tree_sitter_typescript.language_tsx())


@lru_cache(maxsize=3)
def _parser(language: Language) -> Parser:
    return Parser(language)


def parse(source: str | bytes, tsx: bool = False) -> Tree:
    data = source.encode("utf-8") if isinstance(source, str) else source
    return _parser(TSX if tsx else TYPESCRIPT).parse(data)


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


def referenced_names_outside(node: Node, inner: Node) -> set[str]:
    """referenced_names of `node` without those below `inner` (a describe call's header: its
    modifiers and title, not its body)."""
    return {text(n) for n in captures(node, _NAMES_QUERY).get("name", [])
            if n.end_byte <= inner.start_byte or n.start_byte >= inner.end_byte}


# Top-level statements that declare names (a file's declarations; `export` wraps them).
DECLARATIONS = frozenset({"function_declaration", "class_declaration", "abstract_class_declaration",
                          "lexical_declaration", "interface_declaration", "type_alias_declaration",
                          "enum_declaration", "variable_declaration", "generator_function_declaration",
                          "function_signature"})


def declared_names(node: Node) -> list[str]:
    """The names a top-level statement declares (through `export` too)."""
    decl = node.child_by_field_name("declaration") if node.type == "export_statement" else node
    if decl is None:
        return []
    if decl.type in ("lexical_declaration", "variable_declaration"):
        return [text(d.child_by_field_name("name")) for d in decl.named_children if d.type == "variable_declarator"]
    name = decl.child_by_field_name("name")
    return [text(name)] if name is not None else []


def file_declarations(root: Node) -> dict[str, Node]:
    """{name: top-level statement declaring it} of a parsed file."""
    found: dict[str, Node] = {}
    for child in root.children:
        if child.type in DECLARATIONS or child.type == "export_statement":
            for name in declared_names(child):
                found[name] = child
    return found


def dependencies(node: Node, declarations: dict[str, Node]) -> list[Node]:
    """The declarations of the same file `node` uses, transitively, in file order (`node` excluded).

    A function using the file's `type Price` needs it, and `Price` may in turn need `Level`.
    """
    picked: dict[int, Node] = {}
    todo = [node]
    while todo:
        for name in referenced_names(todo.pop()):
            n = declarations.get(name)
            if n is not None and n is not node and id(n) not in picked:
                picked[id(n)] = n
                todo.append(n)
    return sorted(picked.values(), key=lambda n: n.start_byte)


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
