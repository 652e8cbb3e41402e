"""Attention functions the project registers with transformers (its AttentionInterface), for CPU.

Both give what transformers' own sdpa attention gives (same mask, same arithmetic up to float
rounding); they only skip work it does on CPU:

* GQA (`gqa_attention`, decoding and the reference loss): with a mask, transformers copies each
  key/value head for its query heads (SmolLM2: 3 kv heads, 9 query heads) before calling
  scaled_dot_product_attention; `enable_gqa=True` lets torch share them (~3x less attention work).
* PACKED (`packed_attention`, training with sample packing): Axolotl packs several rows into one
  sequence and transformers keeps them apart with a block-diagonal causal mask over the whole
  pack, so every layer attends 1024 x 1024 with a mask. Attending each packed row on its own with
  is_causal is the same result and lets torch's CPU flash kernel skip what the mask would zero.
  Measured on this machine's 2 cores (a pack of 1,010 tokens in 4 rows + padding, 9/3 heads,
  head dim 64, forward + backward of one layer): 118.8 ms with transformers' sdpa in bf16, 49.4 ms
  this way (the rows attended in fp32, which the CPU kernel runs faster than bf16 here: 55.9 vs
  74.7 ms); x 30 layers, about 2.1 s of a 7.4 s training step. See benchmarks/train_throughput.py.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

GQA = "qi_sdpa_gqa"
PACKED = "qi_sdpa_packed"


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' sdpa attention without copying the grouped key/value heads.

    Anything unusual (no mask, no groups, a position bias, dropout) goes to the stock function.
    A bf16 model with an fp32 KV cache (transformers_backend._kv_dtype) attends in fp32.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out_dtype = query.dtype
    if key.dtype != query.dtype:
        query = query.to(key.dtype)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(key.dtype)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups <= 1 or attention_mask is None or kwargs.get("position_bias") is not None or dropout:
        out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                              scaling=scaling, is_causal=is_causal, **kwargs)
        return out.to(out_dtype), weights
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                                           is_causal=False, enable_gqa=True)
    return out.transpose(1, 2).contiguous().to(out_dtype), None


# --- packed rows ---------------------------------------------------------------------------------
# The plan of one forward pass: every layer gets the same mask tensor, so it is read once. A weak
# reference, so that a later mask allocated at the same address is never taken for this one.
_plan_of: list = [None, None]  # [weakref to the mask, plan]
# Forward passes by the way they attended (the train stage reports it: a pack attended the stock
# way means the mask was not what this module expects).
forwards = {"packed": 0, "stock": 0}


def packed_rows(position_ids) -> list[list[tuple[int, int]]]:
    """[(start, end), ...] of each packed row, per batch row: a row starts wherever the position
    does not follow the previous one (transformers' own rule, masking_utils.find_packed_sequence_indices)."""
    rows = []
    for pos in position_ids.tolist():
        starts = [0] + [t for t in range(1, len(pos)) if pos[t] != pos[t - 1] + 1]
        rows.append(list(zip(starts, starts[1:] + [len(pos)])))
    return rows


def _plan(attention_mask, position_ids, q_len: int, kv_len: int):
    """The packed rows, when the mask is exactly causal-within-each-row (else None: stock attention)."""
    import torch

    if attention_mask is None or position_ids is None or attention_mask.dtype != torch.bool or q_len != kv_len:
        return None
    ref, plan = _plan_of
    if ref is not None and ref() is attention_mask:
        return plan
    pos = position_ids.expand(attention_mask.shape[0], -1)
    rows = packed_rows(pos)
    first = pos[:, :1] - 1
    row_id = (torch.diff(pos, prepend=first, dim=-1) != 1).cumsum(-1)
    expected = (row_id[:, :, None] == row_id[:, None, :]) & torch.ones(q_len, q_len, dtype=torch.bool,
                                                                        device=pos.device).tril()
    plan = rows if attention_mask.shape[1] == 1 and torch.equal(attention_mask[:, 0], expected) else None
    _plan_of[:] = [weakref.ref(attention_mask), plan]
    forwards["packed" if plan else "stock"] += 1
    return plan


def _sdpa_packed(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Each packed row attended on its own (is_causal, grouped heads shared), in fp32.

    A row of one token attends to itself alone: its output is its value vector (softmax of one
    score is 1), so runs of them (padding) are copied, not attended.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plan = None
    if not dropout and kwargs.get("position_bias") is None and query.device.type == "cpu":
        plan = _plan(attention_mask, kwargs.get("position_ids"), query.shape[2], key.shape[2])
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = query.shape[1] // key.shape[1]
    with torch.autocast("cpu", enabled=False):
        q, k, v = query.float(), key.float(), value.float()
        out_rows = []
        for b, row in enumerate(plan):
            parts, single = [], None
            for s, e in row + [(None, None)]:
                if s is not None and e - s == 1:
                    single = (single[0], e) if single else (s, e)
                    continue
                if single:  # a run of one-token rows
                    parts.append(v[b:b + 1, :, single[0]:single[1]].repeat_interleave(groups, dim=1))
                    single = None
                if s is not None:
                    parts.append(torch.nn.functional.scaled_dot_product_attention(
                        q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e], is_causal=True, scale=scaling,
                        enable_gqa=True))
            out_rows.append(torch.cat(parts, dim=2))
        out = torch.cat(out_rows, dim=0).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _register(name: str, function) -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, sdpa_mask)  # the same boolean mask sdpa gets


@contextmanager
def gqa_attention(model):
    """_sdpa_gqa while the block runs (only for a model on plain sdpa), then the original back."""
    before = getattr(model.config, "_attn_implementation", None)
    if before != "sdpa":
        yield
        return
    _register(GQA, _sdpa_gqa)
    model.set_attn_implementation(GQA)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def use_packed_attention(model) -> bool:
    """Switch a CPU model on plain sdpa to _sdpa_packed for good (training); False if it is not one."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa" or next(model.parameters()).device.type != "cpu":
        return False
    _register(PACKED, _sdpa_packed)
    model.set_attn_implementation(PACKED)
    return True
