"""What the corpus's documentation says that its packages no longer do: the drift report.

The validate stage rejects a documentation block (Markdown: tutorials, app READMEs) that does not
compile against the checkout's own @qi packages. That is right for training, and it is what the
packages' owners need to know: a tutorial that imports `Result` from `@qi/core`, calls `isOk` that
`@qi/base` no longer exports, or reads `.value` off a Result teaches the API as it no longer is.
This module turns those rejections into a report (validate writes metrics/drift.json and
reports/drift.md; `qi-expert drift` prints it):

- every failing block with file:line, the failing line, the compiler's message, and its cause:
  `missing_module` (imports a module that does not exist), `api_changed` (a name the packages do
  not export, a member or an argument count they do not have), `undeclared_name` (a name the
  page never declares), `type_error` (anything else the compiler finds);
- for the API as it no longer is, the signatures the packages have now for the @qi names on the
  failing line (from the compiler's export list and tree-sitter, as the pattern store reads them);
- counts by cause and by page; and, for a git checkout, the public surface's changes since a
  commit (`surface_diff`): names added, removed, signatures changed, and the blocks each breaks.

The causes come from TypeScript's diagnostic codes, checked in the order of CAUSES (a block that
imports a missing module is that, whatever else fails after it).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qi_expert.data.revisions import tree_at

CAUSES = {
    "missing_module": frozenset({2307, 2792}),
    # no exported member (2305, 2614, 2724: "did you mean"), declared but not exported (2459, 2460),
    # no such property or member (2339, 2551), argument counts (2554-2556), no overload (2769),
    # not callable (2349)
    "api_changed": frozenset({2305, 2614, 2724, 2459, 2460, 2339, 2551, 2554, 2555, 2556, 2769, 2349}),
    # cannot find name (2304, 2552), used before its declaration (2448, 2454)
    "undeclared_name": frozenset({2304, 2552, 2448, 2454}),
}
OTHER = "type_error"
QUOTED = re.compile(r"'([^']+)'")
IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*")


def is_doc_block(record: Mapping) -> bool:
    return str(record.get("source_file", "")).endswith((".md", ".mdx"))


def cause(diagnostics: Sequence[Mapping]) -> str:
    codes = {int(d["code"]) for d in diagnostics}
    return next((name for name, members in CAUSES.items() if codes & members), OTHER)


def _first_of(diagnostics: Sequence[Mapping], name: str) -> Mapping:
    members = CAUSES.get(name, frozenset())
    return next((d for d in diagnostics if int(d["code"]) in members), diagnostics[0])


def failing_line(record: Mapping, line: int) -> tuple[int | None, str]:
    """(line in the source file, or None when it falls in the imports/declarations the check added;
    the line's text) for line `line` of the virtual file validate checked the record as."""
    parts = list(record.get("imports") or [])
    if record.get("check_context") == "file":
        parts += list(record.get("support") or [])
    head = "\n\n".join(parts + [""]) if parts else ""
    lines = (head + record["code"]).splitlines()
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    first_code_line = head.count("\n") + 1
    in_code = first_code_line <= line < first_code_line + record["code"].count("\n") + 1
    return (int(record["start_line"]) + line - first_code_line if in_code and "start_line" in record else None), text


def current_api(names: Iterable[str], api: Sequence[Mapping]) -> list[dict]:
    """The packages' current signature of each exported @qi name among `names`."""
    by_name: dict[str, list[Mapping]] = {}
    for e in api:
        by_name.setdefault(e["name"], []).append(e)
    return [{"name": e["name"], "module": e["module"], "signature": e["signature"]}
            for n in dict.fromkeys(names) for e in by_name.get(n, ())]


def report(rejected: Iterable[Mapping], api: Sequence[Mapping]) -> dict:
    """The drift report of validate's rejected records: every documentation block that does not
    compile, by cause and by page, with the current API for the names each one gets wrong."""
    blocks = []
    for r in rejected:
        if not (is_doc_block(r) and r.get("reason") == "compile_error" and r.get("detail")):
            continue
        why = cause(r["detail"])
        first = _first_of(r["detail"], why)
        line, text = failing_line(r, int(first.get("line", 0)))
        # The @qi names the message quotes (a type's too: 'Result<Logger, LoggerError>') and the line uses.
        names = [n for q in QUOTED.findall(first["message"]) for n in IDENTIFIER.findall(q)] + IDENTIFIER.findall(text)
        blocks.append({"file": r["source_file"], "line": line if line is not None else r.get("start_line"),
                       "block_start_line": r.get("start_line"), "name": r.get("name"), "cause": why,
                       "code": int(first["code"]), "message": first["message"], "text": text,
                       "current_api": current_api(names, api) if why == "api_changed" else [],
                       "diagnostics": [{"code": int(d["code"]), "message": d["message"]} for d in r["detail"]]})
    blocks.sort(key=lambda b: (b["file"], b["line"] or 0))
    by_page: dict[str, Counter] = {}
    for b in blocks:
        by_page.setdefault(b["file"], Counter())[b["cause"]] += 1
    return {
        "failing_blocks": len(blocks),
        "by_cause": {c: sum(1 for b in blocks if b["cause"] == c) for c in (*CAUSES, OTHER)},
        "by_page": {page: dict(sorted(c.items())) for page, c in sorted(by_page.items(), key=lambda kv: -sum(kv[1].values()))},
        "blocks": blocks,
    }


# --- the public surface at a commit, and what changed since ----------------------------------------

def surface_at(corpus_root: Path, rev: str, exports, api_surface) -> list[dict]:
    """The @qi packages' API surface as it was at git revision `rev` of the checkout holding
    `corpus_root` (revisions.tree_at), read the same way as now (`exports`:
    typecheck.module_exports, `api_surface`: retrieval.api_surface)."""
    with tree_at(corpus_root, rev) as old_root:
        return api_surface(old_root, exports(old_root))


def surface_diff(before: Sequence[Mapping], after: Sequence[Mapping], drift: Mapping | None = None) -> dict:
    """Names added, removed and with a changed signature between two surfaces; with a drift report,
    the failing documentation blocks that name each removed or changed one."""
    old = {(e["module"], e["name"]): e["signature"] for e in before}
    new = {(e["module"], e["name"]): e["signature"] for e in after}
    blocks = list((drift or {}).get("blocks", []))

    def breaks(name: str) -> list[str]:
        return [f"{b['file']}:{b['line']}" for b in blocks
                if name in IDENTIFIER.findall(b["text"]) or f"'{name}'" in b["message"]]

    entry = lambda k, **kw: {"module": k[0], "name": k[1], **kw}  # noqa: E731
    return {
        "added": [entry(k, signature=new[k]) for k in sorted(new.keys() - old.keys())],
        "removed": [entry(k, signature=old[k], breaks=breaks(k[1])) for k in sorted(old.keys() - new.keys())],
        "changed": [entry(k, before=old[k], after=new[k], breaks=breaks(k[1]))
                    for k in sorted(old.keys() & new.keys()) if old[k] != new[k]],
    }


# --- the readable report ------------------------------------------------------------------------

def markdown(drift: Mapping, corpus: str, *, limit: int = 200) -> str:
    """reports/drift.md: counts at the top, then every failing block (the first `limit`)."""
    c = drift["by_cause"]
    out = [f"# Documentation drift: {corpus}", "",
           f"{drift['failing_blocks']} documentation blocks do not compile against the checkout's own @qi packages:",
           "", "| cause | blocks |", "|---|---|"]
    out += [f"| {name.replace('_', ' ')} | {c[name]} |" for name in c]
    out += ["", "| page | " + " | ".join(n.replace("_", " ") for n in c) + " |", "|---|" + "---|" * len(c)]
    out += [f"| {page} | " + " | ".join(str(counts.get(n, 0)) for n in c) + " |" for page, counts in drift["by_page"].items()]
    out += [""]
    for b in drift["blocks"][:limit]:
        out += [f"## {b['file']}:{b['line']} ({b['cause'].replace('_', ' ')})", "", "```ts", b["text"], "```", "",
                f"TS{b['code']}: {b['message']}"]
        if b["current_api"]:
            out += ["", "The packages now have:"] + [f"- `{a['signature']}` ({a['module']})" for a in b["current_api"]]
        out += [""]
    if len(drift["blocks"]) > limit:
        out += [f"... and {len(drift['blocks']) - limit} more in metrics/drift.json", ""]
    diff = drift.get("surface_diff")
    if diff:
        out += [f"## The public surface since {diff['since']}", ""]
        out += [f"- added `{e['signature']}` ({e['module']})" for e in diff["added"]]
        out += [f"- removed `{e['signature']}` ({e['module']})" + (f": breaks {', '.join(e['breaks'])}" if e["breaks"] else "")
                for e in diff["removed"]]
        out += [f"- changed `{e['before']}` -> `{e['after']}` ({e['module']})"
                + (f": breaks {', '.join(e['breaks'])}" if e["breaks"] else "") for e in diff["changed"]]
        out += [""]
    return "\n".join(out)
