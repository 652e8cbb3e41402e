"""Benchmark: llama.cpp decoding several sequences in one batch vs one at a time (gguf's path).

    .venv/bin/python benchmarks/llama_batch.py [q8_0|q4_k_m|f16] [--parallel 16] [--n 54]

Not used by the pipeline: measured on the 2-core machine with the portable llama.cpp build
(GGML_NATIVE=OFF, see platform notes), the 54 benchmark prompts on q8_0 (384 new tokens at most,
the eval's stop rules): 16 at once 83.5 vs 81.7 tokens/s one at a time (1.02x; on the first 16
prompts 108.0 vs 88.1, 4 at once 87.1, a unified KV buffer for all sequences 94.4); 22 of 54
completions identical, and even one sequence through this path matched the one-at-a-time
completions on only 6 of 16 prompts (another context setup and batch split: different float
sums, and greedy follows them). The portable build's matrix
code, not the weights' memory traffic, bounds decoding here, so batching buys little; the
gguf stage keeps llama-cpp-python's own one-sequence `Llama.generate`.

llama-cpp-python's `Llama.generate` decodes one sequence at a time; llama.cpp itself decodes a
batch holding tokens of many sequences (each with its own positions and KV cells) in one
`llama_decode`, so the weights are read once per step for all of them. This drives that API
through llama-cpp-python's own bindings (llama_batch, llama_decode, llama_memory_seq_rm): up to
`parallel` sequences decode together; a finished one leaves at once and the next prompt takes its
slot (continuous batching, as models.py does for transformers). Greedy: the arg-max of each
row's logits; stopping is the caller's `stop_check` (decoding.stop_checker) plus end-of-generation
tokens, so every backend stops at the same place.

No library does this for us: llama-cpp-python has no multi-sequence generate, and llama.cpp's
own `llama-batched`/`llama-parallel` are example programs, not an API. Measured against the
one-at-a-time path in benchmarks/llama_batch.py (and recorded in metrics/gguf.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys_path_src = Path(__file__).resolve().parents[1] / "src"


def _load(path: Path, n_threads: int, n_ctx: int, n_batch: int, parallel: int):
    import llama_cpp

    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_batch
    cparams.n_seq_max = parallel
    cparams.n_threads = n_threads
    cparams.n_threads_batch = n_threads
    # One KV buffer for all sequences: they are of very different lengths, so per-sequence
    # slices of n_ctx / parallel would cap the longest one.
    cparams.kv_unified = False
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise RuntimeError(f"llama.cpp could not create a context for {path} (n_ctx={n_ctx})")
    return model, ctx


def complete_batched(path: str | Path, prompts_ids: Sequence[Sequence[int]], max_tokens: int, *,
                     stop_ids: Sequence[int] = (), stop_check: Callable[[list[int]], str | None] | None = None,
                     parallel: int = 16, n_threads: int = 2, n_batch: int = 512
                     ) -> tuple[list[list[int]], list[str], float]:
    """Greedy completions of tokenized prompts: (tokens per prompt, stop reasons, seconds).

    Same contract as llamacpp.LlamaCpp.decode (the one-sequence path), `parallel` sequences at a time.
    """
    import llama_cpp
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF model at {path}")
    n = len(prompts_ids)
    parallel = max(1, min(int(parallel), n or 1, llama_cpp.llama_max_parallel_sequences()))
    longest = max((len(p) for p in prompts_ids), default=1)
    # Every running sequence's prompt and completion must fit in the shared KV cache at once.
    n_ctx = parallel * (longest + max_tokens + 1)
    model, ctx = _load(path, n_threads, n_ctx, n_batch, parallel)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    eos = {int(i) for i in stop_ids}
    memory = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    tokens: list[list[int]] = [[] for _ in range(n)]
    reasons = ["length"] * n
    queue = list(range(n))[::-1]  # pop() takes the prompts in order
    free_slots = list(range(parallel))[::-1]
    running: dict[int, int] = {}  # sequence slot -> prompt index
    pending: dict[int, list[int]] = {}  # slot -> tokens to feed (a prompt, then one token a step)
    position: dict[int, int] = {}  # slot -> position of the next token fed

    def finish(slot: int) -> None:
        llama_cpp.llama_memory_seq_rm(memory, slot, -1, -1)
        del running[slot], pending[slot], position[slot]
        free_slots.append(slot)

    start = time.perf_counter()
    try:
        while queue or running:
            while queue and free_slots:
                slot, row = free_slots.pop(), queue.pop()
                if max_tokens <= 0:
                    free_slots.append(slot)
                    continue
                running[slot], pending[slot], position[slot] = row, list(prompts_ids[row]), 0
            # One llama_decode of up to n_batch tokens: each running sequence's pending tokens,
            # a prompt possibly split over several calls; logits only at a sequence's last token.
            batch.n_tokens = 0
            wants_logits: list[tuple[int, int]] = []  # (slot, index in batch)
            for slot in list(running):
                feed = pending[slot]
                room = n_batch - batch.n_tokens
                if room <= 0:
                    break
                take, pending[slot] = feed[:room], feed[room:]
                for j, tok in enumerate(take):
                    i = batch.n_tokens
                    batch.token[i] = tok
                    batch.pos[i] = position[slot] + j
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = slot
                    last = j == len(take) - 1 and not pending[slot]
                    batch.logits[i] = 1 if last else 0
                    if last:
                        wants_logits.append((slot, i))
                    batch.n_tokens += 1
                position[slot] += len(take)
            if batch.n_tokens == 0:
                break
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}) on {path} with {len(running)} sequences")
            for slot, i in wants_logits:
                row = running[slot]
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                tok = int(logits.argmax())
                if tok in eos or llama_cpp.llama_vocab_is_eog(vocab, tok):
                    reasons[row] = "eos"
                    finish(slot)
                    continue
                tokens[row].append(tok)
                why = stop_check(tokens[row]) if stop_check else None
                if why or len(tokens[row]) >= max_tokens:
                    reasons[row] = why or "length"
                    finish(slot)
                    continue
                pending[slot] = [tok]
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return tokens, reasons, time.perf_counter() - start


def main() -> None:
    sys.path.insert(0, str(sys_path_src))
    from qi_expert.core import runtime

    runtime.setup()  # the process's OpenMP and malloc settings, as the stages have them
    from transformers import AutoTokenizer

    from qi_expert.core.config import load_params, resolve_path
    from qi_expert.data import bench, prompting
    from qi_expert.generation import decoding, gguf, llamacpp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("quantization", nargs="?", default="q8_0")
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--n", type=int, default=54)
    args = ap.parse_args()
    cfg = load_params([])
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))[: args.n]
    tok = AutoTokenizer.from_pretrained(resolve_path(cfg.train.adapter_dir))
    ids = [tok(prompting.render_prompt(tok, t, cfg.format.system_prompt), add_special_tokens=False)["input_ids"]
           for t in tasks]
    stop, eos = decoding.stop_checker(tok), decoding.stop_ids(None, tok)
    path = gguf.default_model(resolve_path("models/gguf"), args.quantization)
    batched, _, s_b = complete_batched(path, ids, bench.token_budget(cfg.eval.max_new_tokens, bench.load_tasks(resolve_path(cfg.eval.benchmark)), tok, float(cfg.eval.budget_quantile)), stop_ids=eos, stop_check=stop,
                                       parallel=args.parallel, n_threads=llamacpp.default_threads())
    llm = llamacpp.load_llama(path)
    policy = decoding.StopPolicy(bench.token_budget(cfg.eval.max_new_tokens, bench.load_tasks(resolve_path(cfg.eval.benchmark)), tok, float(cfg.eval.budget_quantile)), frozenset(eos), stop)
    one = llamacpp.LlamaCpp(llm).decode(ids, policy)
    single, s_1 = one.tokens, one.seconds
    for name, toks, s in ((f"{args.parallel} at once", batched, s_b), ("one at a time", single, s_1)):
        print(f"{name:14s} {s:6.1f} s  {sum(map(len, toks)) / s:6.1f} tokens/s")
    print(f"identical completions: {sum(a == b for a, b in zip(batched, single))} / {len(single)}")


if __name__ == "__main__":
    main()
