"""The @qi names constraint (the eval's `+names` arms): invented @qi names per completion with and without it.

    python benchmarks/qi_names.py [--arms tuned tuned+names] [--split test]

After `make repro` (it needs the prepared base model and the trained adapter). The arms answer the
chosen split's tasks through the eval's own code (evaluation/arms.py, the generation cache, the
scorer); one row per arm: invented and real @qi names per completion, compiles, type errors,
complies, tokens and seconds (the constraint's cost: it filters the vocabulary at every step spent
inside an import list or after a @qi namespace).
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
from qi_expert.data import bench  # noqa: E402
from qi_expert.evaluation import arms as eval_arms  # noqa: E402
from qi_expert.evaluation import scoring, summary  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", nargs="+", default=["tuned", "tuned+names"])
    ap.add_argument("--split", choices=["dev", "test", "all"], default="test")
    args = ap.parse_args()
    cfg = load_params([])
    ec = cfg.eval
    tasks = bench.load_tasks(resolve_path(ec.benchmark))
    dev, test = bench.split(tasks)
    tasks = {"dev": dev, "test": test, "all": tasks}[args.split]
    results = eval_arms.run(cfg, tasks, eval_arms.parse_arms(args.arms, adapter=ec.adapter),
                            base=resolve_path(cfg.model.base_model), adapter=resolve_path(ec.adapter), store=None)
    results.pop("_timing")
    items = [it for r in results.values() for it in r["items"]]
    rows, _ = scoring.score(items, {t["id"]: t for t in tasks}, project=resolve_path(cfg.corpus.root),
                            tsconfig=str(cfg.corpus.tsconfig), try_catch_allowed_in=cfg.validate.try_catch_allowed_in)
    print(f"\n{len(tasks)} {args.split} tasks\n")
    print("| arm | invented @qi names / completion | real @qi names / completion | compiles | type errors | complies | tokens | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in args.arms:
        mine = [r for r in rows if r["model"] == arm]
        g = summary.summarize(mine, [1])["graded"]
        gen = results[arm]["generation"]
        print(f"| {arm} | {g['qi_names_invented_per_completion']:.2f} | {g['qi_names_real_per_completion']:.2f} "
              f"| {sum(r['compiled'] for r in mine)} | {statistics.fmean(r['n_compile_errors'] for r in mine):.1f} "
              f"| {sum(r['compliance']['pass'] for r in mine)} | {gen['new_tokens']} | {gen['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
