"""extract: units, labels and context from inline TypeScript and Markdown."""

import json
import subprocess
import sys

import pytest

from qi_expert.core.config import ROOT, compose_conf
from qi_expert.data import doc_blocks, extract
from qi_expert.data.corpus import CorpusError
from qi_expert.typescript import patterns, tsast

CFG = compose_conf().extract

PATTERN_SNIPPETS = {
    "result_creation": """
import { success, failure, type Result } from "@qi/base";
export function half(n: number): Result<number, string> {
  return n % 2 === 0 ? success(n / 2) : failure("odd");
}""",
    "error_handling": """
import { failure, validationError } from "@qi/base";
export const reject = (field: string) => {
  const error = validationError(`bad ${field}`, { field });
  return failure(error);
};""",
    "functional_composition": """
import { flatMap, map, match } from "@qi/base";
export const describe = (r: any) => {
  const doubled = map((x: number) => x * 2, r);
  return match((v) => `ok ${v}`, (e) => `err ${e}`, flatMap((x) => doubled, r));
};""",
    "config_management": """
import { fromObject } from "@qi/core";
export function port(data: Record<string, unknown>) {
  const config = fromObject(data);
  return config.get("server.port");
}""",
    "logger_integration": """
export function announce(logger: { info(m: string): void }, name: string) {
  logger.info(`hello ${name}`);
  logger.info("done");
}""",
    "cache_patterns": """
import { createMemoryCache } from "@qi/core";
export function warm(keys: string[]) {
  const cache = createMemoryCache({ maxSize: 10 });
  for (const k of keys) cache.set(k, 1);
  return cache;
}""",
    "factory_functions": """
import { success, failure, validationError } from "@qi/base";
export function createPrice(symbol: string, price: number) {
  if (price <= 0) return failure(validationError("price must be positive"));
  return success({ symbol, price });
}""",
    "integration_patterns": """
import { fromAsyncTryCatch } from "@qi/base";
export async function load(url: string) {
  const r = await fromAsyncTryCatch(async () => url.length);
  return r;
}""",
}


def corpus(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return tmp_path


@pytest.mark.parametrize("pattern", sorted(PATTERN_SNIPPETS))
def test_each_pattern_type_is_detected(tmp_path, pattern):
    root = corpus(tmp_path, {"app/demo/src/index.ts": PATTERN_SNIPPETS[pattern]})
    records, _ = extract.extract_corpus(root, CFG)
    assert len(records) == 1
    assert pattern in records[0]["pattern_types"], records[0]["pattern_types"]


def test_words_in_comments_or_strings_do_not_count():
    a = patterns.analyze('// success(1) and failure\nexport const s = "flatMap(x)";\n')
    assert a.pattern_types() == []


def test_record_fields_context_and_ids(tmp_path):
    root = corpus(tmp_path, {
        "app/demo/README.md": "# Demo\n\nValidates prices for the demo desk.\n",
        "app/demo/src/index.ts": "import { success, failure, validationError, type Result } from '@qi/base';\n\n"
                                 "/** Checks that a price is positive. */\n"
                                 "export function validatePrice(p: number): Result<number> {\n"
                                 "  if (p <= 0) return failure(validationError('not positive'));\n"
                                 "  return success(p);\n}\n",
        "lib/tests/demo.test.ts": "import { validatePrice } from '../../app/demo/src/index';\nvalidatePrice(1);\n",
    })
    records, report = extract.extract_corpus(root, CFG)
    rec = next(r for r in records if r["name"] == "validatePrice")
    assert rec["source_kind"] == "app" and rec["source_file"] == "app/demo/src/index.ts"
    assert (rec["start_line"], rec["end_line"]) == (4, 7)
    assert rec["context"]["jsdoc"] == "Checks that a price is positive."
    assert rec["context"]["readme"] == "Validates prices for the demo desk."
    assert rec["context"]["signature"].startswith("export function validatePrice(p: number): Result<number>")
    assert rec["qi_imports"] == {"@qi/base": ["success", "failure", "validationError", "Result"]}
    assert rec["tested"] is True
    assert rec["complexity"] == 2 and rec["category"] in patterns.CATEGORIES
    again, _ = extract.extract_corpus(root, CFG)
    assert [r["id"] for r in again] == [r["id"] for r in records]  # content hash: stable
    assert report.files_by_kind == {"app": 2, "test": 1}


def test_classes_and_methods_are_units(tmp_path):
    root = corpus(tmp_path, {"lib/core/src/store.ts": """
import { success, type Result } from "@qi/base";
export class Store {
  private items = new Map<string, number>();
  /** Puts a value. */
  put(key: string, value: number): Result<void> {
    this.items.set(key, value);
    return success(undefined);
  }
}
"""})
    records, _ = extract.extract_corpus(root, CFG)
    units = {(r["unit"], r["name"]) for r in records}
    assert units == {("class", "Store"), ("method", "put")}
    method = next(r for r in records if r["unit"] == "method")
    assert method["context"]["class_name"] == "Store" and method["context"]["jsdoc"] == "Puts a value."
    assert method["source_kind"] == "implementation"


def test_tutorial_counter_example_is_marked_and_paired(tmp_path):
    md = """# Results

## Instead of exceptions

Throwing hides the failure from the signature.

```typescript
import { success, failure, validationError, type Result } from '@qi/base'

// Instead of this (invisible errors):
function divide(a: number, b: number): number {
  if (b === 0) throw new Error('Division by zero')
  return a / b
}

// ✅ Use Result<T> instead:
function divide2(a: number, b: number): Result<number> {
  if (b === 0) return failure(validationError('Division by zero'))
  return success(a / b)
}
```
"""
    records, _ = extract.extract_corpus(corpus(tmp_path, {"docs/tutorial/qi-base.md": md}), CFG)
    bad = next(r for r in records if r["counter_example"])
    good = next(r for r in records if not r["counter_example"])
    assert bad["name"] == "divide" and good["name"] == "divide2"
    assert bad["corrected_id"] == good["id"]
    assert good["source_kind"] == "tutorial"
    assert good["context"]["headings"] == ["Results", "Instead of exceptions"]
    assert "hides the failure" in good["context"]["prose"]
    assert good["start_line"] == 17  # lines are the Markdown file's own
    assert "import {" in good["code"]


def test_broken_files_are_skipped_and_counted(tmp_path):
    root = corpus(tmp_path, {
        "app/demo/src/ok.ts": PATTERN_SNIPPETS["result_creation"],
        "app/demo/src/broken.ts": "export function f( {\n  return 1\n",
        "app/demo/src/latin1.ts": "export const s = '\xe9t\xe9';\n".encode("latin-1"),
        "docs/tutorial/t.md": "# T\n\n```ts\nexport const = ;\n```\n",
    })
    records, report = extract.extract_corpus(root, CFG)
    assert [r["name"] for r in records] == ["half"]
    assert report.parse_errors == ["app/demo/src/broken.ts:1"]
    assert report.not_utf8 == ["app/demo/src/latin1.ts"]
    assert report.blocks_parse_error == ["docs/tutorial/t.md:4"]


def test_missing_or_empty_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        extract.extract_corpus(tmp_path / "nope", CFG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no TypeScript"):
        extract.extract_corpus(tmp_path / "empty", CFG)


def test_stage_reports_a_missing_corpus_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "stages/extract.py"), f"corpus.root={tmp_path}/missing"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert f"corpus root {tmp_path}/missing does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sample_corpus_covers_every_kind_type_and_category():
    records, report = extract.extract_corpus(ROOT / "data/sample/typescript", CFG)
    summary = extract.summarize(records, report)
    assert set(summary["records_by_kind"]) == {"app", "implementation", "test", "tutorial"}
    assert all(summary["records_by_type"][t] > 0 for t in patterns.PATTERN_TYPES), summary["records_by_type"]
    assert all(summary["records_by_category"][c] > 0 for c in patterns.CATEGORIES)
    assert summary["counter_examples_paired"] > 0 and summary["files_with_parse_errors"] == 0
    json.dumps(records)  # serialisable as is


# A real @qi checkout laid out unlike qi-v2-qicore (issue 16): packages under lib/src/<package>,
# tests in lib/tests, apps in examples/, docs in docs/; nothing in the config changed but the root.
OTHER_LAYOUT = {
    "tsconfig.json": """{
  // comments and trailing commas, as tsconfig allows
  "compilerOptions": {
    "strict": true, /* the globs below are strings, not comments */
    "baseUrl": ".",
    "paths": {"@qi/base": ["./lib/src/base/index.ts"], "@qi/base/*": ["./lib/src/base/*"],},
  },
  "include": ["lib/**/*", "examples/**/*"],
}""",
    "lib/src/base/index.ts": "export * from './result';\n",
    "lib/src/base/result.ts": PATTERN_SNIPPETS["result_creation"],
    "lib/tests/result.test.ts": "import { describe, it, expect } from 'vitest';\nimport { half } from '@qi/base';\n"
                                "describe('half', () => {\n  it('halves', () => {\n    expect(half(4).tag).toBe('success');\n  });\n});\n",
    "examples/pricing/README.md": "# Pricing\n\nPrices an order with Results.\n",
    "examples/pricing/src/main.ts": PATTERN_SNIPPETS["factory_functions"],
    "docs/guide.md": "# Guide\n\n```ts\n" + PATTERN_SNIPPETS["error_handling"].strip() + "\n```\n",
    "vite.config.ts": "export default {};\n",
    "seed.ts": "export function seed(): number {\n  return 1;\n}\n",
}


def test_another_layout_is_classified_by_what_its_files_are(tmp_path):
    records, report = extract.extract_corpus(corpus(tmp_path, OTHER_LAYOUT), CFG)
    by_kind = {r["source_kind"]: r for r in records}
    assert set(by_kind) == {"implementation", "test", "app", "tutorial"}
    assert by_kind["implementation"]["source_file"] == "lib/src/base/result.ts"
    assert by_kind["app"]["context"]["readme"] == "Prices an order with Results."
    assert report.layout.found_by == "tsconfig paths" and report.layout.packages == {"@qi/base": "lib/src/base"}
    assert report.unclassified == {"vite.config.ts": "tool configuration",
                                   "seed.ts": "TypeScript at the corpus root, outside any package or app folder"}
    assert extract.summarize(records, report)["unclassified_files"] == report.unclassified
    # The globs still override: the root file becomes an app when the user says so.
    cfg = compose_conf(["+extract.kinds.app=[seed.ts]"]).extract
    records, report = extract.extract_corpus(tmp_path, cfg)
    assert "seed.ts" not in report.unclassified and any(r["source_file"] == "seed.ts" for r in records)


def test_packages_declared_by_package_json_when_tsconfig_has_no_paths(tmp_path):
    files = {k: v for k, v in OTHER_LAYOUT.items() if k != "tsconfig.json"}
    files["lib/src/base/package.json"] = '{"name": "@qi/base", "main": "index.ts"}'
    records, report = extract.extract_corpus(corpus(tmp_path, files), CFG)
    assert report.layout.found_by == "package.json" and report.layout.packages == {"@qi/base": "lib/src/base"}
    assert {r["source_kind"] for r in records} == {"implementation", "test", "app", "tutorial"}
    # Declaring no package at all falls back to qi-v2-qicore's layout, and says so.
    (tmp_path / "lib/src/base/package.json").unlink()
    _, report = extract.extract_corpus(tmp_path, CFG)
    assert report.layout.found_by.startswith("conventional layout")


def test_a_broken_tsconfig_is_a_clear_error(tmp_path):
    root = corpus(tmp_path, {**OTHER_LAYOUT, "tsconfig.json": '{"compilerOptions": {'})
    with pytest.raises(CorpusError, match="tsconfig.json is not valid JSON"):
        extract.extract_corpus(root, CFG)


def test_each_test_case_is_a_record_with_its_describe_titles_and_the_setup_it_uses(tmp_path):
    filler = "".join(f"  it('filler {i}', () => {{\n    expect(half({2 * i}).tag).toBe('success');\n  }});\n"
                     for i in range(60))  # makes the describe block far longer than extract.max_lines
    test = f"""import {{ describe, it, expect, beforeEach }} from 'vitest';
import {{ half }} from '@qi/base';

const even = (n: number) => n * 2;
const skipOdd = false;

describe('half', () => {{
  let calls = 0;
  const unused = 'not needed by any case';
  beforeEach(() => {{
    calls = 0;
  }});

  describe.skipIf(skipOdd)('on even numbers', () => {{
    const input = even(21);
    it('halves', () => {{
      calls++;
      expect(half(input).tag).toBe('success');
    }});
  }});

  for (const n of [1, 3]) {{
    it(`refuses ${{n}}`, () => {{
      expect(half(n).tag).toBe('failure');
    }});
  }}
{filler}}});
"""
    root = corpus(tmp_path, {**OTHER_LAYOUT, "lib/tests/result.test.ts": test})
    records, report = extract.extract_corpus(root, CFG)
    cases = {r["name"]: r for r in records if r["unit"] == "test_case"}
    assert len(cases) == 62 and report.test_cases == report.test_cases_in_records == 62
    halves = cases["halves"]
    assert halves["context"]["describe"] == ["half", "on even numbers"]
    assert halves["code"] == """describe('half', () => {
  let calls = 0;
  beforeEach(() => {
    calls = 0;
  });
  describe.skipIf(skipOdd)('on even numbers', () => {
    const input = even(21);
    it('halves', () => {
      calls++;
      expect(half(input).tag).toBe('success');
    });
  });
});"""
    # The file's own declarations it uses, in its body and in its describe header.
    assert halves["support"] == ["const even = (n: number) => n * 2;", "const skipOdd = false;"]
    assert cases["filler 0"]["support"] == []
    assert (halves["start_line"], halves["end_line"]) == (16, 19)  # the case's own lines in the file
    assert "for (const n of [1, 3])" in cases["refuses ${n}"]["code"]
    assert "unused" not in cases["filler 0"]["code"] and "beforeEach" in cases["filler 0"]["code"]


def test_tutorial_blocks_read_like_a_notebook_and_every_block_without_a_record_says_why(tmp_path):
    page = """# Errors

```ts
import { validationError } from '@qi/base'
```

One line shows a call:

```ts
const error = validationError('bad email', { field: 'email' })
```

The page's own declaration is reused below, and `half` comes from the package though the page never imports it:

```ts
console.log(error.message, half(4))
```

```ts
console.log(somethingNobodyDeclares)
```

```ts
has(key: string): boolean
```

```ts
return <Spinner />
```
"""
    root = corpus(tmp_path, {**OTHER_LAYOUT, "docs/guide.md": page})
    records, report = extract.extract_corpus(root, CFG)
    blocks = {r["start_line"]: r for r in records if r["source_file"] == "docs/guide.md"}
    assert blocks[4]["code"] == "import { validationError } from '@qi/base'"  # imports alone: a record
    assert blocks[10]["code"].startswith("const error") and blocks[10]["imports"] == ["import { validationError } from '@qi/base';"]
    reuse = blocks[16]
    assert reuse["support"] == ["const error = validationError('bad email', { field: 'email' })"]
    assert 'import { half } from "@qi/base";' in reuse["imports"]
    assert set(blocks) == {4, 10, 16}
    assert report.blocks_without_record == {
        "docs/guide.md:20": "a fragment: statements that declare nothing and use nothing the page declares or imports, "
                            "nor anything the @qi packages export",
        "docs/guide.md:24": "member signatures without bodies (an API listing)",
        "docs/guide.md:28": "JSX (a TSX example; records are .ts modules)",
    }
    summary = extract.summarize(records, report)["markdown_blocks"]
    assert summary["total"] == 6 and summary["with_record"] == 3


def test_a_block_with_a_signature_without_body_keeps_the_usage_that_follows_it(tmp_path):
    page = """# map

```ts
// Transform success values
export const map = <T, U>(
  fn: (value: T) => U
): Result<U>

// Usage
const halved = half(4)

function twice(n: number): number {
  const once = n * 2

  return once * 2
}
```

```ts
export const flatMap = <T, U>(
  fn: (value: T) => Result<U>
): Result<U>
```
"""
    root = corpus(tmp_path, {**OTHER_LAYOUT, "docs/map.md": page})
    records, report = extract.extract_corpus(root, CFG)
    blocks = {r["start_line"]: r for r in records if r["source_file"] == "docs/map.md"}
    # Nothing is invented: the signature's lines are left out, the usage keeps its own lines.
    # The usage is one record (a function body's blank line did not split it).
    assert blocks[10]["code"] == ("const halved = half(4)\n\n"
                                  "function twice(n: number): number {\n  const once = n * 2\n\n  return once * 2\n}")
    assert blocks[10]["imports"] == ['import { half } from "@qi/base";'] and set(blocks) == {10}
    assert report.blocks_partly_read == {"docs/map.md:4": "lines 1-4 left out: not TypeScript tree-sitter can parse"}
    assert report.blocks_without_record["docs/map.md:20"].startswith("not TypeScript tree-sitter can parse, at its line 1: export const flatMap")
    assert extract.summarize(records, report)["markdown_blocks"]["partly_read"] == report.blocks_partly_read


def test_a_name_imported_again_from_another_module_is_bound_to_the_later_import():
    imports: list[str] = []
    for statement in ["import { Ok, Err } from '@qi/old/base';", "import { createLogger } from '@qi/old';",
                      "import { Ok, Result } from '@qi/base';", "import { success } from '@qi/base';"]:
        doc_blocks.merge_import(imports, tsast.parse(statement).root_node.children[0])
    assert imports == ["import { Err } from '@qi/old/base';", "import { createLogger } from '@qi/old';",
                       "import { Ok, Result, success } from '@qi/base';"]


def test_a_block_gets_what_its_earlier_declarations_use_in_turn_and_imports_win_over_page_sketches(tmp_path):
    page = """# Parsing

A sketch of the type, for reading only:

```ts
type Result<T> = { tag: 'success'; value: T } | { tag: 'failure'; error: string };
```

```ts
import { type Result, success } from '@qi/base';
type Raw = Record<string, unknown>;
```

```ts
const asObject = (raw: unknown): Result<Raw> => success(raw as Raw);
```

```ts
const parsed = asObject({ a: 1 });
```
"""
    root = corpus(tmp_path, {**OTHER_LAYOUT, "docs/parse.md": page})
    records, _ = extract.extract_corpus(root, CFG)
    parsed = next(r for r in records if r["code"] == "const parsed = asObject({ a: 1 });")
    # asObject needs Raw; Result comes from the page's import, never from its sketch.
    assert parsed["support"] == ["type Raw = Record<string, unknown>;",
                                 "const asObject = (raw: unknown): Result<Raw> => success(raw as Raw);"]
    assert parsed["imports"] == ["import { type Result, success } from '@qi/base';"]


NESTED = {
    # The library: a nested project, its package named without a @qi/ scope, subpath exports, its
    # own tsconfig aliasing its folders; no tsconfig at the checkout's root.
    "lib/package.json": '{"name": "qicore", "exports": {"./base": "./src/base/index.ts", "./core": "./src/core/index.ts"}}',
    "lib/tsconfig.json": '{"compilerOptions": {"strict": true, "baseUrl": ".", "paths": {"@qicore/*": ["./src/*"]}}}',
    "lib/src/base/index.ts": (
        "export type Result<T> = { tag: 'success'; value: T } | { tag: 'failure'; error: string };\n\n"
        "/** A success. */\nexport function success<T>(value: T): Result<T> {\n  return { tag: 'success', value };\n}\n\n"
        "/** A failure. */\nexport function failure<T>(error: string): Result<T> {\n  return { tag: 'failure', error };\n}\n"),
    "lib/src/core/index.ts": (
        "import { success, type Result } from '@qicore/base';\n\n"
        "/** A logger, or why not. */\nexport function createLogger(level: string): Result<{ level: string }> {\n"
        "  const logger = { level };\n  return success(logger);\n}\n"),
    "lib/tests/base.test.ts": (
        "import { describe, expect, it } from 'vitest';\nimport { success } from '@qicore/base';\n\n"
        "describe('success', () => {\n  it('holds its value', () => {\n    const r = success(2);\n"
        "    expect(r.tag).toBe('success');\n  });\n});\n"),
    # A consumer app importing the library under other aliases, and its own app-internal alias.
    "app/demo/package.json": '{"name": "demo"}',
    "app/demo/tsconfig.json": ('{"compilerOptions": {"baseUrl": ".", "paths": {"@qi/core/base": ["../../lib/src/base/index.ts"], '
                               '"@qi/core": ["../../lib/src/core/index.ts"], "@/*": ["./src/*"]}}}'),
    "app/demo/README.md": "# Demo\n\nParses prices with Results.\n",
    "app/demo/src/util.ts": "export function twice(n: number): number {\n  const two = 2;\n  return n * two;\n}\n",
    "app/demo/src/main.ts": (
        "import { success, failure, type Result } from '@qi/core/base';\nimport { twice } from '@/util';\n\n"
        "export function parsePrice(text: string): Result<number> {\n  const n = Number(text);\n"
        "  return Number.isFinite(n) ? success(twice(n)) : failure('not a number');\n}\n"),
    "docs/guide.md": ("# Guide\n\nResults:\n\n```ts\nimport { success } from '@qi/core/base';\n\n"
                      "export function one() {\n  const r = success(1);\n  return r;\n}\n```\n"),
    "vitest.config.ts": "export default {};\n",
}


def test_a_library_in_a_nested_project_is_found_by_the_imports_that_use_it(tmp_path):
    """A checkout whose library lives in a nested project (no @qi/ name, subpath exports, aliases in
    nested tsconfigs, none at the root): its source is implementation, and every kind is present."""
    root = tmp_path / "nested"
    more = {f"lib/src/core/part{i}.ts": f"/** Part {i}. */\nexport function part{i}(n: number): number {{\n  const k = {i};\n  return n + k;\n}}\n"
            for i in range(5)}
    for rel, text in {**NESTED, **more}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    records, report = extract.extract_corpus(root, CFG)
    assert report.layout.package_dirs == ["lib/src"] and "nested" in report.layout.found_by
    # The specifiers other folders use for it; the app's own `@/*` alias is not a library.
    assert set(report.layout.packages) == {"@qi/core/base", "@qicore/base"}
    kinds = {r["source_file"]: r["source_kind"] for r in records}
    assert kinds["lib/src/base/index.ts"] == kinds["lib/src/core/index.ts"] == "implementation"
    assert kinds["lib/tests/base.test.ts"] == "test" and kinds["app/demo/src/main.ts"] == "app"
    assert kinds["docs/guide.md"] == "tutorial"
    assert all(kinds[rel] == "implementation" for rel in more)
    typescript = [rel for rel in {**NESTED, **more} if rel.endswith(".ts")]
    assert report.unclassified == {"vitest.config.ts": "tool configuration"}  # each with its reason
    assert len(report.unclassified) / len(typescript) < 0.1  # one tool config of 11 files


def test_the_compile_check_resolves_every_alias_the_checkouts_tsconfigs_declare(tmp_path):
    """The nested layout: no tsconfig at the root; the library's aliases (@qicore/*) and the app's
    (@qi/core/base, @qi/core) each declared in their own tsconfig, all resolved in one program."""
    from qi_expert.typescript import typecheck

    root = tmp_path / "nested"
    for rel, text in NESTED.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    found = typecheck.check({
        "app_alias": "import { success } from '@qi/core/base';\nexport const x = success(1);\n",
        "app_package": "import { createLogger } from '@qi/core';\nexport const y = createLogger('info');\n",
        "library_alias": "import { failure } from '@qicore/base';\nexport const z = failure<number>('no');\n",
        "missing_name": "import { nothing } from '@qi/core/base';\nexport const n = nothing;\n",
    }, root, "tsconfig.json", exports=["@qi/core/base", "@qicore/base"])
    assert found["app_alias"] == found["app_package"] == found["library_alias"] == []
    assert [d["code"] for d in found["missing_name"]] == [2305]  # resolved, and the name is checked
    assert {e["name"] for e in found["__exports__"]["@qicore/base"]} == {"Result", "success", "failure"}
