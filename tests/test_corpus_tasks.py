"""The corpus benchmark (data/corpus_tasks.py): tasks from the corpus's own test cases, their
verdict in the eval's isolated runner, and what a completion cannot borrow from the package."""

import shutil

import pytest
from conftest import SAMPLE_CORPUS

from qi_expert.data import corpus_tasks, modules
from qi_expert.evaluation import scoring
from qi_expert.typescript import sandbox, typecheck

FILTER = '''import { type Result, failure } from "@qi/base";

export const filter = <T, E>(
  predicate: (value: T) => boolean,
  errorIfFalse: E,
  result: Result<T, E>,
): Result<T, E> => {
  if (result.tag === "failure") return result;
  return predicate(result.value) ? result : failure(errorIfFalse);
};
'''
TEST_FILTER = '''import assert from "node:assert/strict";
import { test } from "node:test";
import { filter, getError, success, validationError } from "@qi/base";

const small = validationError("too small");
test("filter keeps big values", () => {
  assert.equal(getError(filter((n: number) => n > 10, small, success(4)))?.message, "too small");
});
'''
TEST_FILTER_2 = '''import assert from "node:assert/strict";
import { test } from "node:test";
import { filter as keep, success, failure, validationError } from "@qi/base";

const small = validationError("odd");
test("filter passes failures through", () => {
  const failed = failure(validationError("earlier"));
  assert.deepEqual(keep(() => true, small, failed), failed);
  assert.deepEqual(keep((n: number) => n % 2 === 0, small, success(8)), success(8));
});
'''
TEST_OTHER = '''import assert from "node:assert/strict";
import { success, isSuccess } from "@qi/base";

assert.ok(isSuccess(success(1)));
'''


def _records():
    unit = {"id": "u-filter", "source_kind": "implementation", "unit": "arrow_function", "name": "filter",
            "source_file": "lib/base/src/result.ts", "module": FILTER, "code": FILTER.split("\n\n", 1)[1],
            "counter_example": False, "category": "basic", "pattern_types": ["result_creation"],
            "context": {"jsdoc": "Keep a success only when the predicate holds.",
                        "signature": "export const filter = <T, E>( predicate: (value: T) => boolean, errorIfFalse: E, "
                                     "result: Result<T, E>, ): Result<T, E>"}}
    tests = [{"id": f"t{i}", "source_kind": "test", "unit": "test_case", "name": f"t{i}", "module": m,
              "source_file": "lib/tests/result.test.ts"} for i, m in enumerate((TEST_FILTER, TEST_FILTER_2, TEST_OTHER))]
    return [unit, *tests]


@pytest.fixture(scope="module")
def qi_files():
    return modules.qi_export_files(typecheck.module_exports(SAMPLE_CORPUS))


def test_a_task_takes_the_unit_from_the_completion_and_the_rest_from_the_package(qi_files):
    tasks, counts = corpus_tasks.candidates(_records(), qi_files, ["throw"])
    assert counts == {"candidates": 1}
    task = tasks[0]
    assert task["id"] == "corpus-lib-base-src-result-filter" and task["entry"] == "filter"
    assert task["withheld"] == {"@qi/base": ["filter"]} and task["test_ids"] == ["t0", "t1"]
    assert task["signature"].startswith("export const filter") and "keep a success only when" in task["instruction"]
    test = task["test"]
    # The unit (under both local names) from the completion; the other names still from @qi/base.
    assert 'import { filter, filter as keep } from "./solution";' in test
    package_imports = [line for line in test.splitlines() if line.endswith('from "@qi/base";')]
    assert package_imports and "getError" in package_imports[0] and not any("filter" in line for line in package_imports)
    # Each test case in a block of its own: both declare `small`.
    assert test.count("{\ntest(") == 0 and test.count("\n{\n") == 2


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the isolated runner needs bubblewrap")
def test_a_task_is_usable_when_its_reference_passes_and_a_stub_fails(qi_files):
    tasks, _ = corpus_tasks.candidates(_records(), qi_files, ["throw"])
    broken = {**tasks[0], "id": "broken", "reference": FILTER.replace("? result : failure(errorIfFalse)", "? failure(errorIfFalse) : result")}
    with sandbox.Sandbox(SAMPLE_CORPUS, "tsconfig.json", timeout=10) as sb:
        usable, counts = corpus_tasks.checked([tasks[0], broken], sb)
    assert counts == {"reference_fails": 1, "usable": 1}
    # What the reference called through the package while its tests ran (not the unit itself).
    assert usable[0]["id"] == tasks[0]["id"] and usable[0]["required_calls"] == ["failure"]


TEST_FILTER_HANGS = '''import { test } from "node:test";
import { filter, success, validationError } from "@qi/base";

test("filter, once a timer the run never waits for fires", async () => {
  await new Promise((resolve) => setTimeout(resolve, 60_000));
  filter(() => true, validationError("late"), success(1));
});
'''


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the isolated runner needs bubblewrap")
def test_a_case_the_reference_fails_alone_is_dropped_not_the_task(qi_files):
    records = _records()
    records.insert(2, {**records[1], "id": "t-hangs", "module": TEST_FILTER_HANGS})
    tasks, _ = corpus_tasks.candidates(records, qi_files, ["throw"])
    assert tasks[0]["test_ids"] == ["t0", "t-hangs", "t1"]
    with sandbox.Sandbox(SAMPLE_CORPUS, "tsconfig.json", timeout=2) as sb:
        usable, counts = corpus_tasks.checked(tasks, sb)
    # The merged test timed out on the one case; the two others are the task's test now.
    assert counts == {"cases_dropped": 1, "usable": 1, "usable_with_cases_dropped": 1}
    task = usable[0]
    assert "60_000" not in task["test"] and "too small" in task["test"] and "earlier" in task["test"]
    assert task["cases_dropped"] == 1 and "_cases" not in task and task["required_calls"] == ["failure"]
    assert task["test_ids"] == ["t0", "t-hangs", "t1"]  # (all three stay out of training: derived_ids)


def test_cases_kept_are_those_that_passed_alone_quickest_first_within_the_budget():
    from types import SimpleNamespace as Run

    cases = ["a", "b", "c", "d", "e"]
    runs = [Run(status="pass", seconds=3.2), Run(status="pass", seconds=0.4), Run(status="timeout", seconds=10.0),
            Run(status="pass", seconds=2.2), Run(status="fail", seconds=0.3)]
    # Beyond the 0.2 s start-up: b 0.2, d 2.0, a 3.0; a budget of 5 s takes b and d, not a as well.
    assert corpus_tasks._within(cases, runs, start=0.2, budget=5.0) == ["b", "d"]
    assert corpus_tasks._within(cases, runs, start=0.2, budget=5.2) == ["a", "b", "d"]
    assert corpus_tasks._within(cases, runs, start=0.2, budget=0.1) == []


# A completion that hands back the package's own unit instead of writing it: none may pass.
BORROWED = {
    "import": 'import { filter as real } from "@qi/base";\nexport const filter = real;\n',
    "namespace": 'import * as base from "@qi/base";\nexport const filter = (base as any)["fil" + "ter"];\n',
    "require": 'const load: any = eval("req" + "uire");\nexport const filter = load("@qi/base").filter;\n',
    # Reached through another export: a function of the package whose closure holds the unit.
    "through_a_method": ('import * as base from "@qi/base";\n'
                         'export const filter = (...args: any[]) => (base as any).filter?.(...args) ?? (base as any)["filter"](...args);\n'),
}
# The same for a class: a wrapper around the instance another export of the package builds.
LOGGER_TEST = '''import assert from "node:assert/strict";
import { Logger, createMemorySink } from "@qi/core";

const memory = createMemorySink();
const logger = new Logger({ level: "info", name: "svc", sink: memory.sink });
logger.info("visible");
assert.equal(memory.entries.length, 1);
'''
BORROWED_CLASS = '''import { createLogger, type LoggerConfig } from "@qi/core";
import { unwrap } from "@qi/base";

export class Logger {
  private inner: any;
  constructor(config: LoggerConfig) { this.inner = unwrap(createLogger(config)); }
  info(message: string, context?: Record<string, unknown>): void { this.inner.info(message, context); }
}
'''


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the isolated runner needs bubblewrap")
def test_a_completion_cannot_borrow_the_withheld_unit(qi_files):
    task = corpus_tasks.candidates(_records(), qi_files, ["throw"])[0][0]
    logger_task = {**task, "id": "logger", "entry": "Logger", "required_calls": [], "forbidden": [],
                   "test": LOGGER_TEST.replace('import { Logger, createMemorySink } from "@qi/core";',
                                               'import { createMemorySink } from "@qi/core";\nimport { Logger } from "./solution";'),
                   "withheld": {"@qi/core": ["Logger"]}}
    items = [{"model": "reference", "task_id": task["id"], "completion": FILTER}]
    items += [{"model": name, "task_id": task["id"], "completion": code} for name, code in BORROWED.items()]
    items += [{"model": "class", "task_id": "logger", "completion": BORROWED_CLASS}]
    rows, _ = scoring.score(items, {task["id"]: task, "logger": logger_task}, project=SAMPLE_CORPUS)
    verdicts = {r["model"]: r for r in rows}
    assert verdicts["reference"]["passed"], verdicts["reference"]["test"]
    for name in [*BORROWED, "class"]:
        assert not verdicts[name]["passed"], (name, verdicts[name]["test"])
    # The wrapper's calls reached the real class's methods: the judge saw them.
    assert verdicts["class"]["test"].get("withheld_called") is True, verdicts["class"]["test"]


def test_hold_out_is_seeded_and_by_file():
    tasks = [{"id": f"{f}-{i}", "source_file": f} for f in "abcdefgh" for i in range(3)]
    one = corpus_tasks.hold_out(tasks, 0.5, seed=1)
    assert corpus_tasks.hold_out(tasks, 0.5, seed=1) == one
    files = {t["source_file"] for t in one}
    assert len(files) == 4 and len(one) == 12  # whole files, half of them
    assert {t["source_file"] for t in corpus_tasks.hold_out(tasks, 0.5, seed=2)} != files
    assert corpus_tasks.hold_out(tasks, 0, seed=1) == []
    with pytest.raises(ValueError, match="holdout_fraction"):
        corpus_tasks.hold_out(tasks, 1.5, seed=1)


def test_rows_derived_from_a_held_out_unit_are_named():
    held = [{"record_id": "u", "test_ids": ["t"]}]
    records = [{"id": "u"}, {"id": "t"}, {"id": "v", "parent_id": "u"}, {"id": "w", "parent_id": "x"}, {"id": "x"}]
    assert corpus_tasks.derived_ids(held, records) == {"u", "t", "v"}


VITEST_FILTER = '''import { describe, it, expect, vi } from "vitest";
import { filter, success, validationError } from "@qi/base";

describe("filter", () => {
  it("calls the predicate once and keeps big values", () => {
    const big = vi.fn((n: number) => n > 10);
    expect(filter(big, validationError("small"), success(40))).toEqual(success(40));
    expect(big).toHaveBeenCalledOnce();
    expect(big).toHaveBeenCalledWith(40);
  });
});
'''


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="the isolated runner needs bubblewrap")
def test_a_vitest_test_case_runs_on_node_test_with_jests_expect(qi_files):
    """The corpus's vitest test cases (describe/it/expect/vi from "vitest") run in the judge."""
    unit, *_ = _records()
    vitest_case = {"id": "v0", "source_kind": "test", "unit": "test_case", "name": "v0", "module": VITEST_FILTER,
                   "source_file": "lib/tests/filter.test.ts"}
    tasks, _ = corpus_tasks.candidates([unit, vitest_case], qi_files, ["throw"])
    assert 'from "vitest"' in tasks[0]["test"] and 'import { filter } from "./solution";' in tasks[0]["test"]
    wrong = {**tasks[0], "id": "wrong", "reference": FILTER.replace("predicate(result.value)", "(predicate(result.value), predicate(result.value))")}
    with sandbox.Sandbox(SAMPLE_CORPUS, "tsconfig.json", timeout=10) as sb:
        usable, counts = corpus_tasks.checked([tasks[0], wrong], sb)
    # The reference passes; calling the predicate twice fails toHaveBeenCalledOnce.
    assert counts == {"reference_fails": 1, "usable": 1} and usable[0]["id"] == tasks[0]["id"]


def test_merged_test_cases_keep_no_export_of_their_own(qi_files):
    """A test module that exports a helper (qi-v2-qicore's do) still merges: blocks cannot export."""
    unit, first, second, _ = _records()
    second = {**second, "module": TEST_FILTER_2.replace('const small = validationError("odd");',
                                                         'export const small = validationError("odd");')}
    task = corpus_tasks.candidates([unit, first, second], qi_files, ["throw"])[0][0]
    assert "export " not in task["test"] and 'const small = validationError("odd");' in task["test"]
