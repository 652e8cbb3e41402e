"""qi_expert.train.labeled_logits: the output layer at the trained positions only, the same loss and gradients."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from test_attention import _packed_batch
from transformers import LlamaForCausalLM

from qi_expert.generation import attention
from qi_expert.train import labeled_logits


def _lora(tiny_model):
    base, adapter = tiny_model
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True).train()


def _step(model, ids, pos, labels, **kwargs):
    model.zero_grad()
    out = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False, **kwargs)  # as Axolotl trains
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.parametrize("count", [True, False], ids=["num_items_in_batch", "mean"])
def test_the_loss_and_gradients_are_the_models_own(tiny_model, count, monkeypatch):
    """Through PEFT's wrapper (which calls its inner model's forward without hooks), on packed rows
    with untrained positions (the first of each row, padding), with the trainer's token count
    (a sum divided by it) and without (a mean), packed attention on as in training."""
    ids, pos, labels = _packed_batch(64)
    labels[0, :4] = -100  # a prompt: positions whose next token is not trained
    labels[1, 2:9] = -100
    kwargs = {"num_items_in_batch": (labels[:, 1:] != -100).sum()} if count else {}
    stock, lab = _lora(tiny_model), _lora(tiny_model)
    ids = ids % stock.config.vocab_size
    attention.use_packed_attention(stock.get_base_model())
    attention.use_packed_attention(lab.get_base_model())
    want_loss, want_logits, want_grads = _step(stock, ids, pos, labels, **kwargs)

    monkeypatch.setattr(labeled_logits, "ROWS", 8)
    before = dict(labeled_logits.forwards)
    assert labeled_logits.use_labeled_logits(lab)
    got_loss, got_logits, got_grads = _step(lab, ids, pos, labels, **kwargs)
    trained = (torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:] != -100).flatten()
    # The trained positions went through the output layer, plus the first untrained ones that
    # round the row count up to ROWS (8 here): their logits, in order.
    n = int(trained.sum())
    assert n % 8
    rows = trained.clone()
    rows[(~trained).nonzero()[:8 - n % 8, 0]] = True
    assert got_logits.shape == (n + 8 - n % 8, stock.config.vocab_size)
    assert torch.allclose(got_logits, want_logits.flatten(0, 1)[rows], atol=1e-6)
    assert labeled_logits.forwards["labeled"] == before["labeled"] + 1
    assert torch.allclose(got_loss, want_loss, rtol=1e-6)
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-7, rtol=1e-5), name


def test_calls_without_labels_or_with_their_own_selection_are_untouched(tiny_model):
    model = _lora(tiny_model).eval()
    ids, pos, labels = _packed_batch(model.config.vocab_size)
    with torch.no_grad():
        want = model(input_ids=ids, position_ids=pos).logits
        shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
        own = model(input_ids=ids, position_ids=pos, labels=labels, shift_labels=shifted)
        assert labeled_logits.use_labeled_logits(model)
        before = dict(labeled_logits.forwards)
        got = model(input_ids=ids, position_ids=pos).logits  # generation: every position
        assert torch.equal(got, want)
        # A caller that passes its own shifted labels keeps every position (and is counted as "all").
        again = model(input_ids=ids, position_ids=pos, labels=labels, shift_labels=shifted)
        assert torch.equal(again.logits, own.logits) and torch.equal(again.loss, own.loss)
    assert labeled_logits.forwards == {"labeled": before["labeled"], "all": before["all"] + 1}


def test_a_model_without_an_output_layer_is_refused():
    assert labeled_logits.use_labeled_logits(torch.nn.Linear(2, 2)) is False
