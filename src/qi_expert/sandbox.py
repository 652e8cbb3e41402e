"""Run untrusted TypeScript (model completions + a task's test) under node, in a sandbox.

Every test run gets:
- its own temporary folder (the only place it may write), with HOME pointing there;
- a scrubbed environment: PATH, HOME and LANG only;
- a wall-clock timeout, after which the whole process group is killed (SIGKILL);
- a memory cap: RLIMIT_DATA (private writable memory: heap, malloc, ArrayBuffers) plus
  `node --max-old-space-size`, with RLIMIT_AS only as a loose backstop. RLIMIT_AS alone cannot
  cap node: V8 reserves ~1 GB of address space at start-up (its CodeRange), so a tight RLIMIT_AS
  kills every node process, while RLIMIT_DATA counts what is really committed;
- RLIMIT_FSIZE (a flood of output or a huge file is stopped) and RLIMIT_CPU;
- no network: `unshare -rn` puts node in a new user + network namespace with no interface up
  (checked at run time; works here as root and for unprivileged users where user namespaces are
  enabled), plus `-p --fork --kill-child`, a new PID namespace, so nothing it starts outlives it.
  Where unshare is not usable, a preload (`--require`) replaces net/tls/http/dgram/dns entry points
  by functions that throw; this is weaker (native add-ons could bypass it) and is reported as
  `network_isolation: "preload"`;
- node's permission model (`--experimental-permission` on node 20, `--permission` on newer
  ones): file reads only in the sandbox folder and the compiled @qi packages, writes only in the
  sandbox folder, no child processes, no worker threads, no native add-ons.

A test passes when node exits 0 AND the runner printed its per-run nonce, which it does only
after the test module loaded completely and every top-level promise (the async IIFE of an async
test) settled: a completion that calls process.exit(0) early, or whose promise never resolves,
fails.

Limits applied with the `prlimit` command (util-linux) rather than a preexec_fn, which is not
safe in a multi-threaded parent (tests run from a thread pool); without prlimit, resource limits
are set in preexec_fn.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qi_expert.config import ROOT

EMITTER = Path(__file__).with_name("tsemit.cjs")
OUTPUT_LIMIT_BYTES = 8 << 20  # RLIMIT_FSIZE: stdout/stderr files and anything the test writes
MESSAGE_CHARS = 4000  # how much of stdout/stderr a result keeps

RUNNER = """\
"use strict";
// qi-eval sandbox runner: load the test, wait for its top-level promises, then print the nonce.
const fs = require("fs");
const NONCE = %(nonce)s;
const pending = new Set();
let loaded = false;
let rejected = false;
globalThis.__qiTrack = (value) => {
  if (value && typeof value.then === "function") {
    pending.add(value);
    value.then(() => pending.delete(value), (error) => {
      pending.delete(value);
      rejected = true;
      process.exitCode = 1;
      fs.writeSync(2, "test failed: " + (error && error.stack ? error.stack : String(error)) + "\\n");
    });
  }
  return value;
};
process.on("exit", (code) => {
  if (code !== 0 || rejected) return;
  if (!loaded) {
    fs.writeSync(2, "qi-eval: the process exited before the test finished loading\\n");
    process.exitCode = 4;
  } else if (pending.size) {
    fs.writeSync(2, "qi-eval: the test's async body never settled (a promise was left pending)\\n");
    process.exitCode = 3;
  } else {
    fs.writeSync(1, "\\n" + NONCE + "\\n");
  }
});
require("./test.js");
loaded = true;
"""

NET_BLOCK = """\
"use strict";
// qi-eval fallback network block (used only where `unshare -rn` is not available).
const deny = (what) => function () {
  const e = new Error("network access is disabled in the qi-eval sandbox (" + what + ")");
  e.code = "ERR_SANDBOX_NETWORK";
  throw e;
};
const patch = (mod, names) => {
  const m = require(mod);
  for (const n of names) if (typeof m[n] === "function") m[n] = deny(mod + "." + n);
  return m;
};
const net = patch("net", ["connect", "createConnection", "createServer"]);
net.Socket.prototype.connect = deny("net.Socket.connect");
patch("tls", ["connect", "createServer"]);
patch("http", ["request", "get", "createServer"]);
patch("https", ["request", "get", "createServer"]);
patch("http2", ["connect", "createServer", "createSecureServer"]);
patch("dgram", ["createSocket"]);
patch("dns", ["lookup", "resolve", "resolve4", "resolve6", "resolveAny", "lookupService"]);
const dnsp = require("dns").promises;
for (const n of ["lookup", "resolve", "resolve4", "resolve6", "resolveAny"]) dnsp[n] = deny("dns.promises." + n);
if (typeof globalThis.fetch === "function") globalThis.fetch = deny("fetch");
if (typeof globalThis.WebSocket === "function") globalThis.WebSocket = deny("WebSocket");
"""


class SandboxError(RuntimeError):
    pass


@dataclass
class RunResult:
    status: str  # pass | fail | timeout | memory | error
    exit_code: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(d["seconds"], 3)
        return d


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise SandboxError("node is not on PATH: the eval runs the tests with Node.js 18 or newer")
    return node


@lru_cache(maxsize=None)
def node_version() -> tuple[int, int, int]:
    out = subprocess.run([node_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(x) for x in out.strip().lstrip("v").split(".")[:3])  # type: ignore[return-value]


def permission_flag() -> str | None:
    v = node_version()
    if v >= (22, 13, 0):
        return "--permission"
    if v >= (20, 0, 0):
        return "--experimental-permission"
    return None


@lru_cache(maxsize=None)
def unshare_works() -> bool:
    """Can we put a process in new user, network and PID namespaces here?"""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        proc = subprocess.run([unshare, "-rnp", "--fork", "--kill-child", node_binary(), "-e",
                               "process.exit(Object.keys(require('os').networkInterfaces()).length)"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def isolation_mode(preference: str = "auto") -> str:
    """`unshare` when available (or asked), `preload` otherwise."""
    if preference == "preload":
        return "preload"
    if unshare_works():
        return "unshare"
    if preference == "unshare":
        raise SandboxError("unshare -rn does not work on this machine (user namespaces disabled?)")
    return "preload"


def _node_json(script: Path, payload: Mapping, timeout: float = 600) -> dict:
    proc = subprocess.run([node_binary(), str(script)], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise SandboxError(f"{script.name} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def emit(files: Sequence[Mapping], packages: Mapping | None = None) -> dict:
    """Emit CommonJS for [{source, out, track}] (and the @qi packages) in one node process."""
    return _node_json(EMITTER, {"files": list(files), "packages": packages})


class Sandbox:
    """A workspace holding the compiled @qi packages and one folder per test run.

    Use as a context manager; everything lives under one temporary folder removed at the end.
    """

    def __init__(self, project: Path, tsconfig: str = "tsconfig.json", *, timeout: float = 10,
                 memory_mb: int = 512, isolation: str = "auto", workers: int | None = None):
        self.project = Path(project).resolve()
        self.tsconfig = tsconfig
        self.timeout = float(timeout)
        self.memory_mb = int(memory_mb)
        self.isolation = isolation_mode(isolation)
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.root: Path | None = None
        self.packages: dict[str, str] = {}
        self.read_paths: list[Path] = []

    # -- set-up -------------------------------------------------------------------------
    def __enter__(self) -> "Sandbox":
        self._tmp = tempfile.TemporaryDirectory(prefix="qi-eval-")
        self.root = Path(self._tmp.name).resolve()
        runtime = self.root / "runtime"
        modules = runtime / "node_modules"
        modules.mkdir(parents=True)
        info = emit([], {"project": str(self.project), "tsconfig": self.tsconfig, "out": str(modules)})
        self.packages = info["packages"]
        if not self.packages:
            raise SandboxError(f"{self.project / self.tsconfig} maps no @qi package to a file in `paths`")
        self.read_paths = [runtime]
        # A corpus checkout with its npm dependencies installed (pino, zod, ... for the real @qi/core):
        # expose them read-only beside the compiled @qi packages.
        for deps in (self.project / "node_modules", self.project.parent / "node_modules"):
            if deps.is_dir():
                for entry in deps.iterdir():
                    target = modules / entry.name
                    if not target.exists() and entry.name != ".bin":
                        target.symlink_to(entry.resolve())
                        self.read_paths.append(entry.resolve())
                break
        (runtime / "netblock.js").write_text(NET_BLOCK, encoding="utf-8")
        (self.root / "runs").mkdir()
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def run_dir(self, name: str) -> Path:
        assert self.root is not None, "use Sandbox as a context manager"
        d = self.root / "runs" / name
        d.mkdir(parents=True, exist_ok=False)
        (d / "node_modules").symlink_to(self.root / "runtime" / "node_modules")
        return d

    # -- running ------------------------------------------------------------------------
    def prepare(self, jobs: Sequence[tuple[str, str, str]]) -> list[Path]:
        """[(name, solution_ts, test_ts)] -> run folders with solution.js, test.js, runner.js."""
        dirs, files = [], []
        for name, solution, test in jobs:
            d = self.run_dir(name)
            dirs.append(d)
            files.append({"source": solution, "out": str(d / "solution.js"), "fileName": str(d / "solution.ts")})
            files.append({"source": test, "out": str(d / "test.js"), "fileName": str(d / "test.ts"),
                          "track": True})
        if files:
            emit(files)
        return dirs

    def command(self, workdir: Path, script: str) -> list[str]:
        mem = self.memory_mb
        cmd: list[str] = []
        prlimit = shutil.which("prlimit")
        if prlimit:
            cmd += [prlimit, f"--data={(mem + 256) << 20}", f"--as={(mem + 3072) << 20}",
                    f"--fsize={OUTPUT_LIMIT_BYTES}", f"--cpu={int(self.timeout) + 2}", "--core=0", "--"]
        if self.isolation == "unshare":
            cmd += [shutil.which("unshare") or "unshare", "-rnp", "--fork", "--kill-child"]
        cmd += [node_binary(), f"--max-old-space-size={mem}"]
        flag = permission_flag()
        if flag:
            # One flag per folder: node 20 mis-parses comma-separated lists.
            cmd += [flag, *(f"--allow-fs-read={p}" for p in [workdir, *self.read_paths]),
                    f"--allow-fs-write={workdir}"]
        if self.isolation == "preload":
            cmd += ["--require", str(self.root / "runtime" / "netblock.js")]
        return cmd + [script]

    def _preexec(self):  # only without the prlimit command
        import resource

        mem = self.memory_mb
        resource.setrlimit(resource.RLIMIT_DATA, ((mem + 256) << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_AS, ((mem + 3072) << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES,) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (int(self.timeout) + 2,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def run(self, workdir: Path, script: str = "runner.js", nonce: str | None = None) -> RunResult:
        """Run `node script` in `workdir` under every limit; `nonce` marks a completed test."""
        workdir = Path(workdir)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8"}
        out_path, err_path = workdir / ".stdout", workdir / ".stderr"
        t0 = time.perf_counter()
        timed_out = False
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(self.command(workdir, script), cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True,
                                    preexec_fn=None if shutil.which("prlimit") else self._preexec)
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                code = proc.wait()
            finally:
                _kill_group(proc)  # anything left in the group (there should be nothing)
        seconds = time.perf_counter() - t0
        stdout, stderr = _read_capped(out_path), _read_capped(err_path)
        # Stack traces name files under the temporary root, whose random name would make two
        # evaluations of the same completions write different results.
        stdout, stderr = (s.replace(str(self.root), "<sandbox>") for s in (stdout, stderr))
        stderr = "\n".join(l for l in stderr.splitlines()
                           if "ExperimentalWarning: Permission" not in l and "--trace-warnings" not in l)
        if timed_out:
            return RunResult("timeout", None, seconds, stdout, stderr + f"\nqi-eval: stopped after {self.timeout:g}s")
        if code == 0 and (nonce is None or nonce in stdout):
            return RunResult("pass", code, seconds, stdout.replace(nonce or "\0", "").rstrip(), stderr)
        if max(_size(out_path), _size(err_path)) >= OUTPUT_LIMIT_BYTES:
            return RunResult("fail", code, seconds, stdout,
                             stderr + f"\nqi-eval: stopped at the {OUTPUT_LIMIT_BYTES >> 20} MB output limit")
        if _out_of_memory(code, stderr):
            return RunResult("memory", code, seconds, stdout, stderr + f"\nqi-eval: stopped at the {self.memory_mb} MB memory cap")
        if code == 0:
            stderr += "\nqi-eval: exited 0 without finishing the test"
        return RunResult("fail", code, seconds, stdout, stderr)

    def run_tests(self, jobs: Sequence[tuple[str, str, str]]) -> list[RunResult]:
        """[(name, solution_ts, test_ts)] -> one RunResult each, run in parallel."""
        dirs = self.prepare(jobs)
        nonces = []
        for d in dirs:
            nonce = "qi-eval-done-" + secrets.token_hex(12)
            (d / "runner.js").write_text(RUNNER % {"nonce": json.dumps(nonce)}, encoding="utf-8")
            nonces.append(nonce)
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda dn: self.run(dn[0], "runner.js", dn[1]), zip(dirs, nonces)))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_capped(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MESSAGE_CHARS * 4)
            size = path.stat().st_size
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if len(text) > MESSAGE_CHARS or size > len(data):
        text = text[:MESSAGE_CHARS] + f"\n... [{size} bytes in all]"
    return text


_OOM_MARKERS = ("heap out of memory", "Fatal process OOM", "Array buffer allocation failed",
                "Cannot allocate memory", "ENOMEM")


def _out_of_memory(code: int | None, stderr: str) -> bool:
    killed_by = {-signal.SIGABRT, -signal.SIGSEGV, -signal.SIGKILL, 128 + signal.SIGABRT, 128 + signal.SIGKILL,
                 128 + signal.SIGSEGV, 133, -signal.SIGTRAP}
    return any(m in stderr for m in _OOM_MARKERS) or (code in killed_by and "Error" not in stderr[:200])


def status_counts(results: Iterable[RunResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    return out
