"""Does a completion follow the task's @qi rules, read by BINDING on the AST; and does it tamper?

Compliance (tree-sitter, no regular expressions over code):
- a required call counts only when the callee resolves to a @qi import: `success(...)` where
  `success` is imported from a @qi package (under any alias) and not redeclared, `qi.success(...)`
  through `import * as qi from "@qi/base"`. A local `const success = ...` is not @qi's success;
- a method name (logger.info, cache.get, config.get) counts only on a @qi receiver: an object
  whose expression mentions a @qi binding, or a name bound to one (a variable initialised from a
  @qi call or another receiver, a parameter typed with a @qi type or with a type of the file built
  from them, a callback parameter of a call to @qi); `console.info(...)` and `new Map().get(...)`
  are not;
- forbidden constructs come from patterns.analyze, except that a try/catch is exempt only inside a
  function handed to a @qi wrapper (`fromTryCatch(() => { try ... })`, by binding), not inside
  any function that happens to be named like one; `new Promise((_, reject) => reject(e))` is a
  promise_reject like `Promise.reject(e)`.

Tampering: constructs a solution has no business with, which only make sense as an attack on
the harness or on other completions (process exit paths and bindings, node:assert, child
processes, sockets, DNS, the file system, workers, the V8 inspector, dynamic code, mutation of
globals or built-in prototypes, ambient `declare global` / `declare module` that would change how
other completions type-check, `@ts-nocheck`/`@ts-ignore` that fake a compile verdict). Found anywhere, the completion is not compliant and its test
does not count as passed, whatever the sandbox reports.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from tree_sitter import Node

from qi_expert.typescript import patterns, tsast

# @qi/base's free functions: `arr.map(f)` is not @qi's map, so these count only as bound calls.
FUNCTION_STYLE = patterns.COMPOSERS | patterns.RESULT_CREATORS | patterns.ERROR_HANDLERS | patterns.ASYNC_RESULT
FUNCTIONS = frozenset({"function_declaration", "function_expression", "arrow_function", "function",
                       "generator_function_declaration", "method_definition"})

TAMPER_MODULES = frozenset({"assert", "child_process", "cluster", "worker_threads", "net", "dgram", "dns", "http",
                            "https", "http2", "tls", "fs", "inspector", "v8", "vm", "module", "repl", "process",
                            "trace_events", "wasi", "async_hooks", "perf_hooks"})
PROCESS_ALLOWED = frozenset({"env"})  # reading configuration from the environment is ordinary code
GLOBAL_OBJECTS = frozenset({"globalThis", "global", "window", "self"})
BUILTINS = frozenset({"Object", "Array", "Promise", "Function", "String", "Number", "Boolean", "Symbol", "Error",
                      "Map", "Set", "WeakMap", "JSON", "Math", "Reflect", "Proxy", "Date", "RegExp", "console",
                      "require", "module", "exports", "Module"})
MUTATORS = frozenset({"defineProperty", "defineProperties", "assign", "setPrototypeOf", "__defineGetter__",
                      "__defineSetter__"})


# --- bindings ---------------------------------------------------------------------------------

class Bindings:
    """What the names of one completion are bound to: @qi imports, @qi namespaces, @qi receivers."""

    def __init__(self, root: Node):
        self.root = root
        imported, namespaces = patterns.qi_bindings(root)
        self.qi: dict[str, str] = {local: name for local, (_, name) in imported.items()}  # local -> @qi name
        self.namespaces: set[str] = set(namespaces)
        self.declared: set[str] = set()  # declared in the file (shadows a same-named import's absence)
        for n in tsast.walk(root):
            if n.type in ("function_declaration", "class_declaration", "variable_declarator"):
                name = n.child_by_field_name("name")
                if name is not None and name.type == "identifier" and tsast.text(name) not in self.qi:
                    self.declared.add(tsast.text(name))
        self.receivers = self._receivers()

    def is_qi(self, name: str) -> bool:
        return name in self.qi or name in self.namespaces

    def mentions_qi(self, node: Node | None, extra: set[str] | None = None) -> bool:
        """Does the expression use a @qi binding or a @qi receiver anywhere?"""
        if node is None:
            return False
        names = self.receivers if extra is None else extra
        return any(n.type in ("identifier", "type_identifier") and (self.is_qi(tsast.text(n)) or tsast.text(n) in names)
                   for n in tsast.walk(node))

    def _receivers(self) -> set[str]:
        found: set[str] = set()
        for _ in range(6):  # a fixpoint over a handful of hops is plenty for one module
            before = len(found)
            for n in tsast.walk(self.root):
                if n.type == "variable_declarator" and self.mentions_qi(n.child_by_field_name("value"), found):
                    found |= _pattern_names(n.child_by_field_name("name"))
                elif n.type in ("required_parameter", "optional_parameter", "public_field_definition"):
                    annotation = n.child_by_field_name("type")
                    target = n.child_by_field_name("pattern") or n.child_by_field_name("name")
                    if self.mentions_qi(annotation, found) or _is_qi_callback_param(self, n, found):
                        found |= _pattern_names(target)
                elif n.type in ("interface_declaration", "type_alias_declaration", "class_declaration"):
                    # A type of this file built from @qi types (deps: { logger: Logger }) makes its values receivers.
                    name = n.child_by_field_name("name")
                    body = n.child_by_field_name("body") or n.child_by_field_name("value")
                    if name is not None and self.mentions_qi(body, found):
                        found.add(tsast.text(name))
                elif n.type == "assignment_expression" and self.mentions_qi(n.child_by_field_name("right"), found):
                    left = n.child_by_field_name("left")
                    if left is not None:
                        found.add(tsast.text(left).rsplit(".", 1)[-1])
            if len(found) == before:
                break
        return found

    def callee(self, call: Node) -> str | None:
        """The @qi name a call (or `new`) invokes, or None when it is not @qi's."""
        fn = call.child_by_field_name("function") or call.child_by_field_name("constructor")
        if fn is None:
            return None
        if fn.type == "await_expression" and fn.named_children:  # tree-sitter's `await x.get<T>()` quirk
            fn = fn.named_children[0]
        if fn.type == "identifier":
            name = tsast.text(fn)
            return self.qi[name] if name in self.qi and name not in self.declared else None
        if fn.type == "member_expression":
            obj, prop = fn.child_by_field_name("object"), fn.child_by_field_name("property")
            if obj is None or prop is None:
                return None
            method = tsast.text(prop)
            if obj.type == "identifier" and tsast.text(obj) in self.namespaces:
                return method
            if method not in FUNCTION_STYLE and (self.mentions_qi(obj) or _last_segment(obj) in self.receivers):
                return method
        return None


def _last_segment(node: Node) -> str:
    return tsast.text(node).rsplit(".", 1)[-1]


def _pattern_names(node: Node | None) -> set[str]:
    if node is None:
        return set()
    if node.type in ("identifier", "shorthand_property_identifier_pattern"):
        return {tsast.text(node)}
    return {tsast.text(n) for n in tsast.walk(node)
            if n.type in ("identifier", "shorthand_property_identifier_pattern")
            and (n.parent is None or n.parent.type != "pair_pattern" or n == n.parent.child_by_field_name("value"))}


def _is_qi_callback_param(b: Bindings, param: Node, found: set[str]) -> bool:
    """A parameter of a function passed straight to a @qi call: match(r, (value) => ..., ...)."""
    fn = param.parent.parent if param.parent is not None else None  # formal_parameters -> function
    if fn is None or fn.type not in FUNCTIONS or fn.parent is None or fn.parent.type != "arguments":
        return False
    call = fn.parent.parent
    if call is None or call.type != "call_expression":
        return False
    callee = call.child_by_field_name("function")
    return b.mentions_qi(callee, found)


# --- forbidden constructs, with binding-aware exemptions ----------------------------------------------

def _in_qi_wrapper(node: Node, b: Bindings, allowed: set[str]) -> bool:
    """Is `node` inside a function handed to a @qi wrapper such as fromTryCatch (by binding)?"""
    p = node.parent
    while p is not None:
        if p.type in FUNCTIONS and p.parent is not None and p.parent.type == "arguments":
            call = p.parent.parent
            if call is not None and call.type == "call_expression" and b.callee(call) in allowed:
                return True
        p = p.parent
    return False


def _executor_rejects(root: Node) -> list[int]:
    """Lines of `new Promise((resolve, reject) => ... reject(x))`: a Promise.reject in disguise."""
    lines = []
    for n in tsast.walk(root):
        if n.type != "new_expression" or tsast.text(n.child_by_field_name("constructor")) != "Promise":
            continue
        args = n.child_by_field_name("arguments")
        fn = args.named_children[0] if args is not None and args.named_children else None
        params = fn.child_by_field_name("parameters") if fn is not None and fn.type in FUNCTIONS else None
        names = [p for p in (params.named_children if params is not None else []) if p.type in ("required_parameter", "optional_parameter")]
        if len(names) < 2:
            continue
        reject = tsast.text(names[1].child_by_field_name("pattern"))
        for c in tsast.walk(fn):
            if c.type == "call_expression" and tsast.text(c.child_by_field_name("function")) == reject:
                lines.append(c.start_point[0] + 1)
    return lines


def forbidden_constructs(code: str, root: Node, b: Bindings, try_catch_allowed_in: Iterable[str]) -> list[dict]:
    a = patterns.analyze(code, ())  # every try/catch is a finding here; exemptions come by binding
    allowed = set(try_catch_allowed_in)
    found = [f for f in a.anti_patterns if f["rule"] != "try_catch"]
    for n in tsast.walk(root):
        if n.type == "try_statement" and not _in_qi_wrapper(n, b, allowed):
            found.append({"rule": "try_catch", "line": n.start_point[0] + 1})
    found += [{"rule": "promise_reject", "line": line} for line in _executor_rejects(root)]
    return sorted(found, key=lambda f: (f["line"], f["rule"]))


# --- tampering ------------------------------------------------------------------------------------

def _module_name(spec: str) -> str:
    return spec.strip("'\"`").removeprefix("node:").split("/")[0]


def tampering(code: str, root: Node | None = None) -> list[dict]:
    """[{what, line}] for every construct that attacks the harness or other completions."""
    root = root if root is not None else tsast.parse(code).root_node
    out: list[dict] = []

    def hit(what: str, node: Node) -> None:
        out.append({"what": what, "line": node.start_point[0] + 1})

    for n in tsast.walk(root):
        t = n.type
        if t == "comment" and tsast.text(n).startswith("///") and "<reference" in tsast.text(n):
            hit("triple-slash reference directive", n)
        elif t == "comment" and any(d in tsast.text(n) for d in ("@ts-nocheck", "@ts-ignore", "@ts-expect-error")):
            hit("type check suppressed", n)  # a compile verdict it did not earn
        elif t == "import_statement":
            src = n.child_by_field_name("source")
            if src is not None and _module_name(tsast.text(src)) in TAMPER_MODULES:
                hit(f"import of {tsast.text(src).strip(chr(34) + chr(39))}", n)
        elif t == "call_expression":
            fn = n.child_by_field_name("function")
            name = tsast.text(fn)
            args = n.child_by_field_name("arguments")
            first = args.named_children[0] if args is not None and args.named_children else None
            if name in ("require", "import") or (fn is not None and fn.type == "import"):
                if first is None or first.type != "string" or _module_name(tsast.text(first)) in TAMPER_MODULES:
                    hit(f"require/import of {tsast.text(first) if first is not None else '?'}", n)
            elif name in ("eval", "Function"):
                hit(f"{name}()", n)
            elif fn is not None and fn.type == "member_expression":
                obj, prop = fn.child_by_field_name("object"), fn.child_by_field_name("property")
                if (tsast.text(obj) in ("Object", "Reflect") and tsast.text(prop) in MUTATORS and first is not None
                        and (tsast.text(first) in GLOBAL_OBJECTS | BUILTINS or ".prototype" in tsast.text(first)
                             or tsast.text(first).split(".")[0] in GLOBAL_OBJECTS)):
                    hit(f"{tsast.text(fn)}({tsast.text(first)})", n)
        elif t == "new_expression" and tsast.text(n.child_by_field_name("constructor")) == "Function":
            hit("new Function()", n)
        elif t in ("member_expression", "subscript_expression"):
            obj = n.child_by_field_name("object")
            prop = n.child_by_field_name("property") or n.child_by_field_name("index")
            if obj is not None and tsast.text(obj) == "process" and tsast.text(prop).strip("'\"`") not in PROCESS_ALLOWED:
                hit(f"process.{tsast.text(prop)}", n)
            elif obj is not None and tsast.text(obj) in ("require", "module") and tsast.text(prop) in ("cache", "constructor", "main", "parent"):
                hit(tsast.text(n), n)
        elif t in ("assignment_expression", "augmented_assignment_expression"):
            left = n.child_by_field_name("left")
            text = tsast.text(left)
            head = text.split(".")[0].split("[")[0]
            if left is not None and left.type in ("member_expression", "subscript_expression") and (
                    head in GLOBAL_OBJECTS or head in BUILTINS or ".prototype" in text or "__proto__" in text):
                hit(f"assignment to {text}", n)
        elif t == "ambient_declaration":
            body = tsast.text(n)
            if body.startswith("declare global") or body.startswith("declare module"):
                hit(body.split("{", 1)[0].strip(), n)
        elif t == "identifier" and tsast.text(n) in ("globalThis", "global") and n.parent is not None \
                and n.parent.type not in ("member_expression", "subscript_expression", "call_expression", "arguments"):
            hit(f"{tsast.text(n)} used as a value", n)
    return out


def affects_other_files(code: str) -> bool:
    """Would this code change how OTHER files type-check (global augmentation, module declarations)?"""
    return any(f["what"].startswith(("declare global", "declare module", "triple-slash")) for f in tampering(code))


# --- the verdict -----------------------------------------------------------------------------------

def compliance(code: str, task: Mapping, try_catch_allowed_in: Iterable[str] = patterns.DEFAULT_TRY_CATCH_ALLOWED,
               facts: Mapping | None = None, executed: Mapping[str, int] | None = None) -> dict:
    """Rules of the task: required @qi calls present, forbidden constructs absent, no tampering.

    With `facts` (the type checker's view of the code: typecheck.check(facts=...)), a required call
    counts only where the checker resolves its callee to a @qi declaration (shadowing, redeclared
    imports and aliases resolved by the compiler, not by name), and the checker's forbidden
    constructs (a generator's `throw`, `Promise.reject` through an alias, null cast into a Result,
    try/catch outside a @qi wrapper by symbol) join the AST's. Without them (code that did not
    reach the compiler), the binding rules on the AST alone.

    With `executed` ({@qi name: calls} the judge counted while the task's test ran:
    sandbox.Sandbox.run_isolated), a required call counts only if it also ran: a @qi call in a
    branch no input reaches does not count. Without it (a served answer, which has no test), the
    static rules alone.
    """
    root = tsast.parse(code).root_node
    b = Bindings(root)
    called: set[str] = set()
    findings = forbidden_constructs(code, root, b, try_catch_allowed_in)
    if facts is not None:
        called = {c["name"] for c in facts.get("qi_calls", [])}
        seen = {(f["rule"], f["line"]) for f in findings if f["rule"] != "try_catch"}
        findings = [f for f in findings if f["rule"] != "try_catch"]  # the checker decides wrappers by symbol
        for f in facts.get("forbidden", []):
            if (f["rule"], f["line"]) not in seen:
                seen.add((f["rule"], f["line"]))
                findings.append({"rule": f["rule"], "line": f["line"]})
        findings.sort(key=lambda f: (f["line"], f["rule"]))
    else:
        for n in tsast.walk(root):
            if n.type in ("call_expression", "new_expression"):
                name = b.callee(n)
                if name:
                    called.add(name)
    found = defaultdict(list)
    for f in findings:
        found[f["rule"]].append(f["line"])
    tampered = tampering(code, root)
    empty = not code.strip()
    rules = []
    for req in task.get("required_calls") or []:
        alternatives = [x.strip() for x in str(req).split("|") if x.strip()]
        ran = [x for x in alternatives if x in called and (executed is None or executed.get(x, 0) > 0)]
        rules.append({"rule": f"calls {req}", "kind": "required", "ok": not empty and bool(ran),
                      **({"written_not_run": True} if executed is not None and not ran and any(x in called for x in alternatives) else {})})
    for rule in task.get("forbidden") or []:
        rules.append({"rule": f"no {rule}", "kind": "forbidden", "ok": not empty and rule not in found,
                      "lines": found.get(rule, [])})
    satisfied = sum(r["ok"] for r in rules)
    score = 0.0 if empty else (satisfied / len(rules) if rules else 1.0)
    forbidden_found = sorted(r for r in (task.get("forbidden") or []) if r in found)
    if tampered:
        forbidden_found.append("tampering")
    return {"score": round(score, 4), "pass": (not empty) and satisfied == len(rules) and not tampered,
            "rules": rules, "forbidden_found": forbidden_found, "anti_patterns": findings,
            "tampering": tampered, "parse_ok": not root.has_error}
