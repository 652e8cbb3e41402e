"""Eval generation in fp32 vs bf16 (eval.cpu_precision), on the real benchmark prompts.

    python benchmarks/generation_precision.py [--model tuned|base] [--n 54]

The eval's decoding (models.generate, eval.max_new_tokens and eval.batch_size, the eval's stop
rules) on the fp32 model and on its bf16 copy (models.generation_model: bf16 weights, KV cache
and attention in fp32). Prints seconds, tokens/s and how many completions are the same text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.data import (
    bench,  # noqa: E402
    prompting,
)
from qi_expert.generation import models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["tuned", "base"], default="tuned")
    ap.add_argument("--n", type=int, default=54)
    args = ap.parse_args()
    cfg = load_params()
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))[: args.n]
    adapter = resolve_path(cfg.eval.adapter) if args.model == "tuned" else None
    model, tok = models.load_model(resolve_path(cfg.model.base_model), adapter)
    prompts = [prompting.render_prompt(tok, t, cfg.format.system_prompt) for t in tasks]
    runs = {}
    for precision in ("fp32", "bf16"):
        decoder = models.generation_model(model, precision)
        runs[precision] = models.generate(decoder, tok, prompts, max_new_tokens=bench.token_budget(cfg.eval.max_new_tokens, bench.load_tasks(resolve_path(cfg.eval.benchmark)), tok, float(cfg.eval.budget_quantile)),
                                            batch_size=int(cfg.eval.batch_size))
    print(f"{args.model} model, {len(tasks)} tasks")
    for precision, gen in runs.items():
        print(f"{precision}: {gen.seconds:.1f} s, {gen.total_new_tokens} new tokens, {gen.tokens_per_second:.1f} tokens/s")
    same = sum(a == b for a, b in zip(runs["fp32"].completions, runs["bf16"].completions))
    print(f"bf16 / fp32 tokens/s: {runs['bf16'].tokens_per_second / runs['fp32'].tokens_per_second:.2f}; "
          f"same completion text: {same} / {len(tasks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
