"""Eval generation in bf16 with oneDNN-prepacked linear weights vs plain nn.Linear, real prompts.

    python benchmarks/generation_prepacked.py [--arm base|retrieval] [--sizes 16 32] [--max-new-tokens 384]

The base model (models/base) completes the 54 benchmark prompts greedily (the eval's stop policy)
through the eval's generation path, once on a bf16 copy with plain nn.Linear layers and once on
the copy models.generation_model makes (weights prepacked); prints tokens/s per batch size and
how many completions are the same text. `--arm retrieval` uses the +retrieval prompts (data/index).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.data import bench, prompting, retrieval
from qi_expert.evaluation import arms  # noqa: E402
from qi_expert.generation import models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", choices=["base", "retrieval"], default="base")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16])
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: eval.max_new_tokens")
    args = ap.parse_args()
    import torch

    cfg = load_params()
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))
    model, tok = models.load_model(resolve_path(cfg.model.base_model))
    context = [""] * len(tasks)
    if args.arm == "retrieval":
        store = retrieval.Store(resolve_path(cfg.eval.retrieval.store))
        context, _ = arms.contexts(store, tasks, cfg.eval.retrieval)
    prompts = [prompting.render_prompt(tok, t, cfg.format.system_prompt, c) for t, c in zip(tasks, context)]
    max_new = int(args.max_new_tokens or bench.token_budget(cfg.eval.max_new_tokens, bench.load_tasks(resolve_path(cfg.eval.benchmark)), tok, float(cfg.eval.budget_quantile)))
    plain = copy.deepcopy(model).to(torch.bfloat16)
    prepacked = models.generation_model(model, "bf16")
    print(f"{len(prompts)} {args.arm} prompts, greedy, at most {max_new} new tokens, bf16")
    print("| batch size | plain nn.Linear: s (tokens/s) | prepacked: s (tokens/s) | speed-up | same completions |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        a = models.generate(plain, tok, prompts, max_new_tokens=max_new, batch_size=size)
        b = models.generate(prepacked, tok, prompts, max_new_tokens=max_new, batch_size=size)
        same = sum(x == y for x, y in zip(a.completions, b.completions))
        print(f"| {size} | {a.seconds:.1f} ({a.tokens_per_second:.1f}) | {b.seconds:.1f} ({b.tokens_per_second:.1f}) "
              f"| {a.seconds / b.seconds:.2f}x | {same} of {len(prompts)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
