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

from qi_expert import bench, compliance, evaluate
from qi_expert.config import ROOT

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
    rows, info = evaluate.score(items, {TASK["id"]: TASK}, project=CORPUS, timeout=5, memory_mb=256)
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
    rows, _ = evaluate.score([{"model": "m", "task_id": TASK["id"], "sample": 0, "completion": chatty}],
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
    rows, info = evaluate.score(items, {TASK["id"]: TASK}, project=CORPUS)
    by = {r["model"]: r for r in rows}
    assert info["compiled_alone"] == 2
    assert not by["uses"]["compiled"] and any(d["code"] == 2305 for d in by["uses"]["compile_errors"])
    assert by["reference"]["passed"]
    assert by["invents"]["compliance"]["tampering"] and not by["invents"]["passed"]
    assert compliance.affects_other_files(widen) and not compliance.affects_other_files(TASK["reference"])


def test_without_bubblewrap_the_eval_refuses_unless_opted_out(monkeypatch):
    from qi_expert import sandbox

    monkeypatch.setattr(sandbox, "bwrap_works", lambda: False)
    items = [{"model": "m", "task_id": TASK["id"], "sample": 0, "completion": TASK["reference"]}]
    with pytest.raises(sandbox.SandboxError, match="eval.sandbox=unsafe"):
        evaluate.score(items, {TASK["id"]: TASK}, project=CORPUS)
    rows, info = evaluate.score(items, {TASK["id"]: TASK}, project=CORPUS, isolation="unsafe")
    assert info["isolation"].startswith("unsafe") and rows[0]["passed"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop to `nobody` happens when the eval runs as root")
def test_sandbox_runs_as_nobody_with_a_private_proc():
    probe = TASK["reference"] + "\nconsole.log('uid=' + process.getuid!() + ' gid=' + process.getgid!());\n"
    rows, _ = evaluate.score([{"model": "m", "task_id": TASK["id"], "sample": 0, "completion": probe}],
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
    rows, info = evaluate.score(items, {TASK["id"]: TASK}, project=CORPUS, timeout=5, memory_mb=256, module_format="esm")
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
    from qi_expert import sandbox

    assert sandbox.module_format(tmp_path) == "commonjs"  # no package.json: CommonJS, as before
    (tmp_path / "package.json").write_text('{"type": "module"}')
    assert sandbox.module_format(tmp_path) == "esm"
    assert sandbox.module_format(tmp_path, "commonjs") == "commonjs"
    with pytest.raises(ValueError, match="corpus.module_format is 'amd'"):
        sandbox.module_format(tmp_path, "amd")
