"""Eval generation throughput by batch size (continuous batching), on the real benchmark prompts.

    python benchmarks/generation_batch_size.py [--sizes 16 32 54] [--max-new-tokens 128] [--precision bf16]

The base model (models/base) completes the 54 benchmark prompts greedily at each batch size, in
the eval's decoding precision (eval.cpu_precision, or --precision); prints tokens/s and whether the
completions are the same text as at the first size.
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
from qi_expert.data import bench, prompting
from qi_expert.generation import basemodel, models  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 54])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                    help="decoding precision (default: eval.cpu_precision as the eval resolves it)")
    args = ap.parse_args()
    cfg = load_params()
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))
    model, tok = models.load_model(resolve_path(cfg.model.base_model))
    prompts = [prompting.render_prompt(tok, t, cfg.format.system_prompt) for t in tasks]
    precision = args.precision or basemodel.cpu_precision(str(cfg.eval.get("cpu_precision", "fp32")), "eval.cpu_precision")
    model = models.generation_model(model, precision)
    print(f"decoding precision: {precision}")
    first = None
    print("| batch size | new tokens | seconds | tokens/s | same completions as the first |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        gen = models.generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=size)
        same = "-" if first is None else sum(a == b for a, b in zip(first, gen.completions))
        first = first or gen.completions
        print(f"| {size} | {gen.total_new_tokens} | {gen.seconds:.1f} | {gen.tokens_per_second:.1f} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
