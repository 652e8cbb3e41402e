"""The quantization cost's llama.cpp generation: files one after the other at every thread vs side
by side at one thread each (quantcost._generate_files), on the 54 benchmark prompts.

    python benchmarks/quantcost_parallel.py [--files q8_0 q4_k_m] [--limit N]

Needs models/gguf (the gguf stage). Prints each way's wall seconds and whether every file's
completions are the same text both ways (they should be: a thread splits the rows of a product,
not its sums).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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
from qi_expert.export import quantcost
from qi_expert.generation import gguf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="+", default=None, help="default: gguf.quant_eval.files")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    cfg = load_params()
    folder = resolve_path("models/gguf")
    manifest = gguf.read_manifest(folder / gguf.MANIFEST)
    kinds = args.files or [str(k) for k in cfg.gguf.quant_eval.files]
    files = {k: folder / manifest["files"][k] for k in kinds}
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))[: args.limit]
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(cfg.model.base_model))
    prompts = [prompting.render_prompt(tokenizer, t, cfg.format.system_prompt) for t in tasks]
    threads = os.cpu_count() or 1
    n_ctx, max_new = int(cfg.gguf.n_ctx), bench.token_budget(cfg.eval.max_new_tokens, bench.load_tasks(resolve_path(cfg.eval.benchmark)), tokenizer, float(cfg.eval.budget_quantile))
    results = {}
    for way, run in (("one after the other", lambda: {k: quantcost._generate_one(p, tokenizer, prompts, max_new, n_ctx, threads)
                                                         for k, p in files.items()}),
                     ("side by side", lambda: dict(quantcost._generate_files(files, tokenizer, prompts, max_new, n_ctx=n_ctx,
                                                                            threads=threads)))):
        t0 = time.perf_counter()
        gens = run()
        wall = time.perf_counter() - t0
        results[way] = gens
        per_file = ", ".join(f"{k} {g.seconds:.1f} s at {g.stats['threads']} thread(s) ({g.tokens_per_second:.1f} tokens/s)"
                             for k, g in gens.items())
        print(f"{way}: {wall:.1f} s wall; {per_file}")
    a, b = results.values()
    for k in files:
        same = sum(x == y for x, y in zip(a[k].completions, b[k].completions))
        print(f"{k}: {same} of {len(prompts)} completions the same text both ways")
    return 0


if __name__ == "__main__":
    sys.exit(main())
