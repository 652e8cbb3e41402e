"""What batching buys the eval stage: compile checks and generation, batched vs one at a time.

    .venv/bin/python benchmarks/eval_batching.py                       # both parts, defaults
    .venv/bin/python benchmarks/eval_batching.py --skip-generation     # compile part only (no model)
    .venv/bin/python benchmarks/eval_batching.py --model /tmp/hf-dir --n-gen 8 --batch-size 8

1. Compile: the benchmark's reference and wrong solutions (N snippets) type-checked in ONE
   TypeScript program (typecheck.check) vs one compiler process per snippet
   (typecheck.check_one_process_each). Both must give the same verdicts.
2. Generation: the first M task prompts, greedy, max_new_tokens T, decoded in batches of B (left
   padding) vs one prompt at a time, with the end-of-code-block stop off in both so that each run
   decodes the same number of steps per row (tokens/s compares like with like); and the project's
   loop against transformers' own batched `model.generate` (batches of B, end of turn and
   max_new_tokens the only stops in both): time, and how many completions have the same text.

Prints one JSON object (and writes it to --out when given). On a shared machine the figures move
with the load: the script reports the 1-minute load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from qi_expert.core import runtime

runtime.setup()  # first, before torch loads (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path
from qi_expert.data import (
    bench,  # noqa: E402
    prompting,
)
from qi_expert.generation import models
from qi_expert.typescript import typecheck


def compile_part(tasks: list[dict], project: Path, tsconfig: str, n: int) -> dict:
    snippets = {}
    for t in tasks:
        for kind in ("reference", "wrong"):
            snippets[f"{t['id']}-{kind}"] = t[kind] + "\nexport {};\n"
    names = list(snippets)[:n]
    snippets = {k: snippets[k] for k in names}
    t0 = time.perf_counter()
    batched = typecheck.check(snippets, project, tsconfig)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = typecheck.check_one_process_each(snippets, project, tsconfig)
    t_single = time.perf_counter() - t0
    same = all((not batched[k]) == (not single[k]) for k in snippets)
    return {"snippets": len(snippets), "batched_seconds": round(t_batched, 2),
            "one_process_each_seconds": round(t_single, 2), "speedup": round(t_single / t_batched, 2),
            "same_verdicts": same, "compiled": sum(not v for v in batched.values())}


def generation_part(model_dir: Path, tasks: list[dict], system_prompt: str, n: int, batch_size: int,
                    max_new_tokens: int) -> dict:
    model, tokenizer = models.load_model(model_dir)
    prompts = [prompting.render_prompt(tokenizer, t, system_prompt) for t in tasks[:n]]
    out = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    for name, bs in (("batched", batch_size), ("unbatched", 1)):
        g = models.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=bs,
                              stop_at_fence=False)
        out[name] = {"seconds": round(g.seconds, 2), "new_tokens": g.total_new_tokens,
                     "tokens_per_second": round(g.tokens_per_second, 2)}
    out["speedup"] = round(out["unbatched"]["seconds"] / out["batched"]["seconds"], 2)
    out["tokens_per_second_ratio"] = round(out["batched"]["tokens_per_second"] / out["unbatched"]["tokens_per_second"], 2)
    out["library"] = library_part(model, tokenizer, prompts, batch_size, max_new_tokens)
    return out


def library_part(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> dict:
    """transformers' own batched generation (model.generate, left-padded batches of batch_size,
    greedy) against the project's loop (models.Transformers, continuous batching), both stopping
    at end of turn or max_new_tokens alone: the same greedy tokens, and the time each takes."""
    import torch

    from qi_expert.generation import decoding

    ours = models.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             stop_at_fence=False, stop_on_repetition=False)
    eos = decoding.stop_ids(model, tokenizer)
    tokenizer.padding_side = "left"
    texts: list[str] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[b:b + batch_size], add_special_tokens=False, return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0])
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                kept = []
                for tok in row:
                    if tok in eos:
                        break
                    kept.append(tok)
                texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    seconds = time.perf_counter() - t0
    return {"model_generate_seconds": round(seconds, 2), "ours_seconds": round(ours.seconds, 2),
            "ours_speedup": round(seconds / ours.seconds, 2),
            "same_text": sum(a == [b] for a, b in zip(ours.completions, texts)), "of": len(prompts)}


def main(argv: list[str] | None = None) -> dict:
    cfg = load_params()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmark", default=str(resolve_path(cfg.eval.benchmark)))
    ap.add_argument("--model", default=str(resolve_path(cfg.model.base_model)))
    ap.add_argument("--n-compile", type=int, default=40, help="snippets for the compile part")
    ap.add_argument("--n-gen", type=int, default=8, help="prompts for the generation part")
    ap.add_argument("--batch-size", type=int, default=int(cfg.eval.batch_size))
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--skip-generation", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    tasks = bench.load_tasks(Path(args.benchmark))
    result: dict = {"load_average_1min_start": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    if not args.skip_compile:
        result["compile"] = compile_part(tasks, resolve_path(cfg.corpus.root), str(cfg.corpus.tsconfig), args.n_compile)
        print(f"compile: {result['compile']}", file=sys.stderr)
    if not args.skip_generation:
        result["generation"] = generation_part(Path(args.model), tasks, cfg.format.system_prompt, args.n_gen,
                                               args.batch_size, args.max_new_tokens)
        print(f"generation: {result['generation']}", file=sys.stderr)
    result["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
