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
from functools import lru_cache
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Iterable, Mapping, Sequence

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
from qi_expert.typescript import patterns, tsast

_TEST_CASES = frozenset({"test", "it"})
_HOOKS = frozenset({"beforeEach", "afterEach", "beforeAll", "afterAll"})
_TEST_REFS = "[(identifier) (property_identifier) (type_identifier)] @name"


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


# ---------------------------------------------------------------- helpers on one parsed file

def _clean_jsdoc(comment: str) -> str:
    lines = []
    for line in comment.strip().removeprefix("/**").removesuffix("*/").splitlines():
        line = line.strip().removeprefix("*").strip()
        if line:
            lines.append(line)
    return " ".join(lines)


def _jsdoc_before(node: Node) -> str:
    prev = node.prev_named_sibling
    if prev is not None and prev.type == "comment" and prev.end_point[0] + 1 >= node.start_point[0]:
        t = tsast.text(prev)
        if t.startswith("/**"):
            return _clean_jsdoc(t)
    return ""


def _signature(decl: Node, body: Node | None) -> str:
    if body is None:
        return ""
    head = decl.text[: body.start_byte - decl.start_byte].decode("utf-8", "replace")
    head = " ".join(head.split())
    return head.removesuffix("=>").strip() if head.endswith("=>") else head


def _name(decl: Node) -> str:
    return tsast.text(decl.child_by_field_name("name"))


def _support(unit_node: Node, declarations: dict[str, Node]) -> list[str]:
    """Declarations of the same file the unit needs (`validate` falls back to these when the unit alone does not compile)."""
    return [tsast.text(n) for n in tsast.dependencies(unit_node, declarations)]


def units_of_file(root: Node) -> list[Unit]:
    """Units of one parsed .ts file."""
    declarations = tsast.file_declarations(root)
    imports = [c for c in root.children if c.type == "import_statement"]
    units: list[Unit] = []
    for child in root.children:
        decl = child.child_by_field_name("declaration") if child.type == "export_statement" else child
        if decl is None:
            continue
        jsdoc = _jsdoc_before(child)
        start, end = child.start_point[0] + 1, child.end_point[0] + 1
        if decl.type == "function_declaration":
            units.append(Unit("function", _name(decl), tsast.text(child), start, end, jsdoc,
                              _signature(child, decl.child_by_field_name("body")),
                              support=_support(child, declarations)))
        elif decl.type == "lexical_declaration":
            for d in decl.named_children:
                value = d.child_by_field_name("value")
                if d.type == "variable_declarator" and value is not None and value.type in ("arrow_function", "function_expression"):
                    units.append(Unit("arrow_function", tsast.text(d.child_by_field_name("name")), tsast.text(child),
                                      start, end, jsdoc, _signature(child, value.child_by_field_name("body")),
                                      support=_support(child, declarations)))
        elif decl.type in ("class_declaration", "abstract_class_declaration"):
            class_name = _name(decl)
            class_support = _support(child, declarations)
            units.append(Unit("class", class_name, tsast.text(child), start, end, jsdoc,
                              _signature(decl, decl.child_by_field_name("body")), support=class_support))
            body = decl.child_by_field_name("body")
            for member in body.named_children if body is not None else []:
                if member.type == "method_definition":
                    units.append(Unit("method", _name(member), tsast.text(member), member.start_point[0] + 1,
                                      member.end_point[0] + 1, _jsdoc_before(member),
                                      _signature(member, member.child_by_field_name("body")), class_name,
                                      # A method compiles inside its class: the class is its context.
                                      support=[tsast.text(child)] + class_support, nodes=imports + [member]))
        elif decl.type == "expression_statement":
            for path, case in _test_cases(child, []):
                units.append(_test_case_unit(path, case, declarations, imports))
    for u in units:
        if not u.nodes:
            u.nodes = imports + [next(c for c in root.children if c.start_point[0] + 1 == u.start_line)]
        u.imports = [tsast.text(i) for i in imports]
    return units


# ---------------------------------------------------------------- test cases

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


def _test_cases(stmt: Node, path: list[tuple[Node, Node]]) -> Iterable[tuple[list[tuple[Node, Node]], Node]]:
    """Each it/test statement under `stmt` with its describe path [(describe statement, body)].

    A loop that declares test cases (`for (const c of cases) it(...)`) is one test case: the loop
    is what makes its cases.
    """
    called = _test_call(stmt)
    if called is None:
        if stmt.type in ("for_statement", "for_in_statement") and _count_test_cases(stmt):
            yield path, stmt
        return
    name, call = called
    if name in _TEST_CASES:
        yield path, stmt
    elif name == "describe" and (body := _callback_body(call)) is not None:
        for s in body.named_children:
            yield from _test_cases(s, path + [(stmt, body)])


def _indent(node: Node) -> str:
    return " " * node.start_point[1]  # the statement's column (indentation is re-made with spaces)


def _test_case_unit(path: list[tuple[Node, Node]], case: Node, declarations: dict[str, Node],
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


def _count_test_cases(root: Node) -> int:
    return sum(1 for n in tsast.walk(root) if n.type == "expression_statement"
               and (_test_call(n) or ("",))[0] in _TEST_CASES)


# ---------------------------------------------------------------- tutorial blocks

def _marker(comment: str, markers: Sequence[str]) -> bool:
    low = comment.lower()
    return any(m in low for m in markers)


def units_of_block(block: CodeBlock, root: Node, earlier: dict[str, str], earlier_imports: list[str],
                   counter_markers: Sequence[str], corrected_markers: Sequence[str],
                   earlier_imported: set[str] = frozenset(), api: Mapping[str, str] | None = None) -> list[Unit]:
    """A self-contained block as one unit, or its marked counter-example/corrected parts.

    A tutorial reads like a notebook: a block may use what earlier blocks on the same page
    declared or imported (`earlier`, `earlier_imported`); it carries those as support and
    imports. A name the corpus's own @qi packages export (`api`: name -> module) that the page
    never imports is imported from its package, as the block's reader would. Statements that
    declare nothing, import nothing and use nothing from the page or the packages are a
    fragment: completing them would mean inventing code, so they yield no unit. A block of
    imports alone is a unit: it shows which names come from which @qi module.
    """
    api = api or {}
    children = root.children
    imports = [c for c in children if c.type == "import_statement"]
    roles: list[tuple[str, list[Node]]] = []  # (role, statements), in order
    role = ""
    for c in children:
        if c.type == "comment":
            t = tsast.text(c)
            if _marker(t, counter_markers):
                role = "counter_example"
                roles.append((role, []))
            elif _marker(t, corrected_markers):
                role = "corrected"
                roles.append((role, []))
            continue
        if c.type == "import_statement":
            continue
        if not roles:
            roles.append(("", []))
        roles[-1][1].append(c)
    # A block whose heading or prose says "anti-pattern" and which breaks a rule on the AST is a
    # counter-example as a whole, even without a marker comment.
    if len(roles) == 1 and roles[0][0] == "" and _marker(" ".join(block.headings[-1:]) + " " + block.prose, counter_markers) \
            and patterns.analyze(block.code).anti_patterns:
        roles = [("counter_example", roles[0][1])]

    import_text = "\n".join(tsast.text(i) for i in imports)
    # In a marked block, what comes before the first marker (shared types, helpers) is context
    # for both halves rather than a unit of its own.
    preamble: list[str] = []
    if len(roles) > 1 and roles[0][0] == "":
        preamble = [tsast.text(s) for s in roles.pop(0)[1]]
    units = []
    for role, stmts in roles:
        stmts = [s for s in stmts if s.type != "empty_statement"]
        if not stmts:
            continue
        used = set()
        for s in stmts:
            used |= tsast.referenced_names(s)
        if not any(s.type in tsast.DECLARATIONS or s.type == "export_statement" for s in stmts) and not imports \
                and not used & (set(earlier) | set(earlier_imported) | set(api)):
            continue  # a fragment: statements only, nothing declared or imported, nothing from the page
        body = block.code.encode("utf-8")[stmts[0].start_byte: stmts[-1].end_byte].decode("utf-8")
        code = (import_text + "\n\n" + body) if import_text and role != "counter_example" else body
        # The imports it compiles with: its own block's when the code leaves them out, else
        # (for a block without imports) those of the blocks above it in the same tutorial.
        unit_imports = ([tsast.text(i) for i in imports] if code == body else []) if imports else list(earlier_imports)
        bound_here = {n for s in stmts for n in tsast.declared_names(s)} | _import_names(imports)
        # The earlier blocks' declarations it uses, and those they use in turn (a type that names
        # QiError needs QiError too), in page order.
        # A name the unit declares, its preamble declares or an import binds is not taken from
        # an earlier block (the page's own sketch of `type Result` never shadows the real one).
        not_taken = bound_here | set(earlier_imported) | {n for p in preamble for n in _declared_in(p)}
        needed = used.union(*(_names_in(p) for p in preamble))
        picked: set[str] = set()
        while new := {src for name, src in earlier.items()
                      if name in needed and name not in not_taken and src not in picked}:
            picked |= new
            needed = needed.union(*(_names_in(src) for src in new))
        support = preamble + [src for src in dict.fromkeys(earlier.values()) if src in picked]
        provided = bound_here | set(earlier) | (set() if imports else set(earlier_imported))
        if imports:  # its own imports replace the page's: keep those of the page's its support needs
            page_imports, bound_now = _imports_of(needed - provided, earlier_imports)
            unit_imports += page_imports
            provided |= bound_now
        unit_imports += _api_imports(sorted(needed - provided), api)
        names = [n for s in stmts for n in tsast.declared_names(s)]
        units.append(Unit("block", names[0] if names else "", code, block.first_line + stmts[0].start_point[0],
                          block.first_line + stmts[-1].end_point[0], role=role, support=list(dict.fromkeys(support)),
                          nodes=imports + stmts, imports=unit_imports))
    if not roles and imports:
        units.append(Unit("block", "", import_text, block.first_line + imports[0].start_point[0],
                          block.first_line + imports[-1].end_point[0], nodes=list(imports)))
    return units


@lru_cache(maxsize=4096)
def _names_in(src: str) -> frozenset[str]:
    """The names a declaration's source uses (referenced_names of its parse)."""
    return frozenset(tsast.referenced_names(tsast.parse(src).root_node))


@lru_cache(maxsize=4096)
def _declared_in(src: str) -> frozenset[str]:
    return frozenset(n for c in tsast.parse(src).root_node.children for n in tsast.declared_names(c))


def _imports_of(names: set[str], statements: Sequence[str]) -> tuple[list[str], set[str]]:
    """Of the page's import statements (as _merge_import keeps them), those binding `names`, each
    cut down to those names (a named import) or whole when all it binds is wanted; and the names
    they bind."""
    out, bound_now = [], set()
    for statement in statements:
        node = tsast.parse(statement).root_node.children[0]
        specs = [n for n in tsast.walk(node) if n.type == "import_specifier"]
        bound = _bound_by(node)
        if statement.startswith("import { ") and len(specs) == len(bound) and bound & names:
            wanted = [tsast.text(n) for n in specs if tsast.text(n).split()[-1] in names]
            out.append(f"import {{ {', '.join(wanted)} }} from {tsast.text(node.child_by_field_name('source'))};")
            bound_now |= bound & names
        elif bound and bound <= names:
            out.append(statement)
            bound_now |= bound
    return out, bound_now


def _api_imports(names: Sequence[str], api: Mapping[str, str]) -> list[str]:
    """`import { a, b } from "@qi/x";` for the names the packages export, one statement per module."""
    by_module: dict[str, list[str]] = {}
    for name in names:
        if name in api:
            by_module.setdefault(api[name], []).append(name)
    return [f"import {{ {', '.join(ns)} }} from \"{m}\";" for m, ns in sorted(by_module.items())]


def package_exports(files: Iterable[tuple[SourceFile, Node]], layout: Layout) -> dict[str, str]:
    """Names the @qi packages' sources export at top level -> the package's module name."""
    module_of = {folder: name for name, folder in layout.packages.items()}
    api: dict[str, str] = {}
    for f, root in files:
        folder = next((d for d in layout.package_dirs if f.rel.startswith(d + "/")), None)
        if f.kind != "implementation" or folder is None:
            continue
        module = module_of.get(folder) or "@qi/" + PurePosixPath(folder.removesuffix("/src")).name
        for child in root.children:
            if child.type == "export_statement":
                for name in tsast.declared_names(child):
                    api.setdefault(name, module)
    return api


def _bound_by(stmt: Node) -> set[str]:
    """Every name an import statement binds: named, default and namespace imports."""
    return _import_names([stmt]) | {tsast.text(n) for n in tsast.walk(stmt) if n.type == "identifier"
                                    and n.parent.type in ("import_clause", "namespace_import")}


def _import_names(imports: Sequence[Node]) -> set[str]:
    return {tsast.text(n.child_by_field_name("alias") or n.child_by_field_name("name"))
            for i in imports for n in tsast.walk(i) if n.type == "import_specifier"}


def _merge_import(imports: list[str], stmt: Node) -> None:
    """Add an import statement to a list, merging named imports of a module already there.

    Two blocks importing `success` from '@qi/base' must not give one snippet two `success`; a name
    imported again from another module is bound to the later one (a page showing an old package
    name, then the new one), as a notebook's later cell rebinds it.
    """
    source = tsast.text(stmt.child_by_field_name("source"))
    specs = [tsast.text(n) for n in tsast.walk(stmt) if n.type == "import_specifier"]
    whole = tsast.text(stmt)
    clause = next((c for c in stmt.named_children if c.type == "import_clause"), None)
    only_named = clause is not None and all(c.type == "named_imports" for c in clause.named_children)
    if not specs or not only_named or whole.startswith("import type"):
        if whole not in imports:
            imports.append(whole)
        return
    prefix = "import { "
    rebound = {sp.split()[-1] for sp in specs}
    for i, existing in enumerate(imports):
        if existing.startswith(prefix) and " } from " in existing and not existing.endswith(f" }} from {source};"):
            have, _, module = existing[len(prefix):].rpartition(" } from ")
            kept = [h for h in have.split(", ") if h.split()[-1] not in rebound]
            imports[i] = f"{prefix}{', '.join(kept)} }} from {module}" if kept else ""
    imports[:] = [i for i in imports if i]
    for i, existing in enumerate(imports):
        if existing.startswith(prefix) and existing.endswith(f" }} from {source};"):
            have = existing[len(prefix):-len(f" }} from {source};")].split(", ")
            names = {h.split()[-1] for h in have}
            have += [sp for sp in specs if sp.split()[-1] not in names]
            imports[i] = f"{prefix}{', '.join(have)} }} from {source};"
            return
    imports.append(f"{prefix}{', '.join(dict.fromkeys(specs))} }} from {source};")


# ---------------------------------------------------------------- the corpus

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
                        _merge_import(earlier_imports, c)
                        earlier_imported |= _bound_by(c)
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
            report.test_cases += _count_test_cases(tree_root)
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
