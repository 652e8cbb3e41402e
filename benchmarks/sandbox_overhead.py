"""What the OS-level sandbox and the isolated verdict cost: the benchmark's 54 references and 54 wrong solutions.

    python benchmarks/sandbox_overhead.py [--repeat 3]

Scores every reference and every wrong solution of data/qi-bench/tasks.yaml with the eval's scorer
(one compiler program, tests run in parallel as the eval runs them) under isolation "bwrap" (the
default: bubblewrap, nobody, rlimits, node's permission model, the compiler in the sandbox too) and
"unsafe" (the opt-out: unshare -rnp + node's permission model, as before). Prints the test-run and
compile seconds (best of --repeat) and whether the verdicts agree: every reference passes, every
wrong solution fails. A third row runs bwrap with the in-realm runner the eval used before the
isolated verdict (Sandbox.run_tests: test and completion in one node process), to show what the
second process and the membrane cost. Then the floor of a process per realm (one sandboxed node
that does nothing) and the median latency of one run at a time. Wall seconds swing with a
neighbour's load on a shared machine; the test runs' CPU seconds (the whole machine's, from
/proc/stat) swing less.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.data import bench  # noqa: E402
from qi_expert.evaluation import scoring
from qi_expert.typescript import sandbox


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")
    by_id = {t["id"]: t for t in tasks}
    items = [{"model": kind, "task_id": t["id"], "sample": 0, "completion": t[kind]}
             for kind in ("reference", "wrong") for t in tasks]
    isolated, in_realm = sandbox.Sandbox.run_isolated, sandbox.Sandbox.run_tests
    modes = ("unsafe", "bwrap", "bwrap, in-realm runner")
    runs: dict[str, list] = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode in modes:  # (interleaved: a neighbour's load on the machine falls on every mode alike)
            # The in-realm runner: what the eval ran before the isolated verdict. (The benchmark's
            # tasks withhold nothing: the jobs' fourth element is dropped.)
            run = (lambda self, jobs: in_realm(self, [j[:3] for j in jobs])) if "in-realm" in mode else isolated
            cpu: list[float] = []

            def measured(self, jobs, run=run, cpu=cpu):
                before = machine_cpu_seconds()
                try:
                    return run(self, jobs)
                finally:
                    cpu.append(machine_cpu_seconds() - before)

            sandbox.Sandbox.run_isolated = measured
            rows, info = scoring.score(items, by_id, project=ROOT / "data/sample/typescript", isolation=mode.split(",")[0])
            info["isolation"] = mode.replace("bwrap", info["isolation"])
            info["test_cpu_seconds"] = sum(cpu)
            runs[mode].append((rows, info))
    results = {}
    for mode in modes:
        rows, info = min(runs[mode], key=lambda run: run[1]["test_seconds"])
        info["test_cpu_seconds"] = min(i["test_cpu_seconds"] for _, i in runs[mode])
        ok = all(r["passed"] == (r["model"] == "reference") for run_rows, _ in runs[mode] for r in run_rows)
        ran = sum(r["test"]["status"] != "not_compiled" for r in rows)
        results[mode] = (info, ok, ran)
    print("| isolation | tests run | test seconds (per test) | test CPU seconds | compile seconds | verdicts as expected |")
    print("|---|---|---|---|---|---|")
    for isolation, (info, ok, ran) in results.items():
        print(f"| {info['isolation']} | {ran} | {info['test_seconds']:.2f} ({info['test_seconds'] / ran:.3f}) "
              f"| {info['test_cpu_seconds']:.2f} | {info['compile_seconds']:.2f} | {'yes' if ok else 'NO'} |")
    u, b, old = results["unsafe"][0], results["bwrap"][0], results["bwrap, in-realm runner"][0]
    print(f"bwrap / unsafe: tests {b['test_seconds'] / u['test_seconds']:.2f}x, "
          f"compile {b['compile_seconds'] / u['compile_seconds']:.2f}x")
    print(f"isolated verdict / in-realm runner (bwrap): tests {b['test_seconds'] / old['test_seconds']:.2f}x, "
          f"test CPU {b['test_cpu_seconds'] / old['test_cpu_seconds']:.2f}x")
    # The floor of a process per realm: what one more sandboxed node that does nothing costs.
    idle = idle_process_cpu_seconds()
    print(f"one sandboxed `node -e 0` (prlimit, bubblewrap, node's permission model): {idle * 1e3:.1f} ms CPU; "
          f"a second one per test alone makes the in-realm runner's CPU "
          f"{(old['test_cpu_seconds'] + idle * len(items)) / old['test_cpu_seconds']:.2f}x")
    # Latency: one run at a time (what `qi-expert serve` waits for while it checks an answer).
    iso, realm = latency(tasks, isolated, in_realm)
    print(f"one run at a time, the 54 references, median: isolated verdict {iso * 1e3:.0f} ms, "
          f"in-realm runner {realm * 1e3:.0f} ms")
    return 0 if all(ok for _, ok, _ in results.values()) else 1


def latency(tasks: list[dict], isolated, in_realm) -> tuple[float, float]:
    """Median seconds of a reference's test run, one at a time: (isolated verdict, in-realm runner)."""
    import statistics

    jobs = [(t["id"], t["reference"], t["test"]) for t in tasks]
    with sandbox.Sandbox(ROOT / "data/sample/typescript", workers=1) as sb:
        iso = isolated(sb, [(f"i-{name}", *rest) for name, *rest in jobs])
        realm = in_realm(sb, [(f"r-{name}", *rest) for name, *rest in jobs])
    return statistics.median(r.seconds for r in iso), statistics.median(r.seconds for r in realm)


def idle_process_cpu_seconds(n: int = 40) -> float:
    """Machine CPU seconds of one process started as a test run's are (Sandbox.command), doing nothing."""
    import subprocess

    with sandbox.Sandbox(ROOT / "data/sample/typescript") as sb:
        workdir = sb.run_dir("idle")
        cmd = sb.command(workdir, ["-e", "0"])
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
        before = machine_cpu_seconds()
        for _ in range(n):
            subprocess.run(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=True)
        return (machine_cpu_seconds() - before) / n


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (/proc/stat: user, nice, system, irq, softirq), in
    seconds: the test runs' processes live in other PID namespaces, out of reach of getrusage."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
