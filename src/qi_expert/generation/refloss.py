"""Reference loss: the model's mean per-token negative log-likelihood of each task's reference solution.

Teacher-forced, under the exact prompt the model is asked to complete (the tokenizer's chat
template, the arm's user turn), and with the answer written the way the training rows write an
assistant turn (a ```typescript fence, then the template's end of turn). It is graded and
smooth: a model that has learned @qi/base gives the real solution a higher probability long
before it writes one itself. Lower is better.

It is computed by the model that decodes, on the prompts' own KV cache: the transformers backend
prefills each prompt to generate from it anyway, and `answer_nll` feeds the answer on top of that
cache before decoding starts (then crops the cache back), so the prompts go through the model
once per arm, not twice. Measured (benchmarks/reference_loss_on_prefill.py, the base model, 54
tasks, 2 cores): 32.9 vs 51.3 s (plain prompts) and 38.8 vs 74.7 s (+retrieval) against a pass of
its own over prompt + reference; the same completions; per-task losses within 0.012 of that pass's
(the fp32 model under bf16 autocast).
"""

from __future__ import annotations

import math
from typing import Sequence

# Answer columns fed per forward pass: [rows, CHUNK, vocabulary] logits at a time (~200 MB in bf16
# for 16 rows of SmolLM2), not the whole answer's.
CHUNK = 128


def answer_text(tokenizer, messages: list[dict], prompt: str, reference: str) -> str:
    """The assistant turn as the chat template renders it after `prompt` (trailing newline dropped)."""
    content = f"```typescript\n{reference.rstrip()}\n```"
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": content}], tokenize=False)
    if not full.startswith(prompt):
        # A template that renders the last assistant turn differently: fall back to the bare content.
        return content
    return full[len(prompt):].rstrip()


def answer_nll(model, cache, mask, last_logits, answers: Sequence[Sequence[int] | None], *, pad_id: int,
               scratch) -> list[float | None]:
    """Mean NLL (nats/token) of each row's answer ids right after its prompt; None for a row without one.

    `cache` holds the rows' prompts (left-padded: every prompt ends at the cache's last column),
    `mask` is their [rows, columns] attention mask and `last_logits` the logits after each prompt's
    last token (they score the answer's first token). `cache` is not changed: the answers go into
    `scratch` (an empty cache of the model's kind) holding a copy of the prompts' rows, longest
    answer first, CHUNK columns at a time, RIGHT-padded (a causal model never lets a row's padding
    reach its own answer tokens); a row leaves once its answer is in, so a short answer does not
    ride along with the longest one of its batch.
    """
    import torch

    device = mask.device
    lengths = [len(a) if a else 0 for a in answers]
    order = sorted((r for r in range(len(answers)) if lengths[r]), key=lambda r: -lengths[r])
    total = {r: 0.0 for r in order}
    if not order:
        return [None] * len(answers)

    def logprobs(logits, targets):
        logits = logits.float()
        return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    longest = lengths[order[0]]
    ids = torch.full((len(order), longest), pad_id, dtype=torch.long)
    for k, r in enumerate(order):
        ids[k, :lengths[r]] = torch.tensor(list(answers[r]))
    ids = ids.to(device)
    idx = torch.tensor(order, device=device)
    first = logprobs(last_logits[idx], ids[:, 0])
    for k, r in enumerate(order):
        total[r] += float(first[k])
    width = mask.shape[1]
    mask = torch.cat([mask[idx], mask.new_ones((len(order), longest))], dim=1)
    # The n-th real token of a row is at position n - 1: answer token j sits at (prompt tokens) + j.
    positions = mask[:, :width].long().sum(-1, keepdim=True) + torch.arange(longest, device=device)[None, :]
    for mine, theirs in zip(scratch.layers, cache.layers):
        mine.update(theirs.keys[idx], theirs.values[idx])  # the scored rows' prompts, in `order`
    rows = len(order)
    # Answer tokens c..end-1 go in and predict c+1..end; a row's last token predicts nothing.
    for c in range(0, longest - 1, CHUNK):
        going = sum(lengths[r] - 1 > c for r in order)  # rows are longest first: the first `going`
        if going < rows:
            rows = going
            for layer in scratch.layers:
                layer.keys, layer.values = layer.keys[:rows], layer.values[:rows]
        end = min(c + CHUNK, longest - 1)
        out = model(input_ids=ids[:rows, c:end], attention_mask=mask[:rows, :width + end],
                    position_ids=positions[:rows, c:end], past_key_values=scratch, use_cache=True)
        lp = logprobs(out.logits, ids[:rows, c + 1:end + 1])
        for k, r in enumerate(order[:rows]):
            total[r] += float(lp[k, :max(0, lengths[r] - 1 - c)].sum())
    nll = [-total[r] / lengths[r] if lengths[r] else None for r in range(len(answers))]
    return [v if v is not None and math.isfinite(v) else None for v in nll]
