"""Reference loss: the model's mean per-token negative log-likelihood of each task's reference solution.

Teacher-forced, under the exact prompt the model is asked to complete (the tokenizer's chat
template, the arm's user turn), and with the answer written the way the training rows write an
assistant turn (a ```typescript fence, then the template's end of turn). It is graded and
smooth: a model that has learned @qi/base gives the real solution a higher probability long
before it writes one itself. Lower is better.
"""

from __future__ import annotations

import math
from typing import Sequence


def answer_text(tokenizer, messages: list[dict], prompt: str, reference: str) -> str:
    """The assistant turn as the chat template renders it after `prompt` (trailing newline dropped)."""
    content = f"```typescript\n{reference.rstrip()}\n```"
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": content}], tokenize=False)
    if not full.startswith(prompt):
        # A template that renders the last assistant turn differently: fall back to the bare content.
        return content
    return full[len(prompt):].rstrip()


def autocast_dtype(model) -> "torch.dtype | None":
    """bf16 autocast for an fp32 model on a CPU with bf16 matrix units, else None (as the model is).

    The forward over every prompt + reference is the eval's second-largest cost after generation;
    on this machine's CPU bf16 matmuls run 2.2x fp32 (platform notes). The per-token log-softmax
    stays fp32. What it changes is measured in benchmarks/reference_loss_precision.py.
    """
    import torch

    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return None
    from qi_expert.basemodel import cpu_bf16_supported

    return torch.bfloat16 if cpu_bf16_supported() else None


def encode_jobs(tokenizer, prompts: Sequence[str], answers: Sequence[str | None]) -> list[tuple[int, list, list]]:
    """[(index, prompt ids, answer ids)] of the prompts that have an answer, shortest first (batches
    of similar lengths pad little)."""
    jobs = [(i, tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(a, add_special_tokens=False)["input_ids"])
            for i, (p, a) in enumerate(zip(prompts, answers)) if a]
    return sorted(jobs, key=lambda j: len(j[1]) + len(j[2]))


def reference_nll(model, tokenizer, prompts: Sequence[str], answers: Sequence[str | None], *,
                  batch_size: int = 8, dtype: "torch.dtype | None" = None) -> list[float | None]:
    """Mean NLL (nats/token) of each answer after its prompt; None where there is no answer.

    `dtype`: autocast the forward to it (autocast_dtype(model) picks bf16 where the CPU has it).
    Rows are RIGHT-padded and run without an attention mask: a causal model never attends to
    what comes after a token, so the padding cannot change the answer's logits, and attention
    takes torch's unmasked causal kernel with the grouped key/value heads shared. Measured
    (benchmarks/reference_loss_speed.py, base model, 54 tasks, bf16 autocast): 42.2 vs 52.1 s
    for the plain prompts and 65.8 vs 86.3 s for the +retrieval ones against left padding with a
    mask; per-task losses within 0.016 of it (bf16 sums in another order).
    """
    import contextlib

    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    jobs = encode_jobs(tokenizer, prompts, answers)
    out: list[float | None] = [None] * len(prompts)
    cast = torch.autocast(device_type="cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), cast:
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b:b + batch_size]
            width = max(len(p) + len(a) for _, p, a in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            for r, (_, p, a) in enumerate(chunk):
                ids[r, :len(p) + len(a)] = torch.tensor(p + a)
            # Position t predicts token t + 1: the logits from the shortest prompt's last token on.
            first = min(len(p) for _, p, _ in chunk) - 1
            logits = model(input_ids=ids.to(device), use_cache=False, logits_to_keep=width - first).logits.float()
            logp = torch.log_softmax(logits, dim=-1)  # column j: position first + j
            for r, (i, p, a) in enumerate(chunk):
                start = len(p) - 1 - first
                targets = torch.tensor(a, device=device)[:, None]
                nll = -float(logp[r, start:start + len(a)].gather(-1, targets).sum()) / len(a)
                out[i] = nll if math.isfinite(nll) else None
    return out
