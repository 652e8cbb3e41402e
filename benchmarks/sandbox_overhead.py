"""What the OS-level sandbox and the isolated verdict cost: the benchmark's 54 references and 54 wrong solutions.

    python benchmarks/sandbox_overhead.py [--repeat 3]

Scores every reference and every wrong solution of data/qi-bench/tasks.yaml with the eval's scorer
(one compiler program, tests run in parallel as the eval runs them) under isolation "bwrap" (the
default: bubblewrap, nobody, rlimits, node's permission model, the compiler in the sandbox too) and
"unsafe" (the opt-out: unshare -rnp + node's permission model, as before). Prints the test-run and
compile seconds (best of --repeat) and whether the verdicts agree: every reference passes, every
wrong solution fails. A third row runs bwrap with the in-realm runner the eval used before the
isolated verdict (Sandbox.run_tests: test and completion in one node process), to show what the
second process and the membrane cost.
"""

from __future__ import annotations

import argparse
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
    results = {}
    isolated = sandbox.Sandbox.run_isolated
    for isolation in ("unsafe", "bwrap", "bwrap, in-realm runner"):
        # The in-realm runner: what the eval ran before the isolated verdict.
        sandbox.Sandbox.run_isolated = sandbox.Sandbox.run_tests if "in-realm" in isolation else isolated
        best = None
        for _ in range(args.repeat):
            rows, info = scoring.score(items, by_id, project=ROOT / "data/sample/typescript", isolation=isolation.split(",")[0])
            info["isolation"] = isolation.replace("bwrap", info["isolation"])
            if best is None or info["test_seconds"] < best[1]["test_seconds"]:
                best = (rows, info)
        rows, info = best
        ok = all(r["passed"] == (r["model"] == "reference") for r in rows)
        ran = sum(r["test"]["status"] != "not_compiled" for r in rows)
        results[isolation] = (info, ok, ran)
    print("| isolation | tests run | test seconds (per test) | compile seconds | verdicts as expected |")
    print("|---|---|---|---|---|")
    for isolation, (info, ok, ran) in results.items():
        print(f"| {info['isolation']} | {ran} | {info['test_seconds']:.2f} ({info['test_seconds'] / ran:.3f}) "
              f"| {info['compile_seconds']:.2f} | {'yes' if ok else 'NO'} |")
    u, b, old = results["unsafe"][0], results["bwrap"][0], results["bwrap, in-realm runner"][0]
    print(f"bwrap / unsafe: tests {b['test_seconds'] / u['test_seconds']:.2f}x, "
          f"compile {b['compile_seconds'] / u['compile_seconds']:.2f}x")
    print(f"isolated verdict / in-realm runner (bwrap): tests {b['test_seconds'] / old['test_seconds']:.2f}x")
    return 0 if all(ok for _, ok, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
