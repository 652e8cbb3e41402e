"""Units of @qi code, cut from the corpus with tree-sitter, as training records.

A unit is an exported (or top-level) function or const arrow function, a class and each of
its methods, a test case, or a self-contained tutorial block. Tutorial blocks that carry the
tutorials' own markers ("// Instead of this", "// ❌ Anti-pattern", then "// ✅ Use ...") are
cut into a counter-example and its corrected version, linked to each other.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

from omegaconf import DictConfig, OmegaConf
from tree_sitter import Node

from qi_expert.data.corpus import (
    TS_FENCES,
    CodeBlock,
    Layout,
    SourceFile,
    find_sources,
    iter_readmes,
    markdown_blocks,
    read_text,
)
from qi_expert.data.doc_blocks import bound_by, merge_import, package_exports, units_of_block
from qi_expert.data.testcases import count_test_cases, test_case_unit, test_cases
from qi_expert.data.units import Unit, jsdoc_before, unit_name, unit_signature, unit_support
from qi_expert.typescript import patterns, tsast


@dataclass
class ExtractReport:
    files_by_kind: Counter = field(default_factory=Counter)
    parse_errors: list[str] = field(default_factory=list)  # "path:line"
    not_utf8: list[str] = field(default_factory=list)
    unclassified: dict[str, str] = field(default_factory=dict)  # rel -> why it has no kind
    layout: Layout | None = None
    blocks_total: int = 0
    blocks_fragment: int = 0  # fenced blocks that are not self-contained examples
    blocks_parse_error: list[str] = field(default_factory=list)
    blocks_without_record: dict[str, str] = field(default_factory=dict)  # "file:line" -> why
    blocks_partly_read: dict[str, str] = field(default_factory=dict)  # "file:line" -> the lines left out, why
    too_short: int = 0
    too_long: int = 0
    test_cases: int = 0  # it/test calls in the test files
    test_cases_in_records: int = 0


# ---------------------------------------------------------------- the corpus

_TEST_REFS = "[(identifier) (property_identifier) (type_identifier)] @name"


def units_of_file(root: Node) -> list[Unit]:
    """Units of one parsed .ts file."""
    declarations = tsast.file_declarations(root)
    imports = [c for c in root.children if c.type == "import_statement"]
    units: list[Unit] = []
    for child in root.children:
        decl = child.child_by_field_name("declaration") if child.type == "export_statement" else child
        if decl is None:
            continue
        jsdoc = jsdoc_before(child)
        start, end = child.start_point[0] + 1, child.end_point[0] + 1
        if decl.type == "function_declaration":
            units.append(Unit("function", unit_name(decl), tsast.text(child), start, end, jsdoc,
                              unit_signature(child, decl.child_by_field_name("body")),
                              support=unit_support(child, declarations)))
        elif decl.type == "lexical_declaration":
            for d in decl.named_children:
                value = d.child_by_field_name("value")
                if d.type == "variable_declarator" and value is not None and value.type in ("arrow_function", "function_expression"):
                    units.append(Unit("arrow_function", tsast.text(d.child_by_field_name("name")), tsast.text(child),
                                      start, end, jsdoc, unit_signature(child, value.child_by_field_name("body")),
                                      support=unit_support(child, declarations)))
        elif decl.type in ("class_declaration", "abstract_class_declaration"):
            class_name = unit_name(decl)
            class_support = unit_support(child, declarations)
            units.append(Unit("class", class_name, tsast.text(child), start, end, jsdoc,
                              unit_signature(decl, decl.child_by_field_name("body")), support=class_support))
            body = decl.child_by_field_name("body")
            for member in body.named_children if body is not None else []:
                if member.type == "method_definition":
                    units.append(Unit("method", unit_name(member), tsast.text(member), member.start_point[0] + 1,
                                      member.end_point[0] + 1, jsdoc_before(member),
                                      unit_signature(member, member.child_by_field_name("body")), class_name,
                                      # A method compiles inside its class: the class is its context.
                                      support=[tsast.text(child)] + class_support, nodes=imports + [member]))
        elif decl.type == "expression_statement":
            for path, case in test_cases(child, []):
                units.append(test_case_unit(path, case, declarations, imports))
    for u in units:
        if not u.nodes:
            u.nodes = imports + [next(c for c in root.children if c.start_point[0] + 1 == u.start_line)]
        u.imports = [tsast.text(i) for i in imports]
    return units



def record_id(source_file: str, code: str, seen: set[str]) -> str:
    """Content hash; the same code twice in one file gets a numbered suffix (still stable)."""
    n = 0
    while True:
        h = hashlib.sha256(f"{source_file}\0{code}\0{n}".encode("utf-8")).hexdigest()[:16]
        if h not in seen:
            seen.add(h)
            return h
        n += 1


def _test_references(files: Iterable[tuple[SourceFile, Node]]) -> set[str]:
    names = set()
    for f, root in files:
        if f.kind == "test":
            names |= {tsast.text(n) for n in tsast.captures(root, _TEST_REFS).get("name", [])}
    return names


def extract_corpus(root: Path, cfg, tsconfig: str = "tsconfig.json") -> tuple[list[dict], ExtractReport]:
    """All records of the corpus at `root`, in a deterministic order, and the report."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    cfg = SimpleNamespace(**cfg)
    report = ExtractReport()
    sources = find_sources(root, cfg.kinds or {}, cfg.exclude, tsconfig)
    files, report.unclassified, report.layout = sources.files, sources.unclassified, sources.layout
    readmes = iter_readmes(root, files)
    parsed: list[tuple[SourceFile, Node]] = []
    md_units: list[tuple[SourceFile, CodeBlock, Unit]] = []
    texts: list[tuple[SourceFile, str]] = []
    for f in files:
        try:
            texts.append((f, read_text(f.path)))
        except UnicodeDecodeError:
            report.not_utf8.append(f.rel)
            continue
        report.files_by_kind[f.kind] += 1
    # Markdown without a TypeScript fence holds nothing to extract: skip its parse.
    texts = [(f, t) for f, t in texts if f.path.suffix == ".ts" or any(f"```{x}" in t for x in TS_FENCES)]
    trees = tsast.parse_many([(tsast.TYPESCRIPT if f.path.suffix == ".ts" else tsast.MARKDOWN, t.encode("utf-8"))
                              for f, t in texts])
    for (f, text), tree in zip(texts, trees):
        if f.path.suffix == ".ts":
            tree_root = tree.root_node
            if tree_root.has_error:
                err = tsast.first_error(tree_root)
                report.parse_errors.append(f"{f.rel}:{err.start_point[0] + 1 if err else 1}")
                continue
            parsed.append((f, tree_root))
    api = package_exports(parsed, report.layout)
    for (f, text), tree in zip(texts, trees):
        if f.path.suffix != ".ts":
            earlier: dict[str, str] = {}  # declarations of earlier blocks in the same file
            earlier_imports: list[str] = []
            earlier_imported: set[str] = set()
            for block in markdown_blocks(tree):
                report.blocks_total += 1
                where = f"{f.rel}:{block.first_line}"
                broot = tsast.parse(block.code).root_node
                if broot.has_error:
                    err = tsast.first_error(broot)
                    line = err.start_point[0] if err else 0
                    readable, left_out, readable_root = readable_parts(block.code)
                    if readable is None:
                        report.blocks_parse_error.append(f"{f.rel}:{block.first_line + line}")
                        report.blocks_without_record[where] = _unparsable(block.code, line)
                        continue
                    report.blocks_partly_read[where] = left_out
                    block, broot = replace(block, code=readable), readable_root
                units = units_of_block(block, broot, earlier, earlier_imports, cfg.counter_markers,
                                       cfg.corrected_markers, earlier_imported, api)
                if not units:
                    report.blocks_fragment += 1
                    code = [c for c in broot.children if c.type != "comment"]
                    report.blocks_without_record[where] = (
                        "comments only" if not code else "imports only" if all(c.type == "import_statement" for c in code)
                        else "a fragment: statements that declare nothing and use nothing the page declares or imports, nor anything the @qi packages export")
                md_units += [(f, block, u) for u in units]
                for c in broot.children:
                    if c.type == "import_statement":
                        merge_import(earlier_imports, c)
                        earlier_imported |= bound_by(c)
                    for name in tsast.declared_names(c):
                        earlier.setdefault(name, tsast.text(c))
    tested = _test_references(parsed)

    records: list[dict] = []
    seen: set[str] = set()

    def add(f: SourceFile, u: Unit, context: dict) -> dict | None:
        lines = u.lines
        if lines < (cfg.min_block_lines if u.kind == "block" else cfg.min_lines):
            report.too_short += 1
            return None
        if lines > cfg.max_lines:
            report.too_long += 1
            return None
        a = patterns.analyze_nodes(u.nodes)
        types = a.pattern_types()
        rec = {
            "id": record_id(f.rel, u.code, seen),
            "source_kind": f.kind,
            "source_file": f.rel,
            "start_line": u.start_line,
            "end_line": u.end_line,
            "unit": u.kind,
            "name": u.name,
            "code": u.code,
            "imports": u.imports,
            "support": u.support,
            "context": {k: v for k, v in context.items() if v},
            "qi_imports": a.qi_imports,
            "pattern_types": types,
            "complexity": a.complexity,
            "category": patterns.category(a, len(types), tuple(cfg.category_thresholds)),
            "tested": f.kind != "test" and bool(u.name) and u.name in tested,
            "counter_example": u.role == "counter_example",
            "corrected_id": None,
        }
        records.append(rec)
        return rec

    for f, tree_root in parsed:
        if f.kind == "test":
            report.test_cases += count_test_cases(tree_root)
        for u in units_of_file(tree_root):
            rec = add(f, u, {"jsdoc": u.jsdoc, "signature": u.signature, "class_name": u.class_name,
                             "describe": u.describe, "readme": readmes.get(f.app_dir, "")})
            report.test_cases_in_records += rec is not None and u.kind == "test_case" and f.kind == "test"
    pending_counter: dict | None = None
    pending_file = ""
    dropped: dict[str, list[str]] = {}
    for f, block, u in md_units:
        rec = add(f, u, {"headings": block.headings, "prose": block.prose,
                         "readme": readmes.get(f.app_dir, "")})
        where = f"{f.rel}:{block.first_line}"
        if rec is None:
            dropped.setdefault(where, []).append(
                f"shorter than extract.min_block_lines ({cfg.min_block_lines})" if u.lines < cfg.min_block_lines
                else f"longer than extract.max_lines ({cfg.max_lines})")
            continue
        dropped[where] = []
        if f.rel != pending_file:
            pending_counter, pending_file = None, f.rel
        # Pair a counter-example with the corrected version that follows it in the same file.
        if u.role == "counter_example":
            pending_counter = rec
        elif u.role == "corrected" and pending_counter is not None:
            pending_counter["corrected_id"] = rec["id"]
            pending_counter = None
    report.blocks_without_record.update({where: why[0] for where, why in dropped.items() if why})
    return records, report


MAX_RUN = 24  # paragraphs in one declaration (blank lines inside a function body)


def readable_parts(code: str) -> tuple[str | None, str, Node | None]:
    """A block whose whole tree-sitter cannot read, with the paragraphs it can read kept in place.

    Guides often put a signature without a body (`export const map = <T, U>(fn, r): Result<U>`)
    and then the usage that follows it in one block. The block is split at blank lines; from each
    paragraph on, the shortest run of paragraphs that parses is kept (a function body may hold
    blank lines), a paragraph no run completes is blanked out (its lines stay, empty, so line
    numbers hold). Nothing is added. Returns (the code, which lines were left out and why, its
    tree), or (None, "", None) when no statement is left.
    """
    lines = code.splitlines()
    paragraphs: list[tuple[int, int]] = []  # [start, end) line ranges
    start = None
    for i, line in enumerate([*lines, ""]):
        if line.strip() and start is None:
            start = i
        elif not line.strip() and start is not None:
            paragraphs.append((start, i))
            start = None
    keep, left_out = [False] * len(lines), []
    i = 0
    while i < len(paragraphs):
        # A run longer than MAX_RUN paragraphs is not tried: the search stays linear in the block.
        for j in range(i + 1, min(i + MAX_RUN, len(paragraphs)) + 1):
            if not tsast.parse("\n".join(lines[paragraphs[i][0]:paragraphs[j - 1][1]])).root_node.has_error:
                for a in range(paragraphs[i][0], paragraphs[j - 1][1]):
                    keep[a] = True
                i = j
                break
        else:
            a, b = paragraphs[i]
            left_out.append(f"{a + 1}-{b}" if b - a > 1 else f"{a + 1}")
            i += 1
    readable = "\n".join(line if k else "" for line, k in zip(lines, keep))
    root = tsast.parse(readable).root_node
    if root.has_error or not any(c.type != "comment" for c in root.children):
        return None, "", None
    return readable, f"lines {', '.join(left_out)} left out: not TypeScript tree-sitter can parse", root


def _unparsable(code: str, line: int) -> str:
    """Why tree-sitter could not read a block: JSX (TSX), or the line where TypeScript stops."""
    if not tsast.parse(code, tsx=True).root_node.has_error:
        return "JSX (a TSX example; records are .ts modules)"
    if not tsast.parse(f"interface Listing {{\n{code}\n}}").root_node.has_error:
        return "member signatures without bodies (an API listing)"
    if not tsast.parse(f"class Listing {{\n{code}\n}}").root_node.has_error:
        return "class members written without their class"
    text = code.splitlines()[line].strip() if line < len(code.splitlines()) else ""
    return f"not TypeScript tree-sitter can parse, at its line {line + 1}: {text[:80]}"


def summarize(records: list[dict], report: ExtractReport) -> dict:
    by_type = Counter(t for r in records for t in r["pattern_types"])
    return {
        "files_by_kind": dict(sorted(report.files_by_kind.items())),
        "files_with_parse_errors": len(report.parse_errors),
        "parse_error_files": report.parse_errors,
        "files_not_utf8": report.not_utf8,
        "files_unclassified": len(report.unclassified),
        "unclassified_files": report.unclassified,
        "packages": report.layout.packages if report.layout else {},
        "packages_found_by": report.layout.found_by if report.layout else "",
        "markdown_blocks": {"total": report.blocks_total, "fragments": report.blocks_fragment,
                            "parse_errors": len(report.blocks_parse_error),
                            "with_record": report.blocks_total - len(report.blocks_without_record),
                            "partly_read": dict(sorted(report.blocks_partly_read.items())),
                            "without_record": dict(sorted(report.blocks_without_record.items()))},
        "skipped_units": {"too_short": report.too_short, "too_long": report.too_long},
        "records": len(records),
        "records_by_kind": dict(sorted(Counter(r["source_kind"] for r in records).items())),
        "records_by_type": {t: by_type.get(t, 0) for t in patterns.PATTERN_TYPES},
        "records_without_type": sum(1 for r in records if not r["pattern_types"]),
        "records_by_category": {c: sum(1 for r in records if r["category"] == c) for c in patterns.CATEGORIES},
        "counter_examples": sum(1 for r in records if r["counter_example"]),
        "counter_examples_paired": sum(1 for r in records if r["corrected_id"]),
        "records_tested": sum(1 for r in records if r["tested"]),
        "test_cases": {"total": report.test_cases, "in_records": report.test_cases_in_records},
    }
