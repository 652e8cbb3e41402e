"""validate: the TypeScript compiler, anti-patterns on the AST, duplicates, counter-examples."""

import shutil

import pytest

from qi_expert.core.config import ROOT, compose_conf
from qi_expert.data import dedup, extract, validate
from qi_expert.typescript import patterns, typecheck

CFG = compose_conf()
SAMPLE = ROOT / "data/sample/typescript"

HEADER = 'import { success, failure, validationError, fromTryCatch, type Result } from "@qi/base";\n\n'
FILES = {
    "app/demo/src/good.ts": HEADER + """
/** Parses a quantity. */
export function parseQty(text: string): Result<number> {
  const n = Number(text);
  return Number.isFinite(n) ? success(n) : failure(validationError("not a number", { text }));
}

export const parseJson = (text: string): Result<unknown> =>
  fromTryCatch(() => JSON.parse(text), () => validationError("bad json"));
""",
    "app/demo/src/typeerror.ts": HEADER + """
export function wrong(text: string): Result<number> {
  const n: number = text;
  return success(n);
}
""",
    "app/demo/src/helpers.ts": HEADER + """
interface Qty { readonly value: number }

export function wrap(value: number): Result<Qty> {
  return success({ value });
}
""",
    "app/demo/src/localtype.ts": HEADER + """
interface Half { readonly value: number }

export function halve(q: Half): Result<Half> {
  const v: string = q.value;
  return success({ value: Number(v) / 2 });
}
""",
    "app/demo/src/repeat.ts": HEADER + """
export function parseQtyAgain(text: string): Result<number> {
  const n = Number(text);
  return Number.isFinite(n) ? success(n) : failure(validationError("not a number", { text }));
}

// The same function as parseQty, formatted differently and commented.
export function parseQty(text: string): Result<number> {
  const n = Number(text);   // convert
  return Number.isFinite(n) ? success(n) : failure(validationError("not a number", { text }));
}
""",
}
ANTI = {
    "throw": "export function f(x: number): number {\n  if (x < 0) throw new Error('neg');\n  return x;\n}",
    "try_catch": "export function f(s: string): unknown {\n  try { return JSON.parse(s); } catch { return 0; }\n}",
    "promise_catch": "export function f(p: Promise<number>): Promise<number> {\n  return p.catch(() => 0);\n  // x\n}",
    "promise_reject": "export function f(x: number): Promise<number> {\n  return x > 0 ? Promise.resolve(x) : Promise.reject(new Error('neg'));\n}",
    "return_null": "export function f(x: number): Result<number> | null {\n  if (x < 0) return null;\n  return success(x);\n}",
}


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    # The sample corpus's @qi/base and tsconfig; files are extracted in path order, so the
    # originals in good.ts come before their copies in repeat.ts.
    shutil.copytree(SAMPLE / "lib" / "base", root / "lib" / "base")
    shutil.copy(SAMPLE / "tsconfig.json", root / "tsconfig.json")
    files = dict(FILES)
    for rule, body in ANTI.items():
        files[f"app/anti/src/{rule}.ts"] = HEADER + body + "\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    cfg = compose_conf(["extract.min_lines=1"])
    records, _ = extract.extract_corpus(root, cfg.extract)
    records = [r for r in records if r["source_file"].startswith("app/")]
    accepted, rejected, pairs, metrics = validate.validate(records, root, "tsconfig.json", cfg.validate)
    by_name = {}
    for r in accepted:
        by_name[(r["source_file"], r["name"])] = ("accepted", None)
    for r in rejected:
        by_name[(r["source_file"], r["name"])] = (r["reason"], r["detail"])
    return by_name, metrics


def test_compiling_code_is_accepted(validated):
    by_name, _ = validated
    assert by_name[("app/demo/src/good.ts", "parseQty")][0] == "accepted"
    assert by_name[("app/demo/src/good.ts", "parseJson")][0] == "accepted"


def test_type_error_is_rejected_with_the_diagnostic(validated):
    by_name, metrics = validated
    reason, detail = by_name[("app/demo/src/typeerror.ts", "wrong")]
    assert reason == "compile_error" and detail[0]["code"] == 2322
    assert 0 < metrics["compile_rate"] < 1


def test_declarations_of_its_own_file_make_it_compile(validated):
    by_name, metrics = validated
    assert by_name[("app/demo/src/helpers.ts", "wrap")][0] == "accepted"
    assert metrics["compiled_with_file_context"] >= 1


def test_a_record_checked_again_with_its_files_declarations_reports_that_checks_errors(validated):
    by_name, _ = validated
    reason, detail = by_name[("app/demo/src/localtype.ts", "halve")]
    # Not the first pass's "Cannot find name 'Half'" (2304): with Half declared, the real error.
    assert reason == "compile_error" and [d["code"] for d in detail] == [2322]


@pytest.mark.parametrize("rule", sorted(ANTI))
def test_each_anti_pattern_is_rejected(validated, rule):
    by_name, _ = validated
    reason, detail = by_name[(f"app/anti/src/{rule}.ts", "f")]
    assert reason == f"anti_pattern:{rule}", (reason, detail)


def test_exact_and_near_duplicates_are_removed(validated):
    by_name, metrics = validated
    # parseQty in repeat.ts differs from good.ts's only by whitespace and a comment: exact.
    assert by_name[("app/demo/src/repeat.ts", "parseQty")][0] == "exact_duplicate"
    # parseQtyAgain differs by its name only: near.
    reason, detail = by_name[("app/demo/src/repeat.ts", "parseQtyAgain")]
    assert reason == "near_duplicate" and detail["similarity"] >= CFG.validate.near_duplicate_threshold


def test_anti_pattern_list_is_configurable():
    code = HEADER + ANTI["throw"]
    assert [f["rule"] for f in patterns.analyze(code).anti_patterns] == ["throw"]
    # try/catch inside the library's own wrapper is allowed; the same code elsewhere is not.
    wrapper = "export function fromTryCatch<T>(fn: () => T) {\n  try { return fn(); } catch (e) { return e; }\n}"
    assert patterns.analyze(wrapper).anti_patterns == []
    assert patterns.analyze(wrapper, try_catch_allowed_in=[]).anti_patterns[0]["rule"] == "try_catch"


def test_return_undefined_only_where_a_result_is_due():
    assert patterns.analyze("function f(): string | undefined { return undefined; }").anti_patterns == []
    flagged = patterns.analyze("function f(x: number): Result<number> { if (x) return undefined; return success(x); }")
    assert [f["rule"] for f in flagged.anti_patterns] == ["return_null"]


def test_shingle_similarity():
    a = dedup.shingles(dedup.tokens("const a = f(1, 2, 3);"), 3)
    b = dedup.shingles(dedup.tokens("const a = f(1, 2, 3); // same"), 3)
    c = dedup.shingles(dedup.tokens("let z = g('x');"), 3)
    assert dedup.jaccard(a, b) == 1.0 and dedup.jaccard(a, c) == 0.0


def test_batched_check_reports_per_snippet():
    out = typecheck.check({"ok": "export const x: number = 1;\n", "bad": "export const y: number = 'no';\n"}, SAMPLE)
    assert out["ok"] == [] and out["bad"][0]["code"] == 2322 and out["bad"][0]["line"] == 1


def _base_corpus(tmp_path):
    shutil.copytree(SAMPLE / "lib" / "base", tmp_path / "lib" / "base")
    shutil.copy(SAMPLE / "tsconfig.json", tmp_path / "tsconfig.json")  # verbatimModuleSyntax: true
    return tmp_path


def test_a_type_imported_without_type_gets_the_compilers_quick_fix(tmp_path):
    root = _base_corpus(tmp_path)
    page = ("# Results\n\n```ts\nimport { success, Result } from '@qi/base'\n\n"
            "export const one = (): Result<number> => success(1)\n```\n")
    (root / "docs").mkdir()
    (root / "docs/guide.md").write_text(page)
    records = [r for r in extract.extract_corpus(root, CFG.extract)[0] if r["source_file"] == "docs/guide.md"]
    compiled = validate.compile_records(records, root, "tsconfig.json", fix_type_imports=False)
    assert [d["code"] for d in compiled[records[0]["id"]]["diagnostics"]] == [validate.TYPE_ONLY_IMPORT]
    accepted, rejected, _, metrics = validate.validate(records, root, "tsconfig.json", CFG.validate)
    assert [r["code"].splitlines()[0] for r in accepted] == ["import { success, type Result } from '@qi/base'"]
    assert metrics["compiled_after_type_import_fix"] == 1
    off = compose_conf(["validate.fix_type_imports=false"]).validate
    assert validate.validate(records, root, "tsconfig.json", off)[1][0]["reason"] == "compile_error"


def test_type_only_imports_rewrites_only_the_named_specifiers():
    code = "import {\n  success,\n  Result as R, type QiError\n} from '@qi/base'\nimport type { Config } from '@qi/core'\n"
    assert validate.type_only_imports(code, {"R", "QiError", "Config"}) == (
        "import {\n  success,\n  type Result as R, type QiError\n} from '@qi/base'\nimport type { Config } from '@qi/core'\n")
