"""Choose the retrieved block (eval.retrieval.api, max_chars) on the benchmark's DEV tasks.

    python benchmarks/retrieval_block.py [--api 3 6] [--max-chars 1600 3200] [--split dev]

After `make repro` (it needs the prepared base model, the trained adapter and the pattern store).
For each setting, the `tuned+retrieval` arm answers the chosen split's tasks (bench.split: dev by
default, so the choice is not made on the tasks the README reports) through the eval's own code
(evaluation/arms.py, the generation cache, the scorer); the `tuned` arm without a block is the
baseline. One line per setting, then a table: the reference loss (lower: the block makes the
reference solution likelier), real @qi names per completion, the compliance score, compiles, type
errors, and the examples per task the block held.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.data import bench, retrieval  # noqa: E402
from qi_expert.evaluation import arms as eval_arms  # noqa: E402
from qi_expert.evaluation import scoring, summary  # noqa: E402


def measure(overrides: list[str], arm: str, tasks: list[dict]) -> dict:
    cfg = load_params(overrides + [f"eval.arms=[{arm}]"])
    ec = cfg.eval
    store = retrieval.Store(resolve_path(ec.retrieval.store), corpus=cfg.corpus) if "retrieval" in arm else None
    try:
        results = eval_arms.run(cfg, tasks, eval_arms.parse_arms([arm], adapter=ec.adapter),
                                base=resolve_path(cfg.model.base_model), adapter=resolve_path(ec.adapter), store=store,
                                log=lambda *_: None)
        timing = results.pop("_timing")
        report = eval_arms.retrieval_report(results, tasks, cfg, store) if store is not None else {}
    finally:
        if store is not None:
            store.close()
    items = results[arm]["items"]
    rows, _ = scoring.score(items, {t["id"]: t for t in tasks}, project=resolve_path(cfg.corpus.root),
                            tsconfig=str(cfg.corpus.tsconfig), try_catch_allowed_in=cfg.validate.try_catch_allowed_in)
    s = summary.summarize(rows, [1])
    g = s["graded"]
    return {"reference_loss": g.get("reference_loss"), "real_names": g["qi_names_real_per_completion"],
            "compliance_score": s["compliance_score"], "compiled": sum(r["compiled"] for r in rows),
            "type_errors": statistics.fmean(r["n_compile_errors"] for r in rows),
            "examples_per_task": report.get("examples_per_task", 0.0), "tokens": timing.get("max_new_tokens")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api", type=int, nargs="+", default=[3, 6])
    ap.add_argument("--max-chars", type=int, nargs="+", default=[1600, 3200])
    ap.add_argument("--split", choices=["dev", "test", "all"], default="dev")
    args = ap.parse_args()
    cfg = load_params([])
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))
    dev, test = bench.split(tasks)
    tasks = {"dev": dev, "test": test, "all": tasks}[args.split]
    rows = [("tuned, no block", measure([], "tuned", tasks))]
    print(f"tuned: {rows[-1][1]}", flush=True)
    for api in args.api:
        for chars in args.max_chars:
            name = f"api {api}, max_chars {chars}"
            rows.append((name, measure([f"eval.retrieval.api={api}", f"eval.retrieval.max_chars={chars}"], "tuned+retrieval", tasks)))
            print(f"{name}: {rows[-1][1]}", flush=True)
    print(f"\ntuned+retrieval on the {len(tasks)} {args.split} tasks\n")
    print("| block | reference loss | real @qi names | compliance score | compiled | type errors | examples per task |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        loss = f"{r['reference_loss']:.4f}" if r["reference_loss"] is not None else "-"
        print(f"| {name} | {loss} | {r['real_names']:.2f} | {r['compliance_score']:.3f} | {r['compiled']} "
              f"| {r['type_errors']:.1f} | {r['examples_per_task']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
