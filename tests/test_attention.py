"""qi_expert.generation.attention: the project's attention functions give transformers' sdpa results."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from qi_expert.generation import attention

# Two batch rows, each packing three sequences and padding the way Axolotl's collator does
# (position 0 for every padding slot, so each is a one-token sequence of its own).
ROW_LENGTHS = [[7, 12, 5], [20, 3, 1]]
WIDTH = 28


def _packed_batch(vocab: int):
    g = torch.Generator().manual_seed(0)
    ids, pos, labels = [], [], []
    for lengths in ROW_LENGTHS:
        p = [t for n in lengths for t in range(n)]
        p += [0] * (WIDTH - len(p))
        row = torch.randint(3, vocab, (WIDTH,), generator=g)
        lab = row.clone()
        lab[sum(lengths):] = -100
        ids.append(row), pos.append(torch.tensor(p)), labels.append(lab)
    return torch.stack(ids), torch.stack(pos), torch.stack(labels)


def _loss_and_grads(model, ids, pos, labels):
    model.zero_grad()
    out = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False)  # as Axolotl trains
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_rows_follow_transformers_rule():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 5, 6]])
    assert attention.packed_rows(pos) == [[(0, 3), (3, 5), (5, 6), (6, 7), (7, 9)]]


def test_packed_attention_gives_sdpa_results_and_gradients(tiny_model):
    base, _ = tiny_model
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa").train()
    ids, pos, labels = _packed_batch(model.config.vocab_size)
    want_logits, want_grads = _loss_and_grads(model, ids, pos, labels)

    before = dict(attention.forwards)
    assert attention.use_packed_attention(model)
    assert model.config._attn_implementation == attention.PACKED
    got_logits, got_grads = _loss_and_grads(model, ids, pos, labels)
    # One forward pass, attended row by row (the mask was the block-diagonal one it expects).
    assert attention.forwards["packed"] == before["packed"] + 1 and attention.forwards["stock"] == before["stock"]
    real = labels != -100
    assert torch.allclose(got_logits[real], want_logits[real], atol=1e-5)
    assert want_grads.keys() == got_grads.keys()
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-5, rtol=1e-4), name


def test_a_padded_batch_is_attended_the_stock_way(tiny_model):
    """With a 2D padding mask transformers builds a padding mask, not the packed one: the
    function must not take its rows for packed ones."""
    base, _ = tiny_model
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        attention.use_packed_attention(model)
        before = dict(attention.forwards)
        got = model(input_ids=ids, attention_mask=mask).logits
    assert attention.forwards["stock"] == before["stock"] + 1 and attention.forwards["packed"] == before["packed"]
    assert torch.allclose(got[mask.bool()], want[mask.bool()], atol=1e-6)
