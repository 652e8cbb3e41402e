"""Training answers as modules that compile alone, and verified augmentation (issue 17)."""

import shutil

import pytest

from qi_expert.core.config import ROOT, compose_conf
from qi_expert.data import augment, extract, modules, validate
from qi_expert.typescript import typecheck

SAMPLE = ROOT / "data/sample/typescript"

FILES = {
    "app/desk/src/types.ts": """
export interface Quote {
  readonly bid: number;
  readonly ask: number;
}
""",
    "app/desk/src/quote.ts": """
import { failure, success, validationError, type Result } from "@qi/base";
import { type Quote } from "./types";

/** Rejects a crossed quote. */
export function checkQuote(q: Quote): Result<Quote> {
  return q.bid > q.ask ? failure(validationError("crossed", { bid: q.bid, ask: q.ask })) : success(q);
}

export const spread = (q: Quote): Result<number> => success(q.ask - q.bid);

export class Book {
  private readonly quotes: Quote[] = [];

  constructor(private readonly limit: number) {}

  add(q: Quote): Result<number> {
    if (this.full()) return failure(validationError("book full", { limit: this.limit }));
    this.quotes.push(q);
    return success(this.quotes.length);
  }

  private full(): boolean {
    return this.quotes.length >= this.limit;
  }

  clear(): void {
    this.quotes.length = 0;
  }
}
""",
    "lib/tests/desk.test.ts": """
import { strict as assert } from "node:assert";
import { test } from "node:test";
import { checkQuote } from "../../app/desk/src/quote";

test("a crossed quote fails", () => {
  assert.equal(checkQuote({ bid: 2, ask: 1 }).tag, "failure");
});
""",
    "docs/tutorial/desk.md": """# Desk

```typescript
import { success, type Result } from "@qi/base";

const fee = 0.5;
```

A later block uses the fee declared above:

```typescript
export const net = (amount: number): Result<number> => success(amount - fee);
```

## Anti-patterns

```typescript
import { failure, success, validationError, type Result } from "@qi/base";

// ❌ Anti-pattern: throwing
export function half(x: number): number {
  if (x < 0) throw new Error("negative");
  return x / 2;
}

// ✅ Use this
export function halfOf(x: number): Result<number> {
  return x < 0 ? failure(validationError("negative", { x })) : success(x / 2);
}
```
""",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("desk")
    shutil.copytree(SAMPLE / "lib" / "base", root / "lib" / "base")
    shutil.copy(SAMPLE / "tsconfig.json", root / "tsconfig.json")
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text.lstrip())
    cfg = compose_conf(["extract.min_lines=1"])
    records, _ = extract.extract_corpus(root, cfg.extract)
    accepted, rejected, pairs, metrics = validate.validate(records, root, "tsconfig.json", cfg.validate)
    return root, cfg, accepted, rejected, pairs, metrics


def _answer(accepted, name, unit=None):
    found = [r for r in accepted if r["name"] == name and (unit is None or r["unit"] == unit)]
    assert found, f"{name} was not accepted"
    return found[0]["module"]


def test_each_kind_of_record_becomes_a_module_that_compiles_alone(corpus):
    root, _, accepted, rejected, pairs, metrics = corpus
    assert metrics["self_contained_rate"] == 1.0
    assert not [r for r in rejected if r["reason"].startswith("not_self_contained")]
    kinds = {r["unit"] for r in accepted}
    assert {"function", "arrow_function", "method", "test_case", "block"} <= kinds
    # Compiled again here, every answer a file of its own at the project's root: no diagnostics
    # (but node's own modules, whose types this temporary corpus does not install).
    answers = {f"a{i}": r["module"] + "\n\nexport {};\n" for i, r in enumerate(accepted)}
    answers["pair"] = pairs[0]["corrected_code"] + "\n\nexport {};\n"
    diagnostics = typecheck.check(answers, root)
    assert all([x for x in d if "'node:" not in x["message"]] == [] for d in diagnostics.values())

    # A function: its @qi imports, pruned, and the interface its file imports from ./types, inlined.
    check = _answer(accepted, "checkQuote")
    assert check.startswith('import { failure, success, validationError, type Result } from "@qi/base";\n')
    assert "export interface Quote" in check and "./types" not in check
    # A method: inside its class, with the fields, constructor and the private method it calls; not the others.
    add = _answer(accepted, "add", "method")
    assert "class Book" in add and "private full()" in add and "constructor(" in add and "clear()" not in add
    # A test case: the function it imports from the app, inlined with what that needs.
    test_case = _answer(accepted, "a crossed quote fails")
    assert "export function checkQuote" in test_case and "interface Quote" in test_case
    assert 'import { strict as assert } from "node:assert";' in test_case and "../../app" not in test_case
    # A tutorial block: the earlier declaration it uses, not merely its own lines.
    net = _answer(accepted, "net")
    assert "const fee = 0.5;" in net and net.startswith('import { success, type Result } from "@qi/base";')
    # The library's own code: its relative imports become imports of the package its users write.
    lib = [r["module"] for r in accepted if r["source_file"].startswith("lib/base/src/") and 'from "./' in "\n".join(r["imports"])]
    assert lib and all('from "./' not in m for m in lib) and any('from "@qi/base"' in m for m in lib)
    # ... and the package's own declarations they use are imported from it, never declared again.
    lib_all = [r["module"] for r in accepted if r["source_file"].startswith("lib/base/src/")]
    assert not [m for m in lib_all if "type Result<T, E" in m]
    assert any("import { type Result" in m or ", type Result" in m for m in lib_all)


def test_a_unit_whose_dependencies_are_too_long_is_left_out_counted(corpus):
    root, cfg, *_ = corpus
    records, _ = extract.extract_corpus(root, compose_conf(["extract.min_lines=1"]).extract)
    strict = compose_conf(["validate.max_dependency_lines=2"]).validate
    accepted, rejected, _, metrics = validate.validate(records, root, "tsconfig.json", strict)
    too_long = {r["name"] for r in rejected if r["reason"] == "not_self_contained:too_long"}
    assert "checkQuote" in too_long and metrics["not_self_contained_by_cause"]["too_long"] == len(too_long)


def test_a_relative_import_that_leads_nowhere_is_reported():
    rec = {"unit": "function", "name": "f", "source_file": "app/x/src/f.ts", "support": [],
           "code": "export function f(): number { return helper(); }",
           "imports": ['import { helper } from "./missing";']}
    module = modules.standalone(rec)
    assert modules.local_imports(module) == ["./missing"]


def test_rewrites_on_the_ast():
    assert augment.explicit_error_type("const r: Result<Array<Result<number>>> = x;") == \
        "const r: Result<Array<Result<number, QiError>>, QiError> = x;"
    assert augment.explicit_error_type("type A = Result<number, E>;") is None
    assert augment.function_form("export const f = async <T>(x: T): Promise<Result<T>> => wrap(x);\n") == \
        "export async function f<T>(x: T): Promise<Result<T>> {\n  return wrap(x);\n}\n"
    assert augment.function_form("const g = (x: number): number => {\n  return x;\n};") == \
        "function g(x: number): number {\n  return x;\n}\n"
    # Not rewritten: a single untyped parameter, a typed const, a body using `this`.
    assert augment.function_form("const h = x => x;") is None
    assert augment.function_form("const h: F = (x: number) => x;") is None
    assert augment.function_form("const h = (x: number) => this.y + x;") is None


def test_variants_are_verified_before_admission(corpus):
    root, cfg, accepted, *_ = corpus
    candidates = augment.variants(accepted, list(cfg.augment.kinds))
    spread = [c for c in candidates if c["name"] == "spread" and c["origin"] == "function_form"]
    assert spread and spread[0]["context"]["signature"] == "export function spread(q: Quote): Result<number, QiError>"
    broken = {**spread[0], "id": "broken", "code": "export function spread(q: Quote): Result<number, QiError> {\n  return success(q.mid);\n}\n"}
    thrower = {**spread[0], "id": "thrower", "code": "export function spread(q: Quote): Result<number, QiError> {\n  throw new Error(\"no\");\n}\n"}
    admitted, refused = validate.admit_variants(candidates + [broken, thrower], accepted, root,
                                                         "tsconfig.json", cfg.validate)
    reasons = {r["id"]: r["reason"] for r in refused}
    assert reasons["broken"] == "compile_error" and reasons["thrower"] == "anti_pattern:throw"
    module = next(a["module"] for a in admitted if a["id"] == spread[0]["id"])
    assert "type QiError" in module and "export function spread(q: Quote): Result<number, QiError> {" in module
    assert len(admitted) + len(refused) == len(candidates) + 2  # every candidate is accounted for
    assert augment.capped(admitted, corpus_rows=3, max_share=0.5) == [a for a in admitted if a["id"] in
                                                                      sorted(x["id"] for x in admitted)[:3]]
    with pytest.raises(ValueError, match="augment.kinds"):
        augment.variants(accepted, ["paraphrase"])


def test_variants_run_their_parents_test_cases_before_admission(corpus):
    """checkQuote's corpus test case ("a crossed quote fails") carries checkQuote: its variant runs
    that test in the sandbox; one that compiles but behaves otherwise fails it and is refused."""
    root, cfg, accepted, *_ = corpus
    admitted, _ = validate.admit_variants(augment.variants(accepted, list(cfg.augment.kinds)), accepted, root,
                                          "tsconfig.json", cfg.validate)
    variant = next(a for a in admitted if a["name"] == "checkQuote" and a["origin"] == "explicit_error_type")
    assert "Result<Quote, QiError>" in variant["code"]
    # Compiles alone and breaks no rule, but never fails: the test case catches it.
    lenient = {**variant, "id": "lenient",
               "code": variant["code"].replace("q.bid > q.ask ?", "q.bid > q.ask && false ?")}
    lenient["module"] = variant["module"].replace(variant["code"].strip(), lenient["code"].strip())
    kept, refused, counts = validate.test_variants([variant, lenient], accepted, root, "tsconfig.json",
                                                   cfg.validate, isolation="bwrap")
    test_case = next(r["id"] for r in accepted if r["name"] == "a crossed quote fails")
    assert [k["id"] for k in kept] == [variant["id"]] and kept[0]["tests_passed"] == [test_case]
    assert [(r["id"], r["reason"]) for r in refused] == [("lenient", "test_failed")]
    assert counts == {"variants_with_tests": 2, "test_runs": 3, "unusable_tests": 0}
    # The test module the variant ran: the variant in place of checkQuote, QiError imported once.
    module = modules.swap_unit(next(r for r in accepted if r["id"] == test_case)["module"],
                               next(r for r in accepted if r["id"] == variant["parent_id"])["code"],
                               variant["code"], variant["module"])
    assert "checkQuote(q: Quote): Result<Quote, QiError>" in module and module.count("QiError }") + \
        module.count("QiError,") == 1


def test_variant_tests_without_bubblewrap_stop_naming_the_settings(corpus, monkeypatch):
    from qi_expert.typescript import sandbox

    root, cfg, accepted, *_ = corpus
    admitted, _ = validate.admit_variants(augment.variants(accepted, list(cfg.augment.kinds)), accepted, root,
                                          "tsconfig.json", cfg.validate)
    monkeypatch.setattr(sandbox, "bwrap_works", lambda: False)
    with pytest.raises(sandbox.SandboxError, match=r"augment.sandbox=unsafe .*augment.run_tests=false"):
        validate.test_variants(admitted, accepted, root, "tsconfig.json", cfg.validate, isolation="bwrap")
