"""Tutorial blocks as records: a fenced block read like a notebook cell (what earlier blocks of the
page declared or imported it may use), and the tutorials' own markers ("// Instead of this",
"// ❌ Anti-pattern", then "// ✅ Use ...") cutting a block into a counter-example and its
corrected version, linked to each other.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import PurePosixPath
from typing import Iterable, Mapping, Sequence

from tree_sitter import Node

from qi_expert.data.corpus import (
    CodeBlock,
    Layout,
    SourceFile,
)
from qi_expert.data.units import Unit
from qi_expert.typescript import patterns, tsast

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
        bound = bound_by(node)
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


def bound_by(stmt: Node) -> set[str]:
    """Every name an import statement binds: named, default and namespace imports."""
    return _import_names([stmt]) | {tsast.text(n) for n in tsast.walk(stmt) if n.type == "identifier"
                                    and n.parent.type in ("import_clause", "namespace_import")}


def _import_names(imports: Sequence[Node]) -> set[str]:
    return {tsast.text(n.child_by_field_name("alias") or n.child_by_field_name("name"))
            for i in imports for n in tsast.walk(i) if n.type == "import_specifier"}


def merge_import(imports: list[str], stmt: Node) -> None:
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
