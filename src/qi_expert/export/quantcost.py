"""The quantization cost: the eval benchmark generated through llama.cpp from GGUF files, scored by
the eval's own scorer (scoring.score) and compared with a reference (the eval stage's tuned rows,
or the first file).

The gguf stage's side of the boundary: it asks eval's scorer for its files; scoring.py knows
nothing of GGUF (imports run one way: quantcost -> evaluate, and -> decoding/llamacpp for the generation).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from qi_expert.core import gencache, lifetime
from qi_expert.data import prompting
from qi_expert.evaluation import scoring, summary
from qi_expert.generation import decoding, llamacpp
from qi_expert.typescript import patterns


def score_gguf(files: Mapping[str, Path], tokenizer, tasks: Sequence[Mapping], *, system_prompt: str,
               max_new_tokens: int, project: Path, tsconfig: str = "tsconfig.json", timeout: float = 10,
               memory_mb: int = 512, try_catch_allowed_in: Iterable[str] = patterns.DEFAULT_TRY_CATCH_ALLOWED,
               n_ctx: int = 2048, n_threads: int | None = None, reference_rows: Sequence[Mapping] | None = None,
               reference_name: str = "tuned", isolation: str = "bwrap", cache: bool = True,
               module_format: str = "commonjs", dependencies: Path | None = None, no_repeat_ngram: int = 0,
               log=print) -> tuple[list[dict], dict]:
    """The eval benchmark on GGUF files {kind: path}: greedy completions through llama.cpp, scored.

    Same prompts (the tokenizer's chat template, token ids fed to llama.cpp as they are), same
    stopping rules and same scorer as the eval stage. The reference the quantized files are
    compared with is either `reference_rows` (the eval stage's scored rows of the tuned arm,
    under `reference_name`: not generated twice) or else the first file (the unquantized
    conversion): metrics[kind] per file and metrics["cost"][kind] = kind - reference.
    """
    by_id = {t["id"]: t for t in tasks}
    if reference_rows is not None:  # before any generation
        reference_rows = [{**r, "model": reference_name} for r in reference_rows if r["task_id"] in by_id]
        missing = sorted(set(by_id) - {r["task_id"] for r in reference_rows})
        if missing:
            raise ValueError(f"the eval results hold no {reference_name} completion for {missing[:5]}: rerun eval "
                             f"with the {reference_name} arm (eval.arms), or gguf.quant_eval.reference=generate")
    prompts = [prompting.render_prompt(tokenizer, t, system_prompt) for t in tasks]
    prompt_ids = decoding.encode(tokenizer, prompts)
    items: list[dict] = []
    generation: dict = {}
    import llama_cpp

    settings = {"backend": "llama.cpp", "max_new_tokens": int(max_new_tokens), "n_ctx": n_ctx,
                **({"no_repeat_ngram": int(no_repeat_ngram)} if no_repeat_ngram else {}),
                "n_threads": llamacpp.default_threads(n_threads), "llama_cpp": llama_cpp.__version__,
                "llama_cpp_build": llamacpp.build_info()}
    # Cached by content, one file at a time: a rerun after an interruption redoes only the files it
    # had not finished. (Not task by task: llama.cpp reuses the previous prompt's KV cache for the
    # shared system prompt, so a completion depends on the one before it.)
    keys = {kind: gencache.key([path], [list(map(int, ids)) for ids in prompt_ids], settings,
                               code_files=("export/quantcost.py", "generation/llamacpp.py", "generation/decoding.py", "core/gencache.py")) if cache else None
            for kind, path in files.items()}
    hits = {kind: gencache.load(key, kind="gguf_completions") if key else None for kind, key in keys.items()}
    missing = [kind for kind in files if hits[kind] is None]
    started = time.perf_counter()
    fresh: dict[str, decoding.Generation] = {}
    for kind, gen in _generate_files({k: files[k] for k in missing}, tokenizer, prompts, int(max_new_tokens),
                                     n_ctx=n_ctx, threads=settings["n_threads"], no_repeat_ngram=int(no_repeat_ngram)):
        fresh[kind] = gen
        if keys[kind]:  # as each file is done: a rerun after an interruption skips it
            gencache.store(keys[kind], {"completions": gen.completions, "new_tokens": gen.new_tokens,
                                        "seconds": gen.seconds, "stats": gen.stats}, kind="gguf_completions")
    generation_wall = round(time.perf_counter() - started, 2)
    for kind, path in files.items():
        hit = hits[kind]
        gen = fresh[kind] if hit is None else decoding.Generation(hit["completions"], hit["new_tokens"],
                                                                  hit["seconds"], hit["stats"])
        seconds = gen.seconds
        generation[kind] = {"seconds": round(seconds, 2), "new_tokens": gen.total_new_tokens,
                            "tokens_per_second": round(gen.tokens_per_second, 2),
                            "stop_reasons": gen.stats["stop_reasons"], "cached": hit is not None,
                            "threads": gen.stats.get("threads")}
        log(f"gguf eval: {kind}: {len(tasks)} completions, {gen.total_new_tokens} new tokens in {seconds:.1f}s "
            f"({generation[kind]['tokens_per_second']} tokens/s){' (cached)' if hit is not None else ''}")
        items += scoring.items_from_generation(kind, tasks, prompts, gen)
    rows, info = scoring.score(items, by_id, project=project, tsconfig=tsconfig, timeout=timeout, memory_mb=memory_mb,
                       try_catch_allowed_in=try_catch_allowed_in, isolation=isolation, module_format=module_format,
                       dependencies=dependencies)
    kinds = list(files)
    if reference_rows is not None:
        rows = reference_rows + rows
        kinds = [reference_name, *kinds]
    metrics: dict = {"benchmark_tasks": len(tasks), "reference": kinds[0] if kinds else None}
    for kind in kinds:
        metrics[kind] = summary.summarize([r for r in rows if r["model"] == kind])
        if kind in generation:
            metrics[kind]["generation"] = generation[kind]
    ref = metrics["reference"]
    metrics["cost"] = {kind: summary.deltas(metrics[kind], metrics[ref]) for kind in kinds if kind != ref}
    metrics["timing"] = {"generation_wall_seconds": generation_wall,
                         **{k: v for k, v in info.items() if k.endswith("_seconds")}}
    return rows, metrics


def _generate_one(path: Path, tokenizer, prompts: Sequence[str], max_new_tokens: int, n_ctx: int,
                  n_threads: int, no_repeat_ngram: int = 0) -> decoding.Generation:
    """One GGUF's greedy completions through llama.cpp under the eval's stop policy (+ the GGUF's own
    end-of-generation id). Module level: it also runs in a worker process."""
    policy = decoding.StopPolicy.eval(tokenizer, max_new_tokens, no_repeat_ngram=no_repeat_ngram)
    llm = llamacpp.load_llama(path, n_ctx=n_ctx, n_threads=n_threads)
    try:
        progress = decoding.Progress(f"gguf eval: {path.name}")
        gen = decoding.complete(llamacpp.LlamaCpp(llm, progress=progress), tokenizer, prompts, policy)
    finally:
        llm.close()
    gen.stats["threads"] = n_threads
    return gen


def _generate_job(job: tuple) -> tuple[str, decoding.Generation]:
    kind, *args = job
    return kind, _generate_one(*args)


def _generate_files(files: Mapping[str, Path], tokenizer, prompts: Sequence[str], max_new_tokens: int, *,
                    n_ctx: int, threads: int, no_repeat_ngram: int = 0) -> Iterator[tuple[str, decoding.Generation]]:
    """(kind, completions) of every file as each is done: side by side in worker processes, the
    `threads` shared among them.

    llama.cpp decodes one sequence of this small model with little gain from a second thread (its
    threads meet at a barrier after every operation of every layer), so two files decoded at one
    thread each finish well before the same two one after the other at two threads. A thread
    splits the rows of each product, not its sums, so a file's completions do not depend on the
    thread count. Measured (benchmarks/quantcost_parallel.py, q8_0 + q4_k_m on the 54 prompts, 2
    cores): 154.5 s wall side by side vs 216.6 s one after the other (1.40x), the same text on 54
    of 54 completions of each file. An error or interruption in the stage terminates the workers
    (leaving the pool's `with`), and a killed stage takes them with it (lifetime.die_with).
    """
    if len(files) <= 1 or threads < 2:
        for kind, path in files.items():
            yield kind, _generate_one(path, tokenizer, prompts, max_new_tokens, n_ctx, threads, no_repeat_ngram)
        return
    import multiprocessing
    import os

    workers = min(len(files), threads)
    jobs = [(kind, path, tokenizer, list(prompts), max_new_tokens, n_ctx, max(1, threads // workers), no_repeat_ngram)
            for kind, path in files.items()]
    with multiprocessing.get_context("spawn").Pool(workers, initializer=lifetime.die_with, initargs=(os.getpid(),)) as pool:
        yield from pool.imap_unordered(_generate_job, jobs)


# --- the whole eval ---------------------------------------------------------------------------
