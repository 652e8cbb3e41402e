"""Finding the corpus's source files and reading them safely.

A corpus is a folder laid out like qi-v2-qicore's typescript/: lib/*/src (implementation),
lib/tests (tests), app/<demo> (apps with a README), docs/**/*.md (tutorials). Which glob is
which kind lives in the config (`extract.kinds`), first match wins.
"""

from __future__ import annotations

import fnmatch
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tree_sitter import Tree

from qi_expert import tsast


class CorpusError(ValueError):
    """The corpus as a whole cannot be used (missing, empty): the stage stops with this."""


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute
    rel: str  # posix path relative to the corpus root: what records cite
    kind: str  # tutorial | app | implementation | test


def kind_of(rel: str, kinds: Mapping[str, Sequence[str]]) -> str | None:
    for kind, globs in kinds.items():
        if any(fnmatch.fnmatchcase(rel, g) for g in globs):
            return kind
    return None


def find_sources(root: Path, kinds: Mapping[str, Sequence[str]], exclude: Sequence[str]) -> tuple[list[SourceFile], int]:
    """Sorted source files under root, and how many .ts/.md files matched no kind."""
    if not root.exists():
        raise CorpusError(f"corpus root {root} does not exist (set corpus.root)")
    if not root.is_dir():
        raise CorpusError(f"corpus root {root} is not a directory (set corpus.root)")
    found, unclassified = [], 0
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".ts", ".md") or not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            continue
        kind = kind_of(rel, kinds)
        if kind is None:
            unclassified += 1
            continue
        found.append(SourceFile(path, rel, kind))
    if not found:
        raise CorpusError(f"corpus root {root} holds no TypeScript or Markdown source (corpus.root)")
    return found, unclassified


def read_text(path: Path) -> str:
    """UTF-8 text; raises UnicodeDecodeError for anything else (the caller counts it)."""
    return path.read_bytes().decode("utf-8")


@dataclass
class CodeBlock:
    code: str
    first_line: int  # 1-based line of the code's first line in the Markdown file
    headings: list[str]  # heading path, outermost first
    prose: str  # the paragraph(s) just before the block


TS_FENCES = frozenset({"ts", "typescript", "tsx"})
_HEADING_LEVEL = {"atx_h1_marker": 1, "atx_h2_marker": 2, "atx_h3_marker": 3, "atx_h4_marker": 4,
                  "atx_h5_marker": 5, "atx_h6_marker": 6, "setext_h1_underline": 1, "setext_h2_underline": 2}


def _heading(node) -> tuple[int, str]:
    level, title = 1, ""
    for c in node.children:
        if c.type in _HEADING_LEVEL:
            level = _HEADING_LEVEL[c.type]
        elif c.type == "inline":
            title = tsast.text(c)
        elif c.type == "paragraph":  # setext: the title is a paragraph above the underline
            title = tsast.text(c).strip()
    return level, title.strip()


def _block_nodes(root):
    """Headings, paragraphs and fenced code in document order (lists and quotes opened)."""
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type in ("atx_heading", "setext_heading", "paragraph", "fenced_code_block"):
            yield n
            continue
        stack.extend(reversed(n.named_children))


def markdown_blocks(source: str | Tree, prose_chars: int = 400) -> list[CodeBlock]:
    """Fenced ts/typescript blocks with the heading path and the prose just before each."""
    tree = tsast.parse_markdown(source) if isinstance(source, str) else source
    blocks: list[CodeBlock] = []
    headings: list[tuple[int, str]] = []
    prose: list[str] = []
    for node in _block_nodes(tree.root_node):
        if node.type in ("atx_heading", "setext_heading"):
            level, title = _heading(node)
            headings = [h for h in headings if h[0] < level] + [(level, title)]
            prose = []
        elif node.type == "paragraph":
            prose.append(" ".join(tsast.text(node).split()))
        else:
            info = next((c for c in node.children if c.type == "info_string"), None)
            content = next((c for c in node.children if c.type == "code_fence_content"), None)
            lang = tsast.text(info).split()[0].lower() if info is not None and tsast.text(info).split() else ""
            if lang in TS_FENCES and content is not None:
                blocks.append(CodeBlock(
                    # Fences inside lists or indented keep their indentation in the content.
                    code=textwrap.dedent(tsast.text(content)),
                    first_line=content.start_point[0] + 1,
                    headings=[h for _, h in headings],
                    prose=" ".join(prose)[-prose_chars:],
                ))
            prose = []
    return blocks


def readme_summary(text: str) -> str:
    """The first paragraph of a README: what the demo app is about."""
    for node in _block_nodes(tsast.parse_markdown(text).root_node):
        if node.type == "paragraph":
            return " ".join(tsast.text(node).split())
    return ""


def demo_of(rel: str) -> str | None:
    """`app/<demo>/...` -> `<demo>`."""
    parts = rel.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "app" else None


def iter_readmes(root: Path, files: Iterable[SourceFile]) -> dict[str, str]:
    """Demo name -> README summary, for every app demo that has a README.md."""
    out = {}
    for f in files:
        demo = demo_of(f.rel)
        if demo and demo not in out:
            readme = root / "app" / demo / "README.md"
            if readme.is_file():
                try:
                    out[demo] = readme_summary(read_text(readme))
                except UnicodeDecodeError:
                    out[demo] = ""
    return out
