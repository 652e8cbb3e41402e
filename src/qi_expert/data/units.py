"""One parsed TypeScript file's units: exported (or top-level) functions and const arrow functions,
classes and each of their methods, with their JSDoc, signature and the file's declarations they
use (the extract stage's building block; test cases are testcases.py's, tutorial blocks doc_blocks.py's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tree_sitter import Node

from qi_expert.typescript import tsast


@dataclass
class Unit:
    kind: str  # function | arrow_function | class | method | test_case | block
    name: str
    code: str
    start_line: int
    end_line: int
    jsdoc: str = ""
    signature: str = ""
    class_name: str = ""
    support: list[str] = field(default_factory=list)  # declarations from its own file it uses
    role: str = ""  # "" | counter_example | corrected
    nodes: list[Node] = field(default_factory=list)  # import statements + the unit's own nodes
    imports: list[str] = field(default_factory=list)  # import statements it compiles with
    describe: list[str] = field(default_factory=list)  # a test case's describe titles, outermost first

    @property
    def lines(self) -> int:
        return len(self.code.splitlines()) if self.kind == "test_case" else self.end_line - self.start_line + 1


# ---------------------------------------------------------------- helpers on one parsed file

def _clean_jsdoc(comment: str) -> str:
    lines = []
    for line in comment.strip().removeprefix("/**").removesuffix("*/").splitlines():
        line = line.strip().removeprefix("*").strip()
        if line:
            lines.append(line)
    return " ".join(lines)


def jsdoc_before(node: Node) -> str:
    prev = node.prev_named_sibling
    if prev is not None and prev.type == "comment" and prev.end_point[0] + 1 >= node.start_point[0]:
        t = tsast.text(prev)
        if t.startswith("/**"):
            return _clean_jsdoc(t)
    return ""


def unit_signature(decl: Node, body: Node | None) -> str:
    if body is None:
        return ""
    head = decl.text[: body.start_byte - decl.start_byte].decode("utf-8", "replace")
    head = " ".join(head.split())
    return head.removesuffix("=>").strip() if head.endswith("=>") else head


def unit_name(decl: Node) -> str:
    return tsast.text(decl.child_by_field_name("name"))


def unit_support(unit_node: Node, declarations: dict[str, Node]) -> list[str]:
    """Declarations of the same file the unit needs (`validate` falls back to these when the unit alone does not compile)."""
    return [tsast.text(n) for n in tsast.dependencies(unit_node, declarations)]
