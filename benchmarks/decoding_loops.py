"""Choose eval.no_repeat_ngram on the benchmark's DEV tasks: loops, closed fences, compile and test rates.

    python benchmarks/decoding_loops.py [--sizes 0 8 12 16 24] [--arm tuned] [--split dev]

After `make repro` (it needs the prepared base model and the trained adapter). Loads the model as
the eval does (base + adapter merged, eval.cpu_precision), renders the prompts of the chosen split
(bench.split: dev by default, so that the choice is not made on the tasks the eval reports), and
decodes them greedily under the eval's stop policy once per n-gram size, then scores every
completion with the eval's scorer (compiler, rules, the isolated test). One line per size, then
a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.data import bench, prompting
from qi_expert.evaluation import scoring
from qi_expert.generation import basemodel, decoding, models, transformers_backend  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 8, 12, 16, 24])
    ap.add_argument("--arm", choices=["base", "tuned"], default="tuned")
    ap.add_argument("--split", choices=["dev", "test", "all"], default="dev")
    args = ap.parse_args()
    cfg = load_params([])
    ec = cfg.eval
    tasks = bench.load_tasks(resolve_path(ec.benchmark))
    dev, test = bench.split(tasks)
    tasks = {"dev": dev, "test": test, "all": tasks}[args.split]
    by_id = {t["id"]: t for t in tasks}
    model, tokenizer = models.load_model(resolve_path(cfg.model.base_model))
    if args.arm == "tuned":
        model = models.apply_adapter(model, resolve_path(ec.adapter))
    precision = basemodel.cpu_precision(str(ec.cpu_precision), "eval.cpu_precision")
    decoder = models.generation_model(model, precision)
    prompts = [prompting.render_prompt(tokenizer, t, cfg.format.system_prompt) for t in tasks]
    budget = bench.token_budget(ec.max_new_tokens, tasks, tokenizer, float(ec.budget_quantile))
    rows = []
    for n in args.sizes:
        policy = decoding.StopPolicy.eval(tokenizer, budget, model=decoder, no_repeat_ngram=n)
        backend = transformers_backend.Transformers(decoder, batch_size=int(ec.batch_size), pad_id=tokenizer.pad_token_id)
        t0 = time.perf_counter()
        gen = decoding.complete(backend, tokenizer, prompts, policy)
        seconds = time.perf_counter() - t0
        items = scoring.items_from_generation(f"n={n}", tasks, prompts, gen)
        scored, _ = scoring.score(items, by_id, project=resolve_path(cfg.corpus.root), tsconfig=str(cfg.corpus.tsconfig),
                                   try_catch_allowed_in=cfg.validate.try_catch_allowed_in)
        reasons = gen.stats["stop_reasons"]
        row = {"n": n, "loops": reasons.get("repetition", 0), "fence": reasons.get("fence", 0),
               "length": reasons.get("length", 0), "compiled": sum(r["compiled"] for r in scored),
               "passed": sum(r["passed"] for r in scored), "complies": sum(r["compliance"]["pass"] for r in scored),
               "type_errors": sum(r["n_compile_errors"] for r in scored) / len(scored),
               "tokens": gen.total_new_tokens, "seconds": seconds}
        rows.append(row)
        print(f"no_repeat_ngram={n}: {row}", flush=True)
    print(f"\n{args.arm} arm, {len(tasks)} {args.split} tasks, {precision}, max_new_tokens {budget}\n")
    print("| no_repeat_ngram | loops | closed fence | hit the budget | compiled | passed | complies | type errors / completion | tokens | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['loops']} | {r['fence']} | {r['length']} | {r['compiled']} | {r['passed']} | {r['complies']} "
              f"| {r['type_errors']:.2f} | {r['tokens']} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
