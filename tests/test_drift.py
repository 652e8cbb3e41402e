"""The drift report: documentation blocks that do not compile against the packages, by cause, with the
API as it is now; and the public surface's changes between two commits of a checkout."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from qi_expert.data import drift, retrieval, validate
from qi_expert.typescript import typecheck

TSCONFIG = {"compilerOptions": {"target": "ES2022", "module": "ESNext", "moduleResolution": "bundler", "strict": True,
                                "noEmit": True, "skipLibCheck": True, "baseUrl": ".",
                                "paths": {"@qi/base": ["./lib/base/src/index.ts"]}},
            "include": ["lib/*/src/**/*.ts"]}
BASE_BEFORE = """export type Result<T> = { tag: "success"; value: T } | { tag: "failure"; error: string };
export function success<T>(value: T): Result<T> { return { tag: "success", value }; }
export function isOk<T>(r: Result<T>): boolean { return r.tag === "success"; }
"""
# One API change: isOk is gone (match replaces it), success takes a second argument.
BASE_AFTER = """export type Result<T> = { tag: "success"; value: T } | { tag: "failure"; error: string };
export function success<T>(value: T, note: string): Result<T> { return { tag: "success", value }; }
export function match<T, U>(r: Result<T>, ok: (v: T) => U, bad: (e: string) => U): U {
  return r.tag === "success" ? ok(r.value) : bad(r.error);
}
"""
# A guide written against the first version, and what each of its blocks trips on now.
BLOCKS = [
    ("uses_is_ok", 'import { isOk, success } from "@qi/base";\n\nexport const ok = isOk(success(1, "one"));\n',
     "api_changed", 2305),
    ("one_argument", 'import { success } from "@qi/base";\n\nexport const one = success(1);\n', "api_changed", 2554),
    ("undeclared", 'import { success } from "@qi/base";\n\nexport const two = success(total, "sum");\n',
     "undeclared_name", 2304),
    ("no_module", 'import { parse } from "./src/parse";\n\nexport const three = parse("3");\n', "missing_module", 2307),
]


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                   capture_output=True)


def _checkout(tmp_path: Path) -> Path:
    """A git repository whose corpus (typescript/) had @qi/base at BASE_BEFORE, then at BASE_AFTER."""
    repo = tmp_path / "repo"
    corpus = repo / "typescript"
    (corpus / "lib/base/src").mkdir(parents=True)
    (corpus / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    (corpus / "lib/base/src/index.ts").write_text(BASE_BEFORE)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "before")
    (corpus / "lib/base/src/index.ts").write_text(BASE_AFTER)
    _git(repo, "commit", "-qam", "after: isOk removed, success takes a note")
    return corpus


def _records() -> list[dict]:
    return [{"id": name, "name": name, "code": code, "imports": [], "support": [], "unit": "block",
             "source_file": "docs/guide.md", "start_line": 10 * (i + 1), "kind": "tutorial"}
            for i, (name, code, _, _) in enumerate(BLOCKS)]


def test_failing_doc_blocks_by_cause_with_the_current_api_and_the_surface_diff_between_commits(tmp_path):
    corpus = _checkout(tmp_path)
    records = _records()
    compiled = validate.compile_records(records, corpus, "tsconfig.json")
    rejected = [{**r, "reason": "compile_error", "detail": compiled[r["id"]]["diagnostics"],
                 "check_context": compiled[r["id"]]["context"]} for r in records]
    exports = lambda root: typecheck.module_exports(root, "tsconfig.json", missing_ok=True)  # noqa: E731
    now = retrieval.api_surface(corpus, exports(corpus))
    found = drift.report(rejected, now)

    assert found["failing_blocks"] == len(BLOCKS)
    assert found["by_cause"] == {"missing_module": 1, "api_changed": 2, "undeclared_name": 1, "type_error": 0}
    by_name = {b["name"]: b for b in found["blocks"]}
    for name, _, why, code in BLOCKS:
        assert (by_name[name]["cause"], by_name[name]["code"]) == (why, code), by_name[name]
    # file:line of the failing line in the page, and its text.
    assert by_name["one_argument"]["line"] == 20 + 2 and by_name["one_argument"]["text"] == "export const one = success(1);"
    # The API as it is now, for the names the failing line uses.
    assert by_name["one_argument"]["current_api"] == [
        {"name": "success", "module": "@qi/base", "signature": "function success<T>(value: T, note: string): Result<T>"}]
    assert found["by_page"] == {"docs/guide.md": {"api_changed": 2, "missing_module": 1, "undeclared_name": 1}}

    # The public surface at the first commit (read from git, nothing checked out) against now.
    before = drift.surface_at(corpus, "HEAD~1", exports, retrieval.api_surface)
    diff = drift.surface_diff(before, now, found)
    assert [e["name"] for e in diff["added"]] == ["match"]
    assert [(e["name"], e["breaks"]) for e in diff["removed"]] == [("isOk", ["docs/guide.md:10"])]
    assert [(e["name"], e["breaks"]) for e in diff["changed"]] == [("success", ["docs/guide.md:10", "docs/guide.md:22",
                                                                                 "docs/guide.md:32"])]
    page = drift.markdown({**found, "surface_diff": {"since": "HEAD~1", **diff}}, "guide")
    assert "| api changed | 2 |" in page and "removed `function isOk" in page


def test_a_corpus_outside_git_has_no_history_to_diff(tmp_path):
    import pytest

    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match="not in a git checkout"):
        drift.surface_at(tmp_path / "c", "HEAD~1", lambda r: {}, lambda r, e: [])
