"""What the OS-level sandbox costs: the benchmark's 54 references and 54 wrong solutions, bwrap vs unsafe.

    python benchmarks/sandbox_overhead.py [--repeat 3]

Scores every reference and every wrong solution of data/qi-bench/tasks.yaml with the eval's scorer
(one compiler program, tests run in parallel as the eval runs them) under isolation "bwrap" (the
default: bubblewrap, nobody, rlimits, node's permission model, the compiler in the sandbox too) and
"unsafe" (the opt-out: unshare -rnp + node's permission model, as before). Prints the test-run and
compile seconds (best of --repeat) and whether the verdicts agree: every reference passes, every
wrong solution fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qi_expert import bench, evaluate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")
    by_id = {t["id"]: t for t in tasks}
    items = [{"model": kind, "task_id": t["id"], "sample": 0, "completion": t[kind]}
             for kind in ("reference", "wrong") for t in tasks]
    results = {}
    for isolation in ("unsafe", "bwrap"):
        best = None
        for _ in range(args.repeat):
            rows, info = evaluate.score(items, by_id, project=ROOT / "data/sample/typescript", isolation=isolation)
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
    u, b = results["unsafe"][0], results["bwrap"][0]
    print(f"bwrap / unsafe: tests {b['test_seconds'] / u['test_seconds']:.2f}x, "
          f"compile {b['compile_seconds'] / u['compile_seconds']:.2f}x")
    return 0 if all(ok for _, ok, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
