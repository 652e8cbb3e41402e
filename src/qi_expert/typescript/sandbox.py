"""Run untrusted TypeScript (model completions + a task's test) under node, in an OS-level sandbox.

Model-written code is hostile until proven otherwise. Every test run gets (isolation "bwrap", the
default and the only one the eval accepts without an explicit opt-in):
- bubblewrap (the sandbox under Flatpak; Debian's `bubblewrap`): new user, pid, network, ipc, uts
  and mount namespaces (--unshare-all), --die-with-parent, --new-session (no terminal to inject
  into), every capability dropped, an empty environment but PATH/HOME/LANG, a private /proc that
  shows only the sandbox's processes, a private /dev and an empty tmpfs /tmp. The file system is
  /usr read-only (node and its libraries), the compiled @qi packages read-only, and the run's own
  folder read-write: no host /etc, /run (no Unix sockets of the host), /home, /root or repository;
- when the eval runs as root: the code runs as the real user `nobody` (setpriv, no capabilities),
  so RLIMIT_NPROC binds and nothing inside is root on the host (a user namespace would map it to
  root); unprivileged, a new user namespace instead;
- rlimits (prlimit): RLIMIT_DATA (private writable memory) plus `node --max-old-space-size` as the
  memory cap (RLIMIT_AS only as a loose backstop: V8 reserves ~1 GB of address space at start-up),
  RLIMIT_NPROC (no fork bomb), RLIMIT_FSIZE (no disk fill), RLIMIT_CPU, no core files; a wall-clock
  timeout after which the whole process group is killed;
- node's permission model inside it (`--permission` / `--experimental-permission` on node 20): file
  reads only in the run folder and the compiled packages, writes only in the run folder, no child
  processes, workers or native add-ons (node says it is no security boundary: bubblewrap is).

Verdicts decided outside the code under test (run_isolated, the eval's): the completion runs alone
in one sandbox (sandbox_js/host.cjs) and the task's test in another (judge.cjs), two processes
joined by two pipes through a membrane (membrane.cjs) that rebuilds every value from the receiving
side's own built-ins. The test file, its expected values, node:assert, the promise tracking and the
exit path are in the judge's process only. The @qi packages are loaded in the judge too and served
to the completion through the membrane, so the judge counts the @qi calls the completion makes
(RunResult.qi_calls: compliance by what runs). A test passes when the judge exits 0 AND its stdout
holds the run's nonce, which it prints only after the test module loaded completely and every
top-level promise settled; the nonce reaches the judge on stdin. The nonce is looked for in the
whole output before the output is cut for the results.

run_tests keeps the in-realm runner (runner.cjs: the test and the code in one process, node:assert
frozen, the denied modules refused by guard.cjs) for the validate stage's variants, whose unit sits
inside the test module itself.

`isolation="unsafe"` (eval.sandbox=unsafe) is the explicit opt-in for machines without bubblewrap:
`unshare -rnp` (or, where that fails, a preload that replaces the network modules) and node's
permission model only; the eval prints it and records it in its metrics and MLflow.

Limits are applied with the `prlimit` command (util-linux) rather than a preexec_fn, which is not
safe in a multi-threaded parent (tests run from a thread pool).

One module of ~700 lines on purpose (with its JavaScript in sandbox_js/): it is the project's one
security boundary, and a reviewer should read all of it (the bwrap command, the limits, the runtime
a test sees, among it the vitest stand-in, the runners and their verdicts) in one place. What could
leave it without weakening that, the TypeScript emitter call (`emit`), is 30 lines.
"""

from __future__ import annotations

import json
import os
import secrets
import select
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

from qi_expert.core import node
from qi_expert.core.config import ROOT

EMITTER = Path(__file__).with_name("tsemit.cjs")
# The isolated verdict (Sandbox.run_isolated): the completion (host.cjs) and the test (judge.cjs) in
# two processes, two sandboxes, joined by two pipes through membrane.cjs.
JS_DIR = Path(__file__).with_name("sandbox_js")
# run_tests (the validate stage's variants): the in-realm runner.cjs. netblock.cjs: the network block
# of isolation "unsafe (preload)". The modules every runner refuses: guard.cjs.
RUNTIME_JS = ("membrane.cjs", "host.cjs", "judge.cjs", "runner.cjs", "verdict.cjs", "guard.cjs", "esm-hooks.mjs",
              "netblock.cjs")
OUTPUT_LIMIT_BYTES = 8 << 20  # RLIMIT_FSIZE: stdout/stderr files and anything the test writes
MESSAGE_CHARS = 4000  # how much of stdout/stderr a result keeps (after the verdict)
NPROC_LIMIT = 256  # processes of the sandbox's user (`nobody` under root): no fork bomb

MODULE_FORMATS = ("commonjs", "esm")


def module_format(project: Path, setting: str = "auto", param: str = "corpus.module_format") -> str:
    """commonjs or esm: `auto` follows the corpus (its package.json's "type": "module" means ESM)."""
    if setting in MODULE_FORMATS:
        return setting
    if setting != "auto":
        raise ValueError(f"{param} is {setting!r}: auto, commonjs or esm")
    manifest = Path(project) / "package.json"
    try:
        return "esm" if json.loads(manifest.read_text(encoding="utf-8")).get("type") == "module" else "commonjs"
    except (OSError, ValueError):
        return "commonjs"

class SandboxError(RuntimeError):
    pass


@dataclass
class RunResult:
    status: str  # pass | fail | timeout | cpu | memory | output_limit
    exit_code: int | None
    seconds: float
    stdout: str
    stderr: str

    qi_calls = None  # run_isolated: {@qi name: calls} the judge counted (not in to_dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(d["seconds"], 3)
        return d


def node_binary() -> str:
    found = node.binary()
    if found is None:
        raise SandboxError("node is not on PATH: the eval runs the tests with Node.js 18 or newer")
    return found


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
    """Can we put a process in new user, network and PID namespaces here? (isolation "unsafe" only)"""
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


NOBODY = 65534
# The one command that gives this machine the sandbox (set-up runs it when it is root).
INSTALL_HINT = "apt-get install bubblewrap (Debian/Ubuntu; `make setup` does it as root), or dnf install bubblewrap"


def bwrap_command(*, read_only: Sequence[Path | tuple[Path, Path]] = (), read_write: Sequence[Path] = (),
                  chdir: Path | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """bubblewrap around a command: namespaces new, /usr and `read_only` read-only, `read_write` writable.

    Unprivileged: a new user namespace too (--unshare-all) and every capability dropped. As root, a
    user namespace would map the sandbox to host root; instead bwrap (root) makes the mounts and the
    command runs as the real user `nobody` (setpriv: no capabilities, empty bounding set, no new
    privileges), so RLIMIT_NPROC binds and nothing inside is root on the host. `read_only` folders
    must be readable by `nobody` (their own permission bits; their parents need not be); an entry
    (source, target) shows `source` at `target` (a symlinked folder where code expects it).
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    root = os.geteuid() == 0
    cmd = [bwrap, "--die-with-parent", "--new-session", "--clearenv"]
    cmd += (["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"] if root
            else ["--unshare-all", "--cap-drop", "ALL"])
    for k, v in (env or {}).items():
        cmd += ["--setenv", k, v]
    cmd += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    node_home = Path(node_binary()).resolve().parents[1]
    if not str(node_home).startswith("/usr/") and str(node_home) != "/usr":
        cmd += ["--ro-bind", str(node_home), str(node_home)]  # node installed elsewhere (nvm, /opt)
    # Parents of the mount points, traversable by `nobody` (bwrap would make them 0700).
    ro = [(Path(p[0]), Path(p[1])) if isinstance(p, tuple) else (Path(p), Path(p)) for p in read_only]
    parents = sorted({a for p in [*(t for _, t in ro), *read_write] for a in Path(p).parents if str(a) not in ("/", "/usr")
                      and not str(a).startswith("/usr/")}, key=lambda a: len(a.parts))
    for a in parents:
        cmd += ["--perms", "0755", "--dir", str(a)]
    for src, target in ro:
        cmd += ["--ro-bind", str(src), str(target)]
    for p in read_write:
        cmd += ["--bind", str(p), str(p)]
    if chdir is not None:
        cmd += ["--chdir", str(chdir)]
    if root:
        setpriv = shutil.which("setpriv")
        if setpriv is None or not setpriv.startswith("/usr/"):
            raise SandboxError("running as root without util-linux's setpriv in /usr: the sandbox would run as root")
        cmd += [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs"]
    return cmd


@lru_cache(maxsize=None)
def bwrap_works() -> bool:
    """Does bubblewrap run node here (installed, user namespaces allowed)?"""
    if shutil.which("bwrap") is None:
        return False
    try:
        proc = subprocess.run(bwrap_command() + [node_binary(), "-e", "process.exit(require('fs').existsSync('/etc/passwd') ? 3 : 0)"],
                              capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired, SandboxError):
        return False
    return proc.returncode == 0


def isolation_mode(preference: str = "bwrap", param: str = "eval.sandbox") -> str:
    """"bwrap" (fails closed where bubblewrap cannot run), or, opted into by name, "unsafe (unshare|preload)".

    `param`: the setting the preference came from, named in the errors (eval.sandbox, augment.sandbox).
    """
    if preference in ("bwrap", "auto"):
        if not bwrap_works():
            raise SandboxError("the eval runs model-written code only inside bubblewrap, which "
                               + ("is not installed" if shutil.which("bwrap") is None else "cannot run here (user namespaces disabled?)")
                               + f": {INSTALL_HINT}. To run it without OS-level isolation anyway, opt in with "
                               f"{param}=unsafe (recorded in the metrics)")
        return "bwrap"
    if preference == "unsafe":
        return "unsafe (unshare)" if unshare_works() else "unsafe (preload)"
    if preference in ("unsafe (unshare)", "unsafe (preload)"):  # already resolved
        return preference
    raise SandboxError(f"{param} is {preference!r}: bwrap (OS-level isolation) or unsafe (explicit opt-out)")


def _node_json(script: Path, payload: Mapping, timeout: float = 600, writable: Sequence[Path] = ()) -> dict:
    """Run one of our node scripts on a JSON payload; with `writable`, inside bubblewrap writing only there."""
    found = node.modules()
    if found is None:
        raise SandboxError("TypeScript is not installed: run `npm ci` (make setup does)")
    modules = found.resolve()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "NODE_PATH": str(modules)}
    cmd = [node_binary(), str(script)]
    if writable:
        cmd = bwrap_command(read_only=[script.parent, modules], read_write=writable, env=env, chdir=script.parent) + cmd
    proc = subprocess.run(cmd, input=json.dumps(payload), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SandboxError(f"{script.name} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def emit(files: Sequence[Mapping], packages: Mapping | None = None, writable: Sequence[Path] = (),
         format: str = "commonjs") -> dict:
    """Emit CommonJS or ES modules (`format`) for [{source, out, track}] (and the @qi packages) in one node process.

    `writable`: the compiler reads untrusted source, so it runs in bubblewrap, writing only there."""
    return _node_json(EMITTER, {"files": list(files), "packages": packages, "format": format}, writable=writable)


class Sandbox:
    """A workspace holding the compiled @qi packages and one folder per test run.

    Use as a context manager; everything lives under one temporary folder removed at the end.
    """

    def __init__(self, project: Path, tsconfig: str = "tsconfig.json", *, timeout: float = 10,
                 memory_mb: int = 512, isolation: str = "bwrap", workers: int | None = None,
                 module_format: str = "commonjs", dependencies: Path | None = None):
        if module_format not in MODULE_FORMATS:
            raise ValueError(f"module format {module_format!r}: one of {MODULE_FORMATS}")
        self.module_format = module_format
        self.dependencies = Path(dependencies).resolve() if dependencies else None  # npmdeps.install
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
        info = emit([], {"project": str(self.project), "tsconfig": self.tsconfig, "out": str(modules)},
                    format=self.module_format)
        self.packages = info["packages"]
        if not self.packages:
            raise SandboxError(f"{self.project / self.tsconfig} maps no @qi package to a file in `paths`")
        self.read_paths = [runtime]
        # A corpus's npm dependencies (pino, zod, ... for the real @qi/core), installed for it
        # (corpus.install_dependencies) or in the checkout: read-only beside the compiled @qi packages.
        candidates = [self.dependencies] if self.dependencies else []
        for deps in candidates + [self.project / "node_modules", self.project.parent / "node_modules"]:
            if deps.is_dir():
                for entry in deps.iterdir():
                    target = modules / entry.name
                    if not target.exists() and entry.name != ".bin":
                        target.symlink_to(entry.resolve())
                        self.read_paths.append(entry.resolve())
                break
        for script in RUNTIME_JS:  # the runners, the membrane, the guard, the ES-module hooks, the net block
            shutil.copyfile(JS_DIR / script, runtime / script)
        self._vitest(modules)
        (self.root / "runs").mkdir()
        for p in [runtime, *runtime.rglob("*")]:  # readable by `nobody`, whatever the umask
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        return self

    def _vitest(self, modules: Path) -> None:
        """`vitest` for the corpus's own test cases: sandbox_js/vitest.cjs (node:test with Jest's `expect`
        and `jest-mock`, from the project's pinned toolchain, read-only). It replaces a vitest the
        corpus's dependencies bring: vitest's own API works only inside its runner (imported by plain
        node it stops with "Vitest failed to access its internal state")."""
        toolchain = node.modules()
        if toolchain is None or not (toolchain / "expect").is_dir() or not (toolchain / "jest-mock").is_dir():
            return  # without them a vitest test fails to load, and the corpus benchmark leaves it out
        shim = modules / "vitest"
        if shim.is_symlink():
            shim.unlink()
        shim.mkdir()
        (shim / "package.json").write_text('{"name": "vitest", "main": "index.cjs"}\n', encoding="utf-8")
        shutil.copyfile(JS_DIR / "vitest.cjs", shim / "index.cjs")
        for name in ("expect", "jest-mock"):
            if (modules / name).is_symlink():
                (modules / name).unlink()
            (modules / name).symlink_to((toolchain / name).resolve())
        # Their own dependencies resolve from where they lie: the toolchain's node_modules, read-only.
        self.read_paths.append(toolchain.resolve())

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def run_dir(self, name: str) -> Path:
        assert self.root is not None, "use Sandbox as a context manager"
        d = self.root / "runs" / name
        d.mkdir(parents=True, exist_ok=False)
        (d / "node_modules").symlink_to(self.root / "runtime" / "node_modules")
        if os.geteuid() == 0 and self.isolation == "bwrap":
            # The run folder is the one place the sandbox writes (as `nobody`). Unsafe isolation runs
            # as root mapped into a user namespace, which may write only what root owns.
            os.chown(d, NOBODY, NOBODY)
        return d

    # -- running ------------------------------------------------------------------------
    def prepare(self, jobs: Sequence[tuple[str, str, str]]) -> list[Path]:
        """[(name, solution_ts, test_ts)] -> run folders with solution.js and test.js (.mjs for ES modules)."""
        dirs, files = [], []
        ext = ".mjs" if self.module_format == "esm" else ".js"
        for name, solution, test in jobs:
            d = self.run_dir(name)
            dirs.append(d)
            files.append({"source": solution, "out": str(d / f"solution{ext}"), "fileName": str(d / "solution.ts")})
            files.append({"source": test, "out": str(d / f"test{ext}"), "fileName": str(d / "test.ts"),
                          "track": True})
        if files:
            emit(files, writable=[self.root / "runs"] if self.isolation == "bwrap" else (), format=self.module_format)
        return dirs

    def command(self, workdir: Path, script: str | Sequence[str]) -> list[str]:
        mem = self.memory_mb
        cmd: list[str] = []
        prlimit = shutil.which("prlimit")
        if prlimit:
            # CPU: SIGXCPU at the soft limit, SIGKILL a second later.
            cmd += [prlimit, f"--data={(mem + 256) << 20}", f"--as={(mem + 3072) << 20}",
                    f"--fsize={OUTPUT_LIMIT_BYTES}", f"--cpu={int(self.timeout) + 2}:{int(self.timeout) + 3}",
                    "--core=0", f"--nproc={NPROC_LIMIT}", "--"]
        if self.isolation == "bwrap":
            cmd += bwrap_command(read_only=self.read_paths, read_write=[workdir], chdir=workdir,
                                 env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"})
        elif self.isolation == "unsafe (unshare)":
            cmd += [shutil.which("unshare") or "unshare", "-rnp", "--fork", "--kill-child"]
        cmd += [node_binary(), f"--max-old-space-size={mem}"]
        flag = permission_flag()
        if flag:
            # One flag per folder: node 20 mis-parses comma-separated lists.
            cmd += [flag, *(f"--allow-fs-read={p}" for p in [workdir, *self.read_paths]),
                    f"--allow-fs-write={workdir}"]
            if self.module_format == "esm":
                # Node 20 runs module hooks on a worker thread; the code under test still cannot
                # start one (the hook refuses worker_threads), and bubblewrap holds either way.
                cmd += ["--allow-worker"]
        if self.isolation == "unsafe (preload)":
            cmd += ["--require", str(self.root / "runtime" / "netblock.cjs")]
        return cmd + ([script] if isinstance(script, str) else list(script))

    def _preexec(self):  # only without the prlimit command
        import resource

        mem = self.memory_mb
        resource.setrlimit(resource.RLIMIT_DATA, ((mem + 256) << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_AS, ((mem + 3072) << 20,) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES,) * 2)
        resource.setrlimit(resource.RLIMIT_CPU, (int(self.timeout) + 2,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (NPROC_LIMIT,) * 2)

    def run(self, workdir: Path, script: str | Sequence[str], nonce: str | None = None) -> RunResult:
        """Run `node script [args]` in `workdir` under every limit; `nonce` (sent on stdin) marks a completed test."""
        workdir = Path(workdir)
        out_path, err_path = workdir / ".stdout", workdir / ".stderr"
        t0 = time.perf_counter()
        timed_out = False
        proc = self._spawn(workdir, [script] if isinstance(script, str) else list(script), ())
        with proc.qi_outputs[0], proc.qi_outputs[1]:
            try:
                try:
                    proc.stdin.write(((nonce or "") + "\n").encode())
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass  # it exited before reading: its exit status says why
                code = _wait(proc, self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                code = proc.wait()
            finally:
                _kill_group(proc)  # anything left in the group (there should be nothing)
        seconds = time.perf_counter() - t0
        # The verdict reads the whole output (up to RLIMIT_FSIZE) before it is cut for the results.
        completed = nonce is not None and _contains(out_path, nonce)
        stdout, stderr = _read_capped(out_path), _read_capped(err_path)
        # Stack traces name files under the temporary root, whose random name would make two
        # evaluations of the same completions write different results.
        stdout, stderr = (s.replace(str(self.root), "<sandbox>") for s in (stdout, self._clean(stderr)))
        if timed_out:
            return self._stopped("timeout", None, seconds, stdout, stderr)
        if code == 0 and (nonce is None or completed):
            return RunResult("pass", code, seconds, stdout.replace(nonce or "\0", "").rstrip(), stderr)
        return self._stopped(self._limit_hit(code, stderr, [workdir]) or "fail", code, seconds, stdout, stderr)

    def _limit_hit(self, code: int | None, stderr: str, folders: Sequence[Path]) -> str | None:
        """Which limit ended a process that exited with `code` (None: none did)."""
        if code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "EFBIG" in stderr or any(_hit_file_limit(f) for f in folders):
            return "output_limit"
        if code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return "cpu"
        if code is not None and _out_of_memory(code, stderr):
            return "memory"
        return None

    def _stopped(self, status: str, code: int | None, seconds: float, stdout: str, stderr: str) -> RunResult:
        """A run that did not pass, with the line saying what stopped it."""
        said = {"timeout": f"stopped after {self.timeout:g}s",
                "output_limit": f"stopped at the {OUTPUT_LIMIT_BYTES >> 20} MB output limit",
                "cpu": f"stopped at the {int(self.timeout) + 2}s CPU limit",
                "memory": f"stopped at the {self.memory_mb} MB memory cap",
                "fail": "exited 0 without finishing the test" if code == 0 else ""}[status]
        return RunResult(status, code, seconds, stdout, stderr + (f"\nqi-eval: {said}" if said else ""))

    def run_tests(self, jobs: Sequence[tuple[str, str, str]]) -> list[RunResult]:
        """[(name, solution_ts, test_ts)] -> one RunResult each, run in parallel."""
        dirs = self.prepare(jobs)
        runner = [str(self.root / "runtime" / "runner.cjs"), self.module_format]
        nonces = ["qi-eval-done-" + secrets.token_hex(12) for _ in dirs]
        pool = ThreadPoolExecutor(self.workers)
        try:
            return list(pool.map(lambda dn: self.run(dn[0], runner, dn[1]), zip(dirs, nonces)))
        finally:
            # On Ctrl+C / SIGTERM (config.stage_entry) the tests not yet started are dropped; running
            # ones end within their timeout and `run` kills their process groups.
            pool.shutdown(wait=True, cancel_futures=True)


    # -- the isolated verdict -------------------------------------------------------------
    # judge.cjs counts the completion's calls to a withheld @qi name under this key.
    WITHHELD_CALL = "qi-eval:withheld"

    def run_isolated(self, jobs: Sequence[tuple]) -> list[RunResult]:
        """[(name, solution_ts, test_ts[, withheld])] -> one RunResult each: the verdict decided outside the code under test.

        The completion runs alone in its sandbox (host.cjs: its module and nothing else); the test
        runs in a second sandbox (judge.cjs), with the completion's exports reached through two pipes
        (membrane.cjs). The test file, its expected values, its assertions and the nonce that marks a
        finished test are never in the completion's sandbox, and nothing crosses but serialised
        values and requests, so the completion cannot rewrite what judges it. The result's stdout is
        the completion's output then the test's; stderr the test's failure then the completion's.
        `withheld` ({package: [names]}): names the judge's packages do not serve the completion; a
        call the completion makes to one of them anyway shows in `qi_calls` under WITHHELD_CALL.
        """
        assert self.root is not None, "use Sandbox as a context manager"
        ext = ".mjs" if self.module_format == "esm" else ".js"
        pairs, files = [], []
        for name, solution, test, *rest in jobs:
            code_dir, judge_dir = self.run_dir(name), self.run_dir(f"{name}.judge")
            pairs.append((code_dir, judge_dir))
            if rest and rest[0]:
                # {package: [names]} the judge does not serve the completion (a corpus task's unit).
                (judge_dir / "withheld.json").write_text(json.dumps(rest[0]), encoding="utf-8")
            files.append({"source": solution, "out": str(code_dir / f"solution{ext}"), "fileName": str(code_dir / "solution.ts")})
            files.append({"source": test, "out": str(judge_dir / f"test{ext}"), "fileName": str(judge_dir / "test.ts"),
                          "track": True})
        if files:
            emit(files, writable=[self.root / "runs"] if self.isolation == "bwrap" else (), format=self.module_format)
        pool = ThreadPoolExecutor(self.workers)
        try:
            return list(pool.map(lambda pair: self.run_pair(*pair), pairs))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def run_pair(self, code_dir: Path, judge_dir: Path) -> RunResult:
        """The completion in `code_dir` and the test in `judge_dir`, each under every limit of `run`.

        The result's `qi_calls` ({@qi name: calls}, or None when the judge did not finish) counts
        the @qi functions and methods the completion called during the test, as the judge saw them."""
        result, qi_calls = self._run_pair(code_dir, judge_dir)
        result.qi_calls = qi_calls
        return result

    def _run_pair(self, code_dir: Path, judge_dir: Path) -> tuple[RunResult, dict | None]:
        runtime = self.root / "runtime"
        fmt = self.module_format
        to_code, from_judge = os.pipe()  # judge -> completion
        to_judge, from_code = os.pipe()  # completion -> judge
        for fd in (to_code, from_judge, to_judge, from_code):
            os.set_blocking(fd, False)
        # Each read end once more, as a file of its own that blocks: a side waiting for an answer
        # sleeps in read() on it, where polling the first cost both processes CPU the other needed.
        wait_code, wait_judge = (_reopen_blocking(fd) for fd in (to_code, to_judge))
        nonce = "qi-eval-done-" + secrets.token_hex(12)
        t0 = time.perf_counter()
        served = json.dumps(sorted(self.packages))  # the @qi packages: loaded by the judge, served to the completion
        code = self._spawn(code_dir, [str(runtime / "host.cjs"), f"{to_code},{wait_code}", str(from_code), fmt, served],
                           (to_code, wait_code, from_code))
        judge = self._spawn(judge_dir, [str(runtime / "judge.cjs"), f"{to_judge},{wait_judge}", str(from_judge), fmt, served],
                            (to_judge, wait_judge, from_judge))
        for fd in (to_code, wait_code, from_judge, to_judge, wait_judge, from_code):
            os.close(fd)  # each end now lives only in its process: a process that ends closes its pipes
        timed_out = False
        try:
            try:
                judge.stdin.write((nonce + "\n").encode())
                judge.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            code.stdin.close()
            try:
                judge_code = _wait(judge, self.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(judge)
                judge_code = judge.wait()
        finally:
            # How the completion's process ended by itself (None: still running, killed below by us).
            code_exit = code.poll()
            for proc in (judge, code):
                _kill_group(proc)
                proc.wait()
        seconds = time.perf_counter() - t0
        for proc in (judge, code):
            for f in proc.qi_outputs:
                f.close()
        passed = judge_code == 0 and _contains(judge_dir / ".stdout", nonce)
        qi_calls = _qi_calls(judge_dir / ".stdout")
        outs = [_read_capped(d / ".stdout") for d in (code_dir, judge_dir)]
        outs[1] = "\n".join(l for l in outs[1].splitlines() if not l.startswith(QI_CALLS)).strip()
        errs = [_read_capped(d / ".stderr") for d in (judge_dir, code_dir)]
        stdout = "\n".join(o for o in outs if o).replace(nonce, "").rstrip()
        stderr = "\n".join(self._clean(e) for e in errs if e)
        stdout, stderr = (x.replace(str(self.root), "<sandbox>") for x in (stdout, stderr))
        if passed:
            return RunResult("pass", judge_code, seconds, stdout, stderr), qi_calls
        # What stopped the completion's process says more than the judge's failure it caused (a
        # process still running when the judge ended was killed by us: its exit says nothing).
        hit = self._limit_hit(code_exit, errs[1], [code_dir, judge_dir]) if code_exit is not None else \
            ("output_limit" if _hit_file_limit(code_dir) or _hit_file_limit(judge_dir) else None)
        status = hit if hit and not (hit == "memory" and timed_out) else "timeout" if timed_out else "fail"
        return self._stopped(status, None if status == "timeout" else judge_code, seconds, stdout, stderr), qi_calls

    def _spawn(self, workdir: Path, argv: list[str], fds: tuple[int, ...]) -> subprocess.Popen:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8"}
        cmd = self.command(workdir, argv)
        out, err = (workdir / ".stdout").open("wb"), (workdir / ".stderr").open("wb")
        try:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    start_new_session=True, pass_fds=fds,
                                    preexec_fn=None if shutil.which("prlimit") else self._preexec)
        except BaseException:
            out.close()
            err.close()
            raise
        proc.qi_outputs = (out, err)
        return proc

    @staticmethod
    def _clean(stderr: str) -> str:
        return "\n".join(l for l in stderr.splitlines()
                         if "ExperimentalWarning: Permission" not in l and "--trace-warnings" not in l
                         and "SecurityWarning: The flag --allow-worker" not in l)


QI_CALLS = "qi-eval-calls "  # the judge's last line but the nonce: {@qi name: calls} (judge.cjs)


def _qi_calls(path: Path) -> dict | None:
    """The @qi calls the judge counted, from its own output (the completion cannot write there)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - (1 << 20)))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith(QI_CALLS):
            try:
                found = json.loads(line[len(QI_CALLS):])
            except ValueError:
                return None
            return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else None
    return None


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout), woken by the exit itself: Popen.wait with a timeout polls, sleeping up to
    50 ms between looks, and that sleep was a third of a test run (the benchmark's 108 runs: ~40 ms
    each between the judge's exit and its verdict; benchmarks/sandbox_overhead.py)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: Python's polling wait
        return proc.wait(timeout=timeout)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def _reopen_blocking(fd: int) -> int:
    """A second open file of the pipe `fd` reads from, in blocking mode (O_NONBLOCK belongs to an
    open file, so `fd` stays non-blocking: the event loop's socket of membrane.listen() reads it)."""
    again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)  # (opening a FIFO to read would wait for a writer)
    os.set_blocking(again, True)
    return again


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _contains(path: Path, needle: str) -> bool:
    """Does the file hold `needle` anywhere (read in overlapping chunks, never all at once)?"""
    data = needle.encode()
    tail = b""
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                if data in tail + chunk:
                    return True
                tail = chunk[-len(data):]
    except OSError:
        return False
    return False


def _hit_file_limit(folder: Path) -> bool:
    """Did any file of the run (its output included) reach RLIMIT_FSIZE? (node ignores SIGXFSZ: writes fail with EFBIG)"""
    try:
        return any(p.is_file() and not p.is_symlink() and _size(p) >= OUTPUT_LIMIT_BYTES for p in folder.rglob("*"))
    except OSError:
        return False


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
