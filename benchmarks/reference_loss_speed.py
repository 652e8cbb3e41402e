"""The reference loss's batching: right padding without a mask (refloss) vs left padding with one.

    python benchmarks/reference_loss_speed.py      # after `dvc repro index train`

The reference loss (refloss.reference_nll) runs one teacher-forced forward over every task's
prompt + reference, per arm: about 40% of the eval's wall time on an empty generation cache.
This runs it on the base model (bf16 autocast, as the eval does) for the plain prompts and the
+retrieval prompts (about 2.5x longer), both ways one after the other, and prints seconds, the
mean and the largest per-task difference:
  left-mask   left-padded rows with an attention mask (the way before; transformers' sdpa then
              copies the grouped key/value heads and runs the masked kernel)
  right       refloss.reference_nll: right-padded rows, no mask (causal: padding comes after
              every token that counts)
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qi_expert import arms, bench, generate, refloss, retrieval  # noqa: E402
from qi_expert.config import load_params, resolve_path  # noqa: E402


def left_padded_nll(model, tokenizer, prompts, answers, *, batch_size: int = 8, dtype=None) -> list[float | None]:
    """The reference loss as it was computed before: left padding, attention mask, position ids."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    jobs = refloss.encode_jobs(tokenizer, prompts, answers)
    out: list[float | None] = [None] * len(prompts)
    cast = torch.autocast(device_type="cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b:b + batch_size]
            width = max(len(p) + len(a) for _, p, a in chunk)
            keep = max(len(a) for _, _, a in chunk) + 1
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, p, a) in enumerate(chunk):
                ids[r, width - len(p) - len(a):] = torch.tensor(p + a)
                mask[r, width - len(p) - len(a):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits.float()
            logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
            token_logp = logp.gather(-1, ids[:, width - keep + 1:][..., None]).squeeze(-1)
            for r, (i, _, a) in enumerate(chunk):
                nll = -float(token_logp[r, -len(a):].sum()) / len(a)
                out[i] = nll if math.isfinite(nll) else None
    return out


def main() -> int:
    cfg = load_params()
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))
    model, tok = generate.load_model(resolve_path(cfg.model.base_model))
    store = retrieval.Store(resolve_path(cfg.eval.retrieval.store))
    blocks, _ = arms.contexts(store, tasks, cfg.eval.retrieval)
    dtype = refloss.autocast_dtype(model)
    print("| prompts | way | seconds | mean NLL | largest per-task difference from left-mask |")
    print("|---|---|---|---|---|")
    for label, context in (("plain", [""] * len(tasks)), ("+retrieval", blocks)):
        messages = [generate.chat_messages(t, cfg.format.system_prompt, c) for t, c in zip(tasks, context)]
        prompts = [generate.render_prompt(tok, t, cfg.format.system_prompt, c) for t, c in zip(tasks, context)]
        answers = [refloss.answer_text(tok, m, p, t["reference"]) for m, p, t in zip(messages, prompts, tasks)]
        first = None
        for way, fn in (("left-mask", left_padded_nll), ("right", refloss.reference_nll)):
            t0 = time.perf_counter()
            nll = fn(model, tok, prompts, answers, dtype=dtype)
            seconds = time.perf_counter() - t0
            first = first or nll
            diff = max(abs(a - b) for a, b in zip(first, nll))
            print(f"| {label} | {way} | {seconds:.1f} | {sum(nll) / len(nll):.4f} | {diff:.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
