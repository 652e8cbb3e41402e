"""The reference loss on the decoding model's own prefill vs a second, separate pass over the prompts.

    python benchmarks/reference_loss_on_prefill.py [--arms base retrieval]   # after `dvc repro index`

The eval scores every task's reference (refloss) on each arm. Before, that was its own pass: every
prompt + reference teacher-forced through the fp32 model under bf16 autocast (right-padded rows,
no mask; `separate_nll` below is that code), after generation had already prefilled every prompt on
the bf16 decoding copy. Now the transformers backend feeds each reference on top of the prompt's
prefilled KV cache (refloss.answer_nll), so each prompt goes through the model once. This runs the
base model's arm both ways, one after the other, on the plain and the +retrieval prompts (the
+retrieval ones are ~2.5x longer, so their prompts are most of the separate pass), and prints the
seconds of generation and of the reference loss, whether the completions are the same text, and
the mean and largest per-task difference of the losses (the two ways differ in precision: bf16
weights with an fp32 KV cache vs fp32 weights under bf16 autocast).

Measured 2026-12-02 (2 cores, AMD EPYC with AVX512-BF16, batch 16, 384 new tokens at most):

| prompts | way | generation s | reference loss s | total s | same completions | mean NLL | largest difference |
|---|---|---|---|---|---|---|---|
| base | separate pass (before) | 69.0 | 51.3 | 120.3 | - | 1.2212 | - |
| base | on the prefill | 71.8 | 32.9 | 104.8 | 54 of 54 | 1.2201 | 0.0115 |
| retrieval | separate pass (before) | 106.5 | 74.7 | 181.1 | - | 1.1541 | - |
| retrieval | on the prefill | 120.5 | 38.8 | 159.3 | 54 of 54 | 1.1540 | 0.0094 |

Generation times move +-15% from run to run on this machine (the first run of this benchmark:
45.2 and 55.3 s for the base rows; 32 prompts alternating with and without scoring: 18.4-23.4 s
either way), so read the reference-loss column: the answers alone cost 33-39 s where prompt +
answer cost 51-75 s.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.data import bench, prompting, retrieval
from qi_expert.evaluation import arms  # noqa: E402
from qi_expert.generation import basemodel, decoding, models, refloss, transformers_backend


def separate_nll(model, tokenizer, prompts, answers, *, batch_size: int = 8) -> list[float | None]:
    """The reference loss as its own pass (the way before): prompt + answer rows, right-padded, no
    mask, the fp32 model under bf16 autocast where the CPU has bf16."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    jobs = sorted(((i, tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(a, add_special_tokens=False)["input_ids"])
                   for i, (p, a) in enumerate(zip(prompts, answers)) if a), key=lambda j: len(j[1]) + len(j[2]))
    out: list[float | None] = [None] * len(prompts)
    cast = (torch.autocast(device_type="cpu", dtype=torch.bfloat16) if basemodel.cpu_bf16_supported()
            else contextlib.nullcontext())
    with torch.inference_mode(), cast:
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b:b + batch_size]
            width = max(len(p) + len(a) for _, p, a in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            for r, (_, p, a) in enumerate(chunk):
                ids[r, :len(p) + len(a)] = torch.tensor(p + a)
            first = min(len(p) for _, p, _ in chunk) - 1
            logp = torch.log_softmax(model(input_ids=ids, use_cache=False, logits_to_keep=width - first).logits.float(), -1)
            for r, (i, p, a) in enumerate(chunk):
                start = len(p) - 1 - first
                nll = -float(logp[r, start:start + len(a)].gather(-1, torch.tensor(a)[:, None]).sum()) / len(a)
                out[i] = nll if math.isfinite(nll) else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", nargs="+", choices=["base", "retrieval"], default=["base", "retrieval"])
    args = ap.parse_args()

    cfg = load_params()
    ec = cfg.eval
    tasks = bench.load_tasks(resolve_path(ec.benchmark))
    model, tok = models.load_model(resolve_path(cfg.model.base_model))
    decoder = models.generation_model(model, basemodel.cpu_precision(str(ec.cpu_precision), "eval.cpu_precision"))
    policy = decoding.StopPolicy.eval(tok, bench.token_budget(ec.max_new_tokens, bench.load_tasks(resolve_path(ec.benchmark)), tok, float(ec.budget_quantile)), model=decoder)
    backend = transformers_backend.Transformers(decoder, batch_size=int(ec.batch_size), pad_id=tok.pad_token_id)
    print("| prompts | way | generation s | reference loss s | total s | same completions | mean NLL | largest per-task difference |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in args.arms:
        context = [""] * len(tasks)
        if arm == "retrieval":
            context, _ = arms.contexts(retrieval.Store(resolve_path(ec.retrieval.store)), tasks, ec.retrieval)
        messages = [prompting.chat_messages(t, cfg.format.system_prompt, c) for t, c in zip(tasks, context)]
        prompts = [prompting.render_prompt(tok, t, cfg.format.system_prompt, c) for t, c in zip(tasks, context)]
        answers = [refloss.answer_text(tok, m, p, t["reference"]) for m, p, t in zip(messages, prompts, tasks)]

        gen = decoding.complete(backend, tok, prompts, policy)
        t0 = time.perf_counter()
        before = separate_nll(model, tok, prompts, answers)
        separate = time.perf_counter() - t0
        print(f"| {arm} | separate pass (before) | {gen.seconds:.1f} | {separate:.1f} | {gen.seconds + separate:.1f} "
              f"| - | {sum(before) / len(before):.4f} | - |", flush=True)

        t0 = time.perf_counter()
        shared = decoding.complete(backend, tok, prompts, policy, answers=answers)
        total = time.perf_counter() - t0
        same = sum(a == b for a, b in zip(gen.completions, shared.completions))
        diff = max(abs(a - b) for a, b in zip(before, shared.answer_nll))
        print(f"| {arm} | on the prefill (refloss.answer_nll) | {shared.seconds:.1f} "
              f"| {shared.stats['reference_loss_seconds']:.1f} | {total:.1f} | {same} of {len(prompts)} "
              f"| {sum(shared.answer_nll) / len(prompts):.4f} | {diff:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
