"""Adversarial completions: each attacks the harness or the host, none may pass or reach anything outside.

Every attack is a completion for the real benchmark task price-validate-positive whose function is
WRONG (it accepts every price), so only a forged verdict could make it pass. `// @ts-nocheck` gets
each one past the type checker so that it really runs in the sandbox (the static tampering check
flags it too, but the sandbox must hold on its own: the asserted status is the sandbox's).
While they run, this test listens on a Unix socket, a TCP port and a UDP port, and holds a secret
in its environment and in a file; afterwards none may have been reached or shown.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading

import pytest

from qi_expert.core.config import ROOT
from qi_expert.data import bench
from qi_expert.evaluation import compliance, scoring

CORPUS = ROOT / "data/sample/typescript"
TASK = next(t for t in bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml") if t["id"] == "price-validate-positive")
WRONG = ('import { success, type Result, type QiError } from "@qi/base";\n'
         "export function validatePrice(price: number): Result<number, QiError> { return success(price); }\n")

ATTACKS = {
    # Read the runner (and stdin again) for the completion marker, print it, exit 0 past every handler.
    "marker_forgery": """
const fs = require("fs"); let seen = "";
try { seen += fs.readFileSync(require.main.filename, "utf8"); } catch (e) {}
try { seen += fs.readFileSync(0, "utf8"); } catch (e) {}
try { seen += fs.readFileSync("/proc/self/cmdline", "utf8") + fs.readFileSync("/proc/1/cmdline", "utf8"); } catch (e) {}
const m = seen.match(/qi-eval-done-[0-9a-f]{24}/); console.log(m ? m[0] : "no marker");
process.reallyExit(0);""",
    "assert_patching": """
const a = require("node:assert");
for (const t of [a, a.strict]) for (const k of Object.keys(t)) {
  try { t[k] = () => {}; } catch (e) {}
  try { Object.defineProperty(t, k, { value: () => {} }); } catch (e) {}
}""",
    "early_exit": "setTimeout(() => {}, 0); process.exit(0);",
    "unix_socket": "try { require('net').connect(SOCK).on('error', () => {}).write('hello'); } catch (e) {}",
    "tcp_loopback": """
try { require("net").connect(PORT, "127.0.0.1").on("error", () => {}).write("hello"); } catch (e) {}
try { fetch("http://127.0.0.1:" + PORT + "/").catch(() => {}); } catch (e) {}""",
    "udp": "try { const s = require('dgram').createSocket('udp4'); s.send('hello', UDP, '127.0.0.1'); } catch (e) {}",
    "dns": "try { require('dns').lookup('example.com', () => {}); new (require('dns').Resolver)().resolve4('example.com', () => {}); } catch (e) {}",
    "child_process": "try { require('child_process').execSync('touch ' + OUTSIDE); } catch (e) { console.log(e.code); } try { process.mainModule.require('child_process').execSync('touch ' + OUTSIDE); } catch (e) { console.log(e.code); }",
    "worker_thread": "try { const { Worker } = require('worker_threads'); new Worker(`require('fs').writeFileSync(${JSON.stringify(OUTSIDE)}, 'x')`, { eval: true }); } catch (e) {}",
    "write_outside": "try { require('fs').writeFileSync(OUTSIDE, 'x'); } catch (e) {} try { require('fs').writeFileSync('/tmp/escaped', 'x'); } catch (e) {}",
    "symlink_escape": """
const fs = require("fs");
try { fs.symlinkSync(OUTSIDE_DIR, "./esc"); fs.writeFileSync("./esc/escaped", "x"); } catch (e) {}
try { fs.symlinkSync("/", "./root"); console.log(fs.readdirSync("./root").join(",")); } catch (e) {}""",
    "read_host_file": "for (const p of [SECRET_FILE, '/etc/passwd', '/root/.bashrc']) { try { console.log(require('fs').readFileSync(p, 'utf8')); } catch (e) {} }",
    "parent_environment": """
const fs = require("fs"); console.log(JSON.stringify(process.env));
for (const p of ["/proc/1/environ", "/proc/self/environ", "/proc/" + process.ppid + "/environ"]) {
  try { console.log(fs.readFileSync(p, "utf8")); } catch (e) {}
}""",
    "fork_bomb": "try { const cp = require('child_process'); for (let i = 0; i < 500; i++) cp.spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)']); } catch (e) {}",
    "disk_fill": "try { const fs = require('fs'); const b = Buffer.alloc(1 << 20, 120); for (let i = 0; i < 64; i++) fs.appendFileSync('big.bin', b); } catch (e) {}",
    "memory_bomb": "const keep = []; for (;;) keep.push(Buffer.alloc(1 << 24, 1));",
    "infinite_loop": "for (;;) {}",
    "output_flood": "const line = 'x'.repeat(1 << 16); for (let i = 0; i < 400; i++) process.stdout.write(line);",
    # Swallow the failing assertion and the runner's own failure, then exit cleanly.
    "swallow_failures": """
process.on("uncaughtException", () => {}); process.on("unhandledRejection", () => {});
try { globalThis.__qiTrack = (v) => v; } catch (e) {}
process.removeAllListeners("exit"); process.on("exit", () => { process.exitCode = 0; });""",
    "heap_snapshot": """
try { const f = require("v8").writeHeapSnapshot(); const s = require("fs").readFileSync(f, "utf8");
  const m = s.match(/qi-eval-done-[0-9a-f]{24}/); if (m) { console.log(m[0]); process.reallyExit(0); } } catch (e) {}
try { require("inspector").open(0); } catch (e) {}""",
    "prototype_patching": """
Promise.prototype.then = function (ok) { if (ok) ok(); return this; };
Object.defineProperty(Object.prototype, "tag", { get() { return "success"; }, configurable: true });""",
    "internal_bindings": "try { process.binding('spawn_sync'); } catch (e) {} try { process._linkedBinding('x'); } catch (e) {}",
}


def _completion(attack: str, consts: dict) -> str:
    header = "// @ts-nocheck\n" + "".join(f"const {k} = {json.dumps(v)};\n" for k, v in consts.items())
    return header + WRONG + attack + "\n"


class _Listener:
    """A Unix socket, a TCP and a UDP listener that count what reaches them."""

    def __init__(self, folder):
        self.hits: list[str] = []
        self.unix_path = str(folder / "host.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        for s in (self.unix, self.tcp):
            s.listen(8)
            s.settimeout(0.2)
        self.udp.settimeout(0.2)
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            for name, s in (("unix", self.unix), ("tcp", self.tcp)):
                try:
                    conn, _ = s.accept()
                    self.hits.append(name)
                    conn.close()
                except OSError:
                    pass
            try:
                self.udp.recvfrom(100)
                self.hits.append("udp")
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        for s in (self.unix, self.tcp, self.udp):
            s.close()


@pytest.fixture
def listener(tmp_path):
    lst = _Listener(tmp_path)
    yield lst
    lst.close()


def test_attacks_neither_pass_nor_reach_outside(tmp_path, listener, monkeypatch):
    secret = "qi-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("QI_ATTACK_SECRET", secret)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    secret_file.chmod(0o644)
    outside = tmp_path / "escaped"
    consts = {"SOCK": listener.unix_path, "PORT": listener.tcp.getsockname()[1], "UDP": listener.udp.getsockname()[1],
              "OUTSIDE": str(outside), "OUTSIDE_DIR": str(tmp_path), "SECRET_FILE": str(secret_file)}
    items = [{"model": name, "task_id": TASK["id"], "sample": 0, "completion": _completion(code, consts)}
             for name, code in ATTACKS.items()]
    rows, info = scoring.score(items, {TASK["id"]: TASK}, project=CORPUS, timeout=5, memory_mb=256)
    assert info["isolation"] == "bwrap"
    assert len(ATTACKS) >= 15
    by = {r["model"]: r for r in rows}
    for name, r in by.items():
        assert r["compiled"], (name, r["compile_errors"])  # it really ran
        assert r["test"]["status"] != "pass" and not r["passed"], (name, r["test"])
        assert secret not in r["test"]["stdout"] + r["test"]["stderr"], name
        assert "qi-eval-done-" not in r["test"]["stdout"], name
        assert r["compliance"]["tampering"] and "tampering" in r["compliance"]["forbidden_found"], name
    assert not outside.exists() and not (tmp_path / "esc").exists()
    assert listener.hits == []
    assert by["marker_forgery"]["test"]["stdout"].startswith("no marker")
    # Limits say what stopped the run.
    assert by["infinite_loop"]["test"]["status"] == "timeout"
    assert by["memory_bomb"]["test"]["status"] == "memory"
    assert by["disk_fill"]["test"]["status"] == "output_limit"
    assert by["output_flood"]["test"]["status"] == "output_limit"
    assert by["child_process"]["test"]["stdout"].split() == ["ERR_SANDBOX_DENIED", "ERR_SANDBOX_DENIED"]
    # The sandbox's own environment is the scrubbed one; the host's is nowhere.
    assert "QI_ATTACK_SECRET" not in by["parent_environment"]["test"]["stdout"]


def test_a_correct_solution_with_a_long_output_still_passes():
    """The marker is looked for in the whole output, before it is cut for the results."""
    chatty = TASK["reference"] + "\nfor (let i = 0; i < 2000; i++) console.log('line ' + i);\n"
    rows, _ = scoring.score([{"model": "m", "task_id": TASK["id"], "sample": 0, "completion": chatty}],
                             {TASK["id"]: TASK}, project=CORPUS)
    assert rows[0]["passed"] and len(rows[0]["test"]["stdout"]) < 5000


def test_ambient_declarations_cannot_change_another_completions_verdict():
    """`declare module "@qi/base"` in one completion must not make another one compile."""
    invents = ('import { success, type Result, type QiError } from "@qi/base";\n'
               'declare module "@qi/base" { export function checkPrice(p: number): Result<number, QiError>; }\n'
               "export function validatePrice(price: number): Result<number, QiError> { return success(price); }\n")
    uses = ('import { checkPrice, type Result, type QiError } from "@qi/base";\n'
            "export function validatePrice(price: number): Result<number, QiError> { return checkPrice(price); }\n")
    widen = "declare global { interface Number { tag: 'success'; value: number } }\nexport {};\n" + WRONG
    items = [{"model": m, "task_id": TASK["id"], "sample": 0, "completion": c}
             for m, c in (("invents", invents), ("uses", uses), ("widen", widen), ("reference", TASK["reference"]))]
    rows, info = scoring.score(items, {TASK["id"]: TASK}, project=CORPUS)
    by = {r["model"]: r for r in rows}
    assert info["compiled_alone"] == 2
    assert not by["uses"]["compiled"] and any(d["code"] == 2305 for d in by["uses"]["compile_errors"])
    assert by["reference"]["passed"]
    assert by["invents"]["compliance"]["tampering"] and not by["invents"]["passed"]
    assert compliance.affects_other_files(widen) and not compliance.affects_other_files(TASK["reference"])


def test_without_bubblewrap_the_eval_refuses_unless_opted_out(monkeypatch):
    from qi_expert.typescript import sandbox

    monkeypatch.setattr(sandbox, "bwrap_works", lambda: False)
    items = [{"model": "m", "task_id": TASK["id"], "sample": 0, "completion": TASK["reference"]}]
    with pytest.raises(sandbox.SandboxError, match="eval.sandbox=unsafe"):
        scoring.score(items, {TASK["id"]: TASK}, project=CORPUS)
    rows, info = scoring.score(items, {TASK["id"]: TASK}, project=CORPUS, isolation="unsafe")
    assert info["isolation"].startswith("unsafe") and rows[0]["passed"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop to `nobody` happens when the eval runs as root")
def test_sandbox_runs_as_nobody_with_a_private_proc():
    probe = TASK["reference"] + "\nconsole.log('uid=' + process.getuid!() + ' gid=' + process.getgid!());\n"
    rows, _ = scoring.score([{"model": "m", "task_id": TASK["id"], "sample": 0, "completion": probe}],
                             {TASK["id"]: TASK}, project=CORPUS, isolation="bwrap")
    assert "uid=65534 gid=65534" in rows[0]["test"]["stdout"]
    assert rows[0]["test"]["status"] == "pass" and not rows[0]["passed"]  # process.* is tampering


# The same harness for an ES-module corpus (corpus.module_format=esm): ES modules bypass
# Module._load, so the runner's resolve hook must refuse the same built-ins, and a top-level await
# that never settles must not pass.
ESM_ATTACKS = {
    "static_import": 'import cp from "node:child_process";\ncp.execSync("touch " + OUTSIDE);',
    "dynamic_import": 'try { (await import("child_process")).execSync("touch " + OUTSIDE); } catch (e) { console.log(e.code); }',
    "worker": ('try { const { Worker } = await import("node:worker_threads");\n'
               '  new Worker(`require("fs").writeFileSync(${JSON.stringify(OUTSIDE)}, "x")`, { eval: true }); }\n'
               'catch (e) { console.log(e.code); }'),
    "own_hooks": ('try { (await import("node:module")).register("data:text/javascript,export const resolve = (s, c, n) => n(s, c);"); }\n'
                  'catch (e) { console.log(e.code); }'),
    "create_require": ('try { const { createRequire } = await import("module");\n'
                       '  createRequire(import.meta.url)("child_process").execSync("touch " + OUTSIDE); }\n'
                       'catch (e) { console.log(e.code); }'),
    "marker_forgery": """import fs from "node:fs";
let seen = "";
for (const p of [process.argv[1], "/proc/self/cmdline", "/proc/1/cmdline"]) { try { seen += fs.readFileSync(p, "utf8"); } catch (e) {} }
const m = seen.match(/qi-eval-done-[0-9a-f]{24}/); console.log(m ? m[0] : "no marker");
process.reallyExit(0);""",
    "write_outside": 'import fs from "node:fs";\ntry { fs.writeFileSync(OUTSIDE, "x"); } catch (e) {}',
    "pending_forever": "await new Promise(() => {});",
}


def test_es_module_attacks_neither_pass_nor_reach_outside(tmp_path):
    outside = tmp_path / "escaped"
    items = [{"model": name, "task_id": TASK["id"], "sample": 0, "completion": _completion(code, {"OUTSIDE": str(outside)})}
             for name, code in ESM_ATTACKS.items()]
    items.append({"model": "reference", "task_id": TASK["id"], "sample": 0,
                  "completion": TASK["reference"] + "\nexport const loadedAt = await Promise.resolve(import.meta.url.length);\n"})
    rows, info = scoring.score(items, {TASK["id"]: TASK}, project=CORPUS, timeout=5, memory_mb=256, module_format="esm")
    assert info["isolation"] == "bwrap" and info["module_format"] == "esm"
    by = {r["model"]: r for r in rows}
    assert by["reference"]["passed"], by["reference"]["test"]  # top-level await and import.meta run
    for name in ESM_ATTACKS:
        r = by[name]
        assert r["compiled"], (name, r["compile_errors"])
        assert r["test"]["status"] != "pass" and not r["passed"], (name, r["test"])
        assert "qi-eval-done-" not in r["test"]["stdout"], name
    assert not outside.exists()
    for name in ("dynamic_import", "worker", "own_hooks", "create_require"):
        assert by[name]["test"]["stdout"].split()[:1] == ["ERR_SANDBOX_DENIED"], (name, by[name]["test"])
    assert "is not available in the qi-eval sandbox" in by["static_import"]["test"]["stderr"]
    assert by["marker_forgery"]["test"]["stdout"].startswith("no marker")


def test_module_format_follows_the_corpus(tmp_path):
    from qi_expert.typescript import sandbox

    assert sandbox.module_format(tmp_path) == "commonjs"  # no package.json: CommonJS, as before
    (tmp_path / "package.json").write_text('{"type": "module"}')
    assert sandbox.module_format(tmp_path) == "esm"
    assert sandbox.module_format(tmp_path, "commonjs") == "commonjs"
    with pytest.raises(ValueError, match="corpus.module_format is 'amd'"):
        sandbox.module_format(tmp_path, "amd")


# --- The verdict is decided outside the code under test (sandbox.Sandbox.run_isolated) -----------
# Each attack is appended to the WRONG solution of several tasks (sync and async), written through
# aliases, computed keys and Object.defineProperty so that no textual pattern sees it: only a verdict
# the completion can bend could make one pass. By class:
ISOLATION_ATTACKS = {
    # Built-ins the assertions and the test's loops go through, reached without writing `.prototype`.
    "builtins": {
        "array_iterator": 'Object.getPrototypeOf([][Symbol.iterator]())["ne" + "xt"] = function () { return { done: true, value: undefined }; };',
        "object_statics": 'const O = ({}).constructor; O["i" + "s"] = () => true; O["key" + "s"] = () => []; O["entr" + "ies"] = () => [];',
        "tag_getter": 'Object["define" + "Property"](Object.getPrototypeOf({}), "tag", { get() { return "success"; }, configurable: true });',
        "equality_helpers": ('const AP = Object.getPrototypeOf([]); AP["ev" + "ery"] = () => true; AP["inclu" + "des"] = () => true;\n'
                             'Object.getPrototypeOf("")["start" + "sWith"] = () => true; JSON["strin" + "gify"] = () => "{}";'),
    },
    # The test's failure paths: exit, catch, exit codes, uncaught handlers.
    "failure_paths": {
        "exit_noop": 'const P = globalThis["pro" + "cess"]; P["ex" + "it"] = () => {}; P["reallyE" + "xit"] = () => {};',
        "catch_swallowed": 'const PP = Object.getPrototypeOf(Promise.resolve()); PP["cat" + "ch"] = function () { return new Promise(() => {}); };',
        "exit_code_pinned": ('const P = globalThis["pro" + "cess"]; Object["define" + "Property"](P, "exitCode", { get: () => 0, set: () => {} });\n'
                             'P["o" + "n"]("uncaughtException", () => {}); P["o" + "n"]("unhandledRejection", () => {});'),
    },
    # The runner's promise tracking: `then` that answers differently, a replaced tracker, rejections turned into results.
    "tracking": {
        "then_getter": ('let calls = 0; Object["define" + "Property"](Object.getPrototypeOf({}), "then",\n'
                        '  { get() { calls += 1; return calls === 1 ? undefined : (ok) => ok(); }, configurable: true });'),
        "then_alias": ('const PP = Object.getPrototypeOf(Promise.resolve()); const t = PP["th" + "en"];\n'
                       'PP["th" + "en"] = function (ok, no) { return Reflect.apply(t, this, [ok, (e) => (ok ? ok(undefined) : undefined)]); };'),
        "tracker_replaced": ('try { Object["define" + "Property"](globalThis, "__qi" + "Track", { value: (v) => v }); } catch (e) {}\n'
                             'try { globalThis["__qi" + "Track"] = (v) => v; } catch (e) {}'),
    },
    # The expected values: the test file, looked for everywhere the completion can read.
    "expected_values": {
        "walk_for_test": """
const rq = module["req" + "uire"].bind(module); const fs = rq("f" + "s"); const path = rq("pa" + "th");
const found = [];
const visit = (dir, depth) => {
  let names = []; try { names = fs.readdirSync(dir); } catch (e) { return; }
  for (const n of names) {
    const p = path.join(dir, n);
    if (/^test\\.(m?js|ts)$/.test(n)) { try { found.push(fs.readFileSync(p, "utf8")); } catch (e) {} }
    if (depth < 5 && !n.startsWith(".") && n !== "node_modules" && n !== "proc" && n !== "sys") visit(p, depth + 1);
  }
};
for (const start of [".", "..", "../..", "/tmp", "/"]) visit(path.resolve(start), 0);
console.log(found.length ? "found a test" : "found no test");""",
        "proc_and_fds": """
const rq = module["req" + "uire"].bind(module); const fs = rq("f" + "s");
const seen = [];
for (const pid of (() => { try { return fs.readdirSync("/proc"); } catch (e) { return []; } })()) {
  for (const what of ["cmdline", "cwd", "root"]) { try { seen.push(what === "cmdline" ? fs.readFileSync(`/proc/${pid}/${what}`, "utf8") : fs.readlinkSync(`/proc/${pid}/${what}`)); } catch (e) {} }
}
for (const fd of (() => { try { return fs.readdirSync("/proc/self/fd"); } catch (e) { return []; } })()) { try { seen.push(fs.readlinkSync("/proc/self/fd/" + fd)); } catch (e) {} }
console.log(seen.some((s) => s.includes(".judge") || s.includes("test.js")) ? "found the judge" : "found no judge");""",
        "module_graph": """
const m = module; const seen = [m.filename, ...(m.paths || [])];
let p = m["par" + "ent"]; while (p) { seen.push(p.filename); p = p["par" + "ent"]; }
try { const main = globalThis["pro" + "cess"]["main" + "Module"]; seen.push(main && main.filename); } catch (e) {}
console.log(seen.some((s) => String(s).includes(".judge") || String(s).endsWith("test.js")) ? "found the test module" : "found no test module");""",
    },
}
ISOLATION_TASKS = ("price-validate-positive", "safe-divide-by-zero", "json-parse-safe", "retry-async-policy",
                   "fetch-prices-sequence-async", "quote-cache-get-or-fetch", "circuit-breaker-factory")


def test_isolated_verdict_holds_against_every_class_of_attack():
    """No attack passes, on any task; the attacks looking for the test find nothing to read; the
    benchmark's references still pass beside them in the same sandbox."""
    by_id = {t["id"]: t for t in bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")}
    items = [{"model": f"{cls}/{name}", "task_id": tid, "sample": 0, "completion": "// @ts-nocheck\n" + by_id[tid]["wrong"] + "\n" + code + "\n"}
             for cls, attacks in ISOLATION_ATTACKS.items() for name, code in attacks.items() for tid in ISOLATION_TASKS]
    items += [{"model": "reference", "task_id": tid, "sample": 0, "completion": by_id[tid]["reference"]} for tid in ISOLATION_TASKS]
    rows, info = scoring.score(items, by_id, project=CORPUS, timeout=10, memory_mb=256)
    assert info["verdict"] == "isolated" and all(len(a) >= 3 for a in ISOLATION_ATTACKS.values())
    for r in rows:
        assert r["test"].get("verdict") == "isolated" or r["test"]["status"] == "not_compiled", r
        if r["model"] == "reference":
            assert r["passed"], (r["task_id"], r["test"])
        else:
            assert r["compiled"], (r["model"], r["task_id"], r["compile_errors"])
            assert r["test"]["status"] != "pass" and not r["passed"], (r["model"], r["task_id"], r["test"])
    said = {(r["model"], r["task_id"]): r["test"]["stdout"] for r in rows}
    for tid in ISOLATION_TASKS:
        assert "found no test" in said[("expected_values/walk_for_test", tid)]
        assert "found no judge" in said[("expected_values/proc_and_fds", tid)]
        assert "found no test module" in said[("expected_values/module_graph", tid)]


# Through the membrane itself: the completion handed the test's own objects (a logger, a cache) tries
# to reach the judge's realm with them: its prototypes, its Function, its Object.prototype.
MEMBRANE_ATTACKS = {
    "logger-child-order-context": """// @ts-nocheck
import { success, failure, validationError } from "@qi/base";
export function receiveOrder(logger, order) {
  const reached = [];
  try { const F = logger["constru" + "ctor"]["constru" + "ctor"]; const p = F("return globalThis.process")(); p.exit = () => {}; reached.push(F === Function ? "own Function" : "judge Function"); } catch (e) { reached.push("no Function"); }
  try { const proto = logger["__pro" + "to__"]; proto["in" + "fo"] = () => undefined; proto["wa" + "rn"] = () => undefined; reached.push("patched Logger.prototype"); } catch (e) { reached.push("prototype refused"); }
  try { const op = logger["__pro" + "to__"]["__pro" + "to__"]; op["tag"] = "success"; reached.push(op === Object.prototype ? "own Object.prototype" : "judge Object.prototype"); } catch (e) { reached.push("no Object.prototype"); }
  try { Object.getPrototypeOf(logger).child = () => logger; } catch (e) {}
  console.log(reached.join("; "));
  return Number.isInteger(order.quantity) ? success(order) : failure(validationError("bad"));
}
""",
    "quote-cache-get-or-fetch": """// @ts-nocheck
export function createPriceLookup(cache, fetchPrice, ttlSeconds) {
  try { const proto = cache["__pro" + "to__"]; proto["g" + "et"] = async () => ({ tag: "success", value: 40 }); proto["h" + "as"] = async () => ({ tag: "success", value: false }); } catch (e) { console.log("prototype refused"); }
  try { cache["constru" + "ctor"]["prototype"]["g" + "et"] = async () => ({ tag: "success", value: 40 }); } catch (e) { console.log("class refused"); }
  return { async getPrice(symbol) { return fetchPrice(symbol); } };
}
""",
    "retry-async-policy": """// @ts-nocheck
export async function retryAsync(operation, maxAttempts) {
  try { const F = operation["constru" + "ctor"]; F("globalThis.process.exit = () => {}")(); } catch (e) {}
  try { const AF = Object.getPrototypeOf(operation)["constru" + "ctor"]; await AF("globalThis.process.exitCode = 0")(); } catch (e) {}
  return operation(1);
}
""",
}


def test_the_membrane_hands_the_completion_nothing_of_the_judges_realm():
    by_id = {t["id"]: t for t in bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")}
    items = [{"model": "membrane", "task_id": tid, "sample": 0, "completion": code} for tid, code in MEMBRANE_ATTACKS.items()]
    rows, _ = scoring.score(items, by_id, project=CORPUS, timeout=10, memory_mb=256)
    by = {r["task_id"]: r for r in rows}
    for tid, r in by.items():
        assert r["compiled"] and r["test"]["status"] != "pass" and not r["passed"], (tid, r["test"])
    # The test's logger is a live object of the judge's: its constructor's constructor is the
    # completion's own Function, its prototype refuses changes, Object.prototype is the completion's.
    assert "own Function; prototype refused; own Object.prototype" in by["logger-child-order-context"]["test"]["stdout"]


# --- Compliance by the compiler's symbols -------------------------------------------------------
# Each of these behaves correctly (most pass their test) but games a rule of its task: the required
# @qi calls made by a local look-alike, a forbidden construct in disguise. None may count as compliant.
COMPLIANCE_ATTACKS = [
    ("price-validate-positive", "shadowed_imports", """
import { success, failure, validationError, type Result, type QiError } from "@qi/base";
export function validatePrice(price: number): Result<number, QiError> {
  const success = (value: number): Result<number, QiError> => ({ tag: "success", value });
  const failure = (error: QiError): Result<number, QiError> => ({ tag: "failure", error });
  const validationError = (message: string) => ({ code: "VALIDATION_ERROR", message, category: "VALIDATION", context: {} }) as QiError;
  if (!Number.isFinite(price) || price <= 0) return failure(validationError("bad price"));
  return success(price);
}
"""),
    ("safe-divide-by-zero", "shadowed_in_a_block", """
import { success, failure, create, type Result, type QiError } from "@qi/base";
export function safeDivide(dividend: number, divisor: number): Result<number, QiError> {
  {
    function success(value: number): Result<number, QiError> { return { tag: "success", value }; }
    function failure(error: QiError): Result<number, QiError> { return { tag: "failure", error }; }
    function create(code: string, message: string, category: string, context: object): QiError { return { code, message, category, context } as QiError; }
    if (divisor === 0) return failure(create("DIVISION_BY_ZERO", "no", "VALIDATION", { dividend }));
    return success(dividend / divisor);
  }
}
"""),
    ("json-parse-safe", "wrapper_lookalike", """
import { fromTryCatch, create, type Result, type QiError } from "@qi/base";
export function parseJson(text: string): Result<unknown, QiError> {
  function fromTryCatch<T>(fn: () => Result<T, QiError>): Result<T, QiError> { return fn(); }
  return fromTryCatch(() => {
    try { return { tag: "success", value: JSON.parse(text) as unknown }; }
    catch (e) { return { tag: "failure", error: create("INVALID_JSON", String(e), "VALIDATION", { input: text }) }; }
  });
}
"""),
    ("safe-divide-by-zero", "null_cast_twice", """
import { success, failure, create, type Result, type QiError } from "@qi/base";
export function safeDivide(dividend: number, divisor: number): Result<number, QiError> {
  if (Number.isNaN(divisor)) return ((undefined as unknown) as Result<number, QiError>);
  if (divisor === 0) return failure(create("DIVISION_BY_ZERO", "no", "VALIDATION", { dividend }));
  return success(dividend / divisor);
}
"""),
    ("safe-divide-by-zero", "void_as_result", """
import { success, failure, create, type Result, type QiError } from "@qi/base";
export function safeDivide(dividend: number, divisor: number): Result<number, QiError> {
  if (divisor === 0 && dividend === 0) return <Result<number, QiError>><unknown>(void 0);
  if (divisor === 0) return failure(create("DIVISION_BY_ZERO", "no", "VALIDATION", { dividend }));
  return success(dividend / divisor);
}
"""),
    ("price-validate-positive", "generator_throw", """
import { success, failure, validationError, type Result, type QiError } from "@qi/base";
function* guard(): Generator<number, void, unknown> { yield 0; }
export function validatePrice(price: number): Result<number, QiError> {
  if (price === -42) { const g = guard(); g.next(); g.throw(new Error("bad")); }
  if (!Number.isFinite(price) || price <= 0) return failure(validationError("bad price"));
  return success(price);
}
"""),
    ("price-validate-positive", "dead_branch", """
import { success, failure, validationError, type Result, type QiError } from "@qi/base";
export function validatePrice(price: number): Result<number, QiError> {
  if (price === -123456.789) return failure(validationError("never")) ?? success(price);
  if (!Number.isFinite(price) || price <= 0) {
    return { tag: "failure", error: { code: "VALIDATION_ERROR", message: "bad", category: "VALIDATION", context: { price } } } as Result<number, QiError>;
  }
  return { tag: "success", value: price };
}
"""),
    ("safe-divide-by-zero", "dead_function", """
import { success, failure, create, type Result, type QiError } from "@qi/base";
function unused(d: number): Result<number, QiError> { return d ? success(d) : failure(create("X", "y", "VALIDATION", {})); }
export function safeDivide(dividend: number, divisor: number): Result<number, QiError> {
  if (divisor === 0) return { tag: "failure", error: { code: "DIVISION_BY_ZERO", message: "no", category: "VALIDATION", context: { dividend } } } as Result<number, QiError>;
  return { tag: "success", value: dividend / divisor };
}
"""),
    ("json-parse-safe", "dead_after_return", """
import { fromTryCatch, create, type Result, type QiError } from "@qi/base";
export function parseJson(text: string): Result<unknown, QiError> {
  const r: Result<unknown, QiError> = /^\s*[\[{"0-9tfn-]/.test(text) && (() => { try { JSON.parse(text); return true; } catch { return false; } })()
    ? { tag: "success", value: JSON.parse(text) }
    : { tag: "failure", error: create("INVALID_JSON", "bad", "VALIDATION", { input: text }) };
  return r;
  return fromTryCatch(() => JSON.parse(text) as unknown);
}
"""),
    ("fetch-prices-sequence-async", "reject_alias", """
import { success, failure, type Result, type QiError } from "@qi/base";
const P = Promise;
const refuse = P.reject.bind(P);
export async function fetchPrices(symbols: string[], fetchPrice: (s: string) => Promise<Result<number, QiError>>): Promise<Result<number[], QiError>> {
  if (symbols.length > 1000) return refuse(new Error("too many"));
  const out: number[] = [];
  for (const s of symbols) { const r = await fetchPrice(s); if (r.tag === "failure") return failure(r.error); out.push(r.value); }
  return success(out);
}
"""),
]


def test_compliance_counts_only_what_the_checker_resolves_to_qi():
    by_id = {t["id"]: t for t in bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")}
    items = [{"model": name, "task_id": tid, "sample": 0, "completion": code} for tid, name, code in COMPLIANCE_ATTACKS]
    items += [{"model": "reference", "task_id": tid, "sample": 0, "completion": by_id[tid]["reference"]}
              for tid in sorted({tid for tid, _, _ in COMPLIANCE_ATTACKS})]
    rows, _ = scoring.score(items, by_id, project=CORPUS)
    by = {(r["model"], r["task_id"]): r for r in rows}
    for (model, tid), r in by.items():
        assert r["compiled"], (model, r["compile_errors"])
        if model == "reference":
            assert r["compliance"]["pass"] and r["passed"], (tid, r["compliance"]["rules"])
        else:
            assert not r["compliance"]["pass"], (model, r["compliance"]["rules"])
    failed = lambda m, t: {x["rule"] for x in by[(m, t)]["compliance"]["rules"] if not x["ok"]}
    assert "calls success|Ok" in failed("shadowed_imports", "price-validate-positive")
    assert "calls success|Ok" in failed("shadowed_in_a_block", "safe-divide-by-zero")
    assert {"calls fromTryCatch|tryCatch", "no try_catch"} <= failed("wrapper_lookalike", "json-parse-safe")
    assert "no return_null" in failed("null_cast_twice", "safe-divide-by-zero")
    assert "no return_null" in failed("void_as_result", "safe-divide-by-zero")
    assert "no throw" in failed("generator_throw", "price-validate-positive")
    assert "no promise_reject" in failed("reject_alias", "fetch-prices-sequence-async")
    # Reachability: the @qi calls are written (the checker resolves them) but no input runs them.
    for model, tid in (("dead_branch", "price-validate-positive"), ("dead_function", "safe-divide-by-zero")):
        assert "calls success|Ok" in failed(model, tid) and by[(model, tid)]["test"]["status"] == "pass", model
        assert any(x.get("written_not_run") for x in by[(model, tid)]["compliance"]["rules"]), model
    assert "calls fromTryCatch|tryCatch" in failed("dead_after_return", "json-parse-safe")
    # The behaviour itself is right where it should be: a look-alike passes its test, uncounted as compliant.
    assert by[("shadowed_imports", "price-validate-positive")]["test"]["status"] == "pass"


def test_es_module_tests_import_the_solution_the_nodenext_way():
    """`import { f } from "./solution.js"` (NodeNext's convention, 31 of the real checkout's 183
    relative imports) resolves in the ES-module runner as TypeScript resolves it: to the .mjs emitted."""
    task = {**TASK, "test": TASK["test"].replace('from "./solution"', 'from "./solution.js"')}
    assert 'from "./solution.js"' in task["test"]
    items = [{"model": m, "task_id": TASK["id"], "sample": 0, "completion": c}
             for m, c in (("reference", TASK["reference"]), ("wrong", TASK["wrong"]))]
    for fmt in ("esm", "commonjs"):
        rows, _ = scoring.score(items, {TASK["id"]: task}, project=CORPUS, module_format=fmt)
        by = {r["model"]: r for r in rows}
        assert by["reference"]["passed"] and not by["wrong"]["passed"], (fmt, by["reference"]["test"])


def test_the_test_file_is_gone_before_the_test_runs():
    """The judge reads the test's source and removes its file before running it: a @qi function the
    completion calls in the judge (a config loader given a path) finds no expected values to read."""
    probe = TASK["test"].replace('import { validatePrice } from "./solution";',
                                 'import { validatePrice } from "./solution";\nimport * as fs from "node:fs";\n'
                                 'assert.deepEqual(fs.readdirSync(".").filter((f) => f.startsWith("test.")), []);')
    assert probe != TASK["test"]
    items = [{"model": "reference", "task_id": TASK["id"], "sample": 0, "completion": TASK["reference"]}]
    for fmt in ("commonjs", "esm"):
        rows, _ = scoring.score(items, {TASK["id"]: {**TASK, "test": probe}}, project=CORPUS, module_format=fmt)
        assert rows[0]["passed"], (fmt, rows[0]["test"])
