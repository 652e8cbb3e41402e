"""What a piece of TypeScript does with @qi, read off the tree-sitter AST.

One analysis serves three stages: extract labels records with pattern types and complexity,
validate rejects anti-patterns, eval scores model output for compliance. Names are matched as
*calls* (or type references) in the tree, never as substrings of the text, so a comment or a
string that mentions `success(` counts for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from tree_sitter import Node

from qi_expert.typescript import tsast

PATTERN_TYPES = (
    "result_creation",
    "error_handling",
    "functional_composition",
    "config_management",
    "logger_integration",
    "cache_patterns",
    "factory_functions",
    "integration_patterns",
)
CATEGORIES = ("basic", "intermediate", "advanced", "expert")
ANTI_PATTERNS = ("throw", "try_catch", "promise_catch", "promise_reject", "return_null")

ERROR_HELPERS = frozenset(
    {"validationError", "networkError", "systemError", "businessError", "authenticationError",
     "authorizationError", "configurationError", "timeoutError", "resourceError",
     "concurrencyError", "loggerError", "configError", "cacheError"}
)
RESULT_CREATORS = frozenset({"success", "failure", "Ok", "Err", "fromMaybe", "fromEither"})
ERROR_HANDLERS = ERROR_HELPERS | {
    "create", "createError", "fromException", "fromString", "mapError", "orElse", "fromTryCatch",
    "tryCatch", "fromAsyncTryCatch", "withContext", "getRetryStrategy", "inspectErr", "isFailure",
    "getError",
}
COMPOSERS = frozenset(
    {"map", "flatMap", "andThen", "match", "mapError", "collect", "filter", "orElse", "inspect",
     "unwrapOr", "mapAsync", "flatMapAsync", "matchAsync", "mapPromise", "flatMapPromise",
     "matchPromise", "sequenceAsync", "collectAsync"}
)
CONFIG_NAMES = frozenset(
    {"ConfigBuilder", "Config", "ValidatedConfig", "fromObject", "fromEnv", "fromJsonFile",
     "fromYamlFile", "fromTomlFile", "validateConfig", "safeParseConfig", "configError", "ConfigError"}
)
LOGGER_NAMES = frozenset({"createLogger", "Logger", "createFromEnv", "createRequestLogger", "LoggerConfig", "LoggerError"})
LOG_METHODS = frozenset({"debug", "info", "warn", "error", "fatal", "child"})
CACHE_NAMES = frozenset(
    {"createCache", "createMemoryCache", "createRedisCache", "createPersistent", "MemoryCache",
     "RedisCache", "cacheAside", "ICache", "CacheConfig", "cacheError", "CacheError"}
)
CACHE_METHODS = frozenset({"get", "set", "has", "delete", "clear", "getOrSet"})
ASYNC_RESULT = frozenset({"fromAsyncTryCatch", "flatMapAsync", "mapAsync", "matchAsync", "sequenceAsync", "collectAsync", "flatMapPromise", "mapPromise", "matchPromise"})
FACTORY_PREFIXES = ("create", "make", "build", "new")

# One query collects everything an analysis needs; tree-sitter matches it in C.
_QUERY = """
(call_expression function: (identifier) @call)
(call_expression function: (member_expression)) @member_call
(new_expression constructor: (_) @new)
[(identifier) (type_identifier) (shorthand_property_identifier)] @name
[(if_statement) (ternary_expression) (for_statement) (for_in_statement) (while_statement)
 (do_statement) (switch_case) (catch_clause)] @branch
(binary_expression operator: ["&&" "||" "??"]) @branch
(throw_statement) @throw
(try_statement) @try
(return_statement) @return
"""


@dataclass
class Analysis:
    parse_ok: bool
    qi_imports: dict[str, list[str]] = field(default_factory=dict)  # module -> imported names
    calls: set[str] = field(default_factory=set)  # bare calls: success(...)
    member_calls: set[tuple[str, str]] = field(default_factory=set)  # obj.method(...)
    names: set[str] = field(default_factory=set)  # identifiers and type names referenced
    declared: list[str] = field(default_factory=list)  # top-level names this code declares
    anti_patterns: list[dict] = field(default_factory=list)  # {"rule", "line"}
    complexity: int = 1
    lines: int = 0

    def pattern_types(self) -> list[str]:
        return classify(self)

    def uses(self, name: str) -> bool:
        return name in self.calls or name in self.names


def _imports(nodes: Sequence[Node]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for node in nodes:
        if node.type != "import_statement":
            continue
        source = node.child_by_field_name("source")
        module = tsast.text(source).strip("'\"")
        if not module.startswith("@qi/"):
            continue
        names = out.setdefault(module, [])
        for n in tsast.walk(node):
            if n.type == "import_specifier":
                names.append(tsast.text(n.child_by_field_name("name")))
            elif n.type == "namespace_import":
                names.append("*")
    return out


def qi_bindings(root: Node) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """What a file's @qi imports bind: ({local name: (module, imported name)}, {namespace alias: module})."""
    names: dict[str, tuple[str, str]] = {}
    namespaces: dict[str, str] = {}
    for node in root.named_children:
        if node.type != "import_statement":
            continue
        module = tsast.text(node.child_by_field_name("source")).strip("'\"`")
        if not module.startswith("@qi/"):
            continue
        for n in tsast.walk(node):
            if n.type == "import_specifier":
                name = tsast.text(n.child_by_field_name("name"))
                alias = n.child_by_field_name("alias")
                names[tsast.text(alias) if alias is not None else name] = (module, name)
            elif n.type == "namespace_import":
                for c in n.named_children:
                    if c.type == "identifier":
                        namespaces[tsast.text(c)] = module
    return names, namespaces


def _declared(nodes: Sequence[Node]) -> list[str]:
    return [name for node in nodes for name in tsast.declared_names(node)]


def _returns_result(fn: Node) -> bool:
    """Is a Result due from this function: annotated so, or it returns success/failure elsewhere."""
    annotation = fn.child_by_field_name("return_type")
    if annotation is not None:
        return "Result" in tsast.text(annotation)
    return any(tsast.text(n) in RESULT_CREATORS for n in tsast.captures(fn, _QUERY).get("call", []))


def _line(n: Node) -> int:
    return n.start_point[0] + 1


def _anti_patterns(caps: dict[str, list[Node]], try_catch_allowed_in: Iterable[str]) -> list[dict]:
    allowed = set(try_catch_allowed_in)
    found = [{"rule": "throw", "line": _line(n)} for n in caps.get("throw", [])]
    for n in caps.get("try", []):
        fn = tsast.enclosing_function(n)
        # Wrappers such as fromTryCatch exist to hold the one try/catch and turn the exception
        # into a Result; anywhere else a try/catch hides an error path.
        if fn is None or tsast.function_name(fn) not in allowed:
            found.append({"rule": "try_catch", "line": _line(n)})
    for n in caps.get("member_call", []):
        obj, name = tsast.callee_name(n)
        if name == "catch":
            found.append({"rule": "promise_catch", "line": _line(n)})
        elif obj == "Promise" and name == "reject":
            found.append({"rule": "promise_reject", "line": _line(n)})
    for n in caps.get("return", []):
        value = n.named_children[0] if n.named_children else None
        if value is not None and (value.type in ("null", "undefined") or tsast.text(value) == "undefined"):
            fn = tsast.enclosing_function(n)
            if fn is not None and _returns_result(fn):
                found.append({"rule": "return_null", "line": _line(n)})
    return sorted(found, key=lambda f: (f["line"], f["rule"]))


DEFAULT_TRY_CATCH_ALLOWED = ("fromTryCatch", "fromAsyncTryCatch", "tryCatch")


def analyze(code: str, try_catch_allowed_in: Iterable[str] = DEFAULT_TRY_CATCH_ALLOWED) -> Analysis:
    """Analyse a piece of TypeScript source."""
    root = tsast.parse(code).root_node
    return analyze_nodes(root.children, try_catch_allowed_in, parse_ok=not root.has_error)


def analyze_nodes(nodes: Sequence[Node], try_catch_allowed_in: Iterable[str] = DEFAULT_TRY_CATCH_ALLOWED,
                  parse_ok: bool = True) -> Analysis:
    """Analyse top-level nodes of an already parsed tree (imports first, then the unit)."""
    a = Analysis(parse_ok=parse_ok)
    a.qi_imports = _imports(nodes)
    a.declared = _declared(nodes)
    caps: dict[str, list[Node]] = {}
    for node in nodes:
        if node.type == "import_statement":
            continue
        a.lines += node.end_point[0] - node.start_point[0] + 1
        for name, found in tsast.captures(node, _QUERY).items():
            caps.setdefault(name, []).extend(found)
    a.calls = {tsast.text(n) for n in caps.get("call", [])} | {tsast.text(n) for n in caps.get("new", [])}
    for n in caps.get("member_call", []):
        obj, name = tsast.callee_name(n)
        a.member_calls.add((obj.rsplit(".", 1)[-1], name))
    a.names = {tsast.text(n) for n in caps.get("name", [])}
    # Keep the @qi imports this code uses (a file's units share its imports).
    used = a.names | a.calls
    a.qi_imports = {m: [n for n in names if n in used or n == "*"] for m, names in a.qi_imports.items()}
    a.qi_imports = {m: names for m, names in a.qi_imports.items() if names}
    a.complexity = 1 + len(caps.get("branch", []))
    a.anti_patterns = _anti_patterns(caps, try_catch_allowed_in)
    return a


def _is_logger(obj: str) -> bool:
    return "log" in obj.lower()


def _is_cache(obj: str) -> bool:
    return "cache" in obj.lower()


def _is_factory_name(name: str) -> bool:
    """createPrice, makeCache, buildConfig: a prefix followed by a capitalised noun."""
    return any(name.startswith(p) and name[len(p):][:1].isupper() for p in FACTORY_PREFIXES)


def classify(a: Analysis) -> list[str]:
    """Multi-label pattern types, from calls and names on the AST."""
    found = set()
    refs = a.calls | a.names
    if a.calls & RESULT_CREATORS:
        found.add("result_creation")
    if a.calls & ERROR_HANDLERS:
        found.add("error_handling")
    if a.calls & COMPOSERS:
        found.add("functional_composition")
    if refs & CONFIG_NAMES or "@qi/core/config" in a.qi_imports:
        found.add("config_management")
    if refs & LOGGER_NAMES or any(_is_logger(o) and m in LOG_METHODS for o, m in a.member_calls):
        found.add("logger_integration")
    if refs & CACHE_NAMES or any(_is_cache(o) and m in CACHE_METHODS for o, m in a.member_calls):
        found.add("cache_patterns")
    if any(_is_factory_name(d) for d in a.declared) and found & {"result_creation", "error_handling"}:
        found.add("factory_functions")
    base_side = found & {"result_creation", "error_handling", "functional_composition"}
    core_side = found & {"config_management", "logger_integration", "cache_patterns"}
    if (base_side and core_side) or len(core_side) >= 2 or a.calls & ASYNC_RESULT:
        found.add("integration_patterns")
    return [p for p in PATTERN_TYPES if p in found]


def category(a: Analysis, n_patterns: int, thresholds: tuple[int, int, int] = (4, 8, 13)) -> str:
    """basic / intermediate / advanced / expert from branches, size and breadth of @qi use."""
    score = a.complexity + n_patterns + a.lines // 15
    for name, limit in zip(CATEGORIES, thresholds):
        if score <= limit:
            return name
    return CATEGORIES[-1]
