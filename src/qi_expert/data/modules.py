"""A training answer as a TypeScript module that compiles on its own.

The eval asks for a complete module (instruction + exported signature -> code that compiles as a
file of its own against @qi/base and @qi/core), so every training answer has that shape too:

- the imports it needs, values and types, pruned to the names it uses; a relative import of a
  declaration the corpus's @qi packages export (`import { create } from "./error"` inside
  lib/base/src) becomes an import from that package (`from "@qi/base"`), as its users write it;
- the declarations it depends on, before it: those of its own file (the record's `support`, pruned
  to what it uses) and those it imports from other corpus files (an app's `./types`), followed
  through their own relative imports and inlined;
- a method inside its class: the class with its fields, constructor and the methods the kept
  members call through `this` (or the class name), the other methods left out; a class that
  extends another is kept whole, one that implements interfaces loses the `implements` clause.

A relative import that leads to no corpus file stays as written: the module fails the
stand-alone compile check in validate and is left out, counted as `local_import`.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Mapping, Sequence

from qi_expert.typescript import tsast


def qi_export_files(exports: Mapping[str, Sequence[Mapping]]) -> dict[tuple[str, str], str]:
    """{(declaring file, name): module} from typecheck.module_exports; the first module listed wins."""
    owner: dict[tuple[str, str], str] = {}
    for module, names in exports.items():
        for entry in names or []:
            owner.setdefault((entry["file"], entry["name"]), module)
    return owner


def _specifiers(statement: str) -> tuple[str, list[tuple[str, str, bool]], list[str], bool]:
    """(source, [(imported name, local name, type-only)], [default/namespace locals], statement is `import type`)."""
    root = tsast.parse(statement).root_node
    stmt = next((c for c in root.children if c.type == "import_statement"), None)
    source = tsast.text(stmt.child_by_field_name("source")).strip("'\"`") if stmt is not None else ""
    specs, others = [], []
    type_only = statement.lstrip().startswith("import type")
    for n in tsast.walk(root):
        if n.type == "import_specifier":
            name = tsast.text(n.child_by_field_name("name"))
            alias = n.child_by_field_name("alias")
            spec_type = any(c.type == "type" for c in n.children) or tsast.text(n).startswith("type ")
            specs.append((name, tsast.text(alias) if alias is not None else name, spec_type))
        elif n.type in ("namespace_import", "import_clause"):
            others += [tsast.text(i) for i in n.named_children if i.type == "identifier"]
    return source, specs, others, type_only


def _specifier_text(name: str, local: str, type_only: bool) -> str:
    return ("type " if type_only else "") + (name if name == local else f"{name} as {local}")


class CorpusFiles:
    """The corpus's .ts files, parsed when first asked for: declarations, imports, relative paths."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._files: dict[str, tuple[dict, list[str]] | None] = {}

    def _load(self, rel: str) -> tuple[dict, list[str]] | None:
        if rel not in self._files:
            path = self.root / rel
            if rel.endswith(".ts") and path.is_file():
                root = tsast.parse(path.read_bytes()).root_node
                self._files[rel] = (tsast.file_declarations(root),
                                    [tsast.text(c) for c in root.children if c.type == "import_statement"])
            else:
                self._files[rel] = None
        return self._files[rel]

    def declarations(self, rel: str) -> dict:
        loaded = self._load(rel)
        return loaded[0] if loaded else {}

    def imports(self, rel: str) -> list[str]:
        loaded = self._load(rel)
        return loaded[1] if loaded else []

    def resolve(self, rel: str, source: str) -> str | None:
        """The corpus file a relative import in `rel` names (`./x`, `./x.js` (ES modules), `./x/index`)."""
        if not rel.endswith(".ts"):
            return None
        base = posixpath.normpath(posixpath.join(posixpath.dirname(rel), source))
        stem = base[:-3] if base.endswith((".js", ".ts")) else base
        for candidate in (stem + ".ts", stem + "/index.ts"):
            if self._load(candidate) is not None:
                return candidate
        return None


def _split_imports(code: str) -> tuple[list[str], str]:
    """(top-level import statements, the rest) of a piece of code."""
    root = tsast.parse(code).root_node
    data = code.encode("utf-8")
    statements = [c for c in root.children if c.type == "import_statement"]
    if not statements:
        return [], code
    rest, at = bytearray(), 0
    for st in statements:
        rest += data[at:st.start_byte]
        at = st.end_byte
    rest += data[at:]
    return [tsast.text(s) for s in statements], re.sub(r"^\s*\n", "", rest.decode("utf-8"))


def _gather(body: str, file: str, imports: Sequence[str], files: CorpusFiles | None,
            qi_files: Mapping[tuple[str, str], str]) -> tuple[list[str], list[str]]:
    """(import lines, declarations inlined from other corpus files) that `body`, written in `file`, needs.

    Imports are pruned to the names used. A relative import becomes an import from the @qi package
    that exports that very declaration (same file, same name); else the imported declaration and
    what it depends on (in its file and through its own relative imports) are inlined; a relative
    import that leads nowhere is kept as written (and fails the stand-alone compile).
    """
    root = tsast.parse(body).root_node
    declared = {n for c in root.children for n in tsast.declared_names(c)}
    by_module: dict[str, list[str]] = {}
    whole: list[str] = []
    groups: list[list[str]] = []
    seen: set[tuple[str, str]] = set()
    todo = [(file, list(imports), tsast.referenced_names(root))]
    while todo:
        here, statements, used = todo.pop(0)
        for statement in statements:
            source, specs, others, type_only = _specifiers(statement)
            if not specs and not others:
                continue  # a side-effect import (`import "./polyfill"`) brings no names
            if any(local in used and local not in declared for local in others):
                whole.append(" ".join(statement.split()))  # default / namespace import: kept as written
            for name, local, spec_type in specs:
                if local not in used or local in declared:
                    continue
                module = source
                target = files.resolve(here, source) if files is not None and source.startswith(".") else None
                if target is not None and (target, name) in qi_files:
                    module = qi_files[(target, name)]  # the library's own relative import, as its users write it
                elif target is not None and name == local and name in files.declarations(target):
                    decls = files.declarations(target)
                    nodes = [n for n in tsast.dependencies(decls[name], decls) + [decls[name]]
                             if (target, tsast.text(n)) not in seen]
                    if nodes:
                        seen.update((target, tsast.text(n)) for n in nodes)
                        declared |= {n for node in nodes for n in tsast.declared_names(node)}
                        groups.append([tsast.text(n) for n in nodes])
                        todo.append((target, files.imports(target), set().union(*map(tsast.referenced_names, nodes))))
                    continue
                by_module.setdefault(module, []).append(_specifier_text(name, local, type_only or spec_type))
    lines = list(dict.fromkeys(whole))
    for module, names in by_module.items():
        lines.append(f"import {{ {', '.join(dict.fromkeys(names))} }} from \"{module}\";")
    # Deeper files first: what an inlined declaration uses comes before it.
    inlined = [text for group in reversed(groups) for text in group]
    return lines, inlined




def class_with_method(class_text: str, method: str) -> str:
    """The class with `method`, its fields, constructor and the methods kept members call; no others.

    A class that extends another is kept whole (`super` and the inherited members tie its methods
    together); one that implements interfaces loses its `implements` clause along with the methods
    left out, which the interface may require.
    """
    root = tsast.parse(class_text).root_node
    decl = next((n for n in tsast.walk(root) if n.type in ("class_declaration", "abstract_class_declaration")), None)
    if decl is None:
        return class_text
    heritage = next((c for c in decl.children if c.type == "class_heritage"), None)
    if heritage is not None and any(c.type == "extends_clause" for c in heritage.children):
        return class_text
    body = decl.child_by_field_name("body")
    members = list(body.named_children)
    methods = {tsast.text(m.child_by_field_name("name")): m for m in members if m.type == "method_definition"}
    if method not in methods:
        return class_text
    keep = {id(m) for m in members if m.type != "method_definition" and m.type != "comment"}
    keep |= {id(methods[method])} | ({id(methods["constructor"])} if "constructor" in methods else set())
    # Members are reached through `this.` and, static ones, through the class's own name.
    member_ref = re.compile(rf"\b(?:this|{re.escape(tsast.text(decl.child_by_field_name('name')))})\.(#?\w+)")
    todo = [m for m in members if id(m) in keep]
    while todo:
        for name in member_ref.findall(tsast.text(todo.pop())):
            m = methods.get(name)
            if m is not None and id(m) not in keep:
                keep.add(id(m))
                todo.append(m)
    # Drop each left-out method with the comments just before it, whole lines at a time.
    data = class_text.encode("utf-8")
    cuts = []
    if heritage is not None and len(keep) < len([m for m in members if m.type != "comment"]):
        cuts.append((heritage.start_byte - 1, heritage.end_byte))  # " implements X, Y"
    for i, m in enumerate(members):
        if m.type != "method_definition" or id(m) in keep:
            continue
        start = m.start_byte
        j = i - 1
        while j >= 0 and members[j].type == "comment" and members[j].end_point[0] >= members[j + 1].start_point[0] - 1:
            start = members[j].start_byte
            j -= 1
        start = data.rfind(b"\n", 0, start) + 1
        end = data.find(b"\n", m.end_byte)
        cuts.append((start, len(data) if end < 0 else end + 1))
    out = bytearray()
    at = 0
    for start, end in cuts:
        out += data[at:start]
        at = end
    out += data[at:]
    return re.sub(r"\n{3,}", "\n\n", out.decode("utf-8"))


_BINDINGS = """
[(required_parameter pattern: (identifier) @b)
 (optional_parameter pattern: (identifier) @b)
 (variable_declarator name: (identifier) @b)]
"""


def _needed(support: Sequence[str], unit: str) -> list[str]:
    """The support declarations `unit` uses, directly or through each other, in their order.

    A tutorial block's support also holds the statements before its first marker and earlier
    blocks' declarations; only those declaring a name it uses (and not declaring it again) stay.
    """
    declared_by = [set(n for c in tsast.parse(s).root_node.children for n in tsast.declared_names(c)) for s in support]
    root = tsast.parse(unit).root_node
    own = {n for c in root.children for n in tsast.declared_names(c)}
    # Names the unit binds itself (parameters, locals) shadow the support's: `cache` the parameter
    # does not need `const cache = ...` of the block above.
    bound = {tsast.text(n) for n in tsast.captures(root, _BINDINGS).get("b", [])}
    used = tsast.referenced_names(root) - own - bound
    keep: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, names in enumerate(declared_by):
            if i not in keep and names & used and not names & own:
                keep.add(i)
                used |= tsast.referenced_names(tsast.parse(support[i]).root_node) - own
                changed = True
    return [s.strip() for i, s in enumerate(support) if i in keep]


_TYPE_DECLARATIONS = frozenset({"interface_declaration", "type_alias_declaration"})


def _exported_by_package(support: Sequence[str], file: str,
                         qi_files: Mapping[tuple[str, str], str]) -> tuple[list[str], list[str]]:
    """(support left to inline, import lines for the rest): a declaration of the @qi packages' own
    source that the package exports is imported from it, as its users write it, not declared again.

    Without this, every answer cut from lib/base/src declared `type Result<T, E = QiError> = ...`
    itself, and a model trained on them wrote its own Result type instead of importing it.
    """
    kept, lines = [], []
    for text in support:
        stmt = next((c for c in tsast.parse(text).root_node.children if c.type != "comment"), None)
        names = tsast.declared_names(stmt) if stmt is not None else []
        modules_ = {qi_files.get((file, n)) for n in names}
        if not names or None in modules_ or len(modules_) != 1:
            kept.append(text)
            continue
        decl = stmt.child_by_field_name("declaration") if stmt.type == "export_statement" else stmt
        type_only = decl is not None and decl.type in _TYPE_DECLARATIONS
        lines.append(f"import {{ {', '.join(('type ' if type_only else '') + n for n in names)} }} from \"{modules_.pop()}\";")
    return kept, lines


def standalone(rec: Mapping, files: CorpusFiles | None = None,
               qi_files: Mapping[tuple[str, str], str] | None = None) -> str:
    """The record as a module of its own: the imports it needs, the declarations it depends on, the unit.

    `files` (the corpus) lets relative imports be followed; `qi_files` ({(file, name): module}, from
    `qi_export_files`) turns the @qi packages' own relative imports into package imports.
    """
    own_imports, code = _split_imports(rec["code"].strip() + "\n")
    support = list(rec.get("support", []))
    if rec["unit"] == "method" and support:
        unit, support = class_with_method(support[0], rec["name"]), support[1:]
    else:
        unit = code.strip()
    support, package_imports = _exported_by_package(support, rec["source_file"], qi_files or {})
    own_imports += package_imports
    parts = _needed(support, unit) + [unit]
    body = "\n\n".join(p.strip() for p in parts) + "\n"
    lines, inlined = _gather(body, rec["source_file"], own_imports + list(rec.get("imports", [])), files,
                             qi_files or {})
    module = "\n\n".join(inlined + [body.strip()]) + "\n"
    return ("\n".join(lines) + "\n\n" + module) if lines else module


def swap_unit(module: str, old: str, new: str, new_module: str) -> str | None:
    """`module` with the unit `old` written as `new` (a variant of it), plus the imports of
    `new_module` (the variant's own module) that `module` does not bind yet; None when `old` is not
    in `module` word for word. Used to run a corpus test case against a variant of what it tests."""
    statements, rest = _split_imports(module)
    if not old.strip() or old.strip() not in rest:
        return None
    rest = rest.replace(old.strip(), new.strip(), 1)
    bound: set[str] = set()
    for st in statements:
        _, specs, others, _ = _specifiers(st)
        bound |= {local for _, local, _ in specs} | set(others)
    added = []
    for st in _split_imports(new_module)[0]:
        source, specs, others, type_only = _specifiers(st)
        if others:  # a default or namespace import: the whole statement, unless its names are bound
            if not set(others) <= bound:
                added.append(st)
                bound |= set(others) | {local for _, local, _ in specs}
            continue
        missing = [s for s in specs if s[1] not in bound]
        if missing:
            names = ", ".join(_specifier_text(*s) for s in missing)
            added.append(f'import {"type " if type_only else ""}{{ {names} }} from "{source}";')
            bound |= {local for _, local, _ in missing}
    return "\n".join(statements + added) + "\n\n" + rest.lstrip("\n")


def local_imports(module: str) -> list[str]:
    """Relative import sources left in a module: files a user asking for it does not have."""
    root = tsast.parse(module).root_node
    sources = [tsast.text(c.child_by_field_name("source")).strip("'\"`") for c in root.children
               if c.type == "import_statement" and c.child_by_field_name("source") is not None]
    return [src for src in sources if src.startswith(".")]


class AnswerBuilder:
    """`standalone` for one corpus: its files, parsed once, and its @qi packages' export list, asked
    of the compiler once (validate builds the corpus records' answers and the variants' with it)."""

    def __init__(self, project: Path, exports: Mapping[str, Sequence[Mapping]]):
        self.files = CorpusFiles(project)
        self.exports = exports
        self.qi_files = qi_export_files(exports)

    def __call__(self, rec: Mapping) -> str:
        return standalone(rec, self.files, self.qi_files)
