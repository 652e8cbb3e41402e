"""The output layer and the loss only where a token has a label (training on CPU).

A causal LM's forward computes logits for every position, [batch, 1024, 49152] for the CPU
default, and the loss then ignores every position whose next token is not trained (label -100:
the system prompt, the user turn, padding). The chat rows train only the assistant turns, so
more than half of those logits, and the float32 copy the loss makes of them, are thrown away.

`use_labeled_logits(model)` keeps the model's own forward and loss function and hands them
fewer rows: a pre-hook on the model reads `labels` and passes the loss the shifted labels of the
trained positions (`shift_labels`, which transformers' ForCausalLMLoss takes as they are), and a
pre-hook on the output layer gives it only those positions' hidden states. The first hook goes on
the module the trainer calls (a PEFT wrapper calls its inner model's `forward` directly, which
runs no hooks), the second on the `lm_head` inside it. The loss is the same
sum over the same tokens divided by the same count (float rounding aside), and so are the
gradients; only `outputs.logits` changes shape ([trained tokens, vocab]), which nothing in
training reads. A call without labels (generation) is untouched.

Measured (benchmarks/train_logits.py: the default's model, LoRA and packed batch of chat rows,
forward + backward alternating between the two ways): see the figure there and in the README.
Liger's and Apple's fused linear cross entropy (Axolotl plugins) do more, but only on CUDA.
"""

from __future__ import annotations

IGNORE = -100
ROWS = 256  # the logits' row count is a multiple of this (see select_labels)
# Forward passes with labels by how the output layer ran (the train stage reports it): "all" when
# the caller chose its own positions; no "labeled" at all with the hooks installed would mean the
# trainer calls the model in a way they do not see.
forwards = {"labeled": 0, "all": 0}


def _owner(model):
    """The module that holds `lm_head` and calls the loss (a PEFT wrapper's inner model)."""
    for module in model.modules():
        if hasattr(module, "lm_head") and hasattr(module, "loss_function"):
            return module
    return None


def use_labeled_logits(model) -> bool:
    """Install the two hooks on `model` (what the trainer calls) and the lm_head inside it; False if
    it has no lm_head to hook."""
    import torch

    lm = _owner(model)
    if lm is None:
        return False
    keep: list = [None]  # the current forward's trained positions, [batch, seq] bool

    def select_labels(module, args, kwargs):
        labels, logits_to_keep = kwargs.get("labels"), kwargs.get("logits_to_keep", 0)
        keep[0] = None
        if labels is None:
            return None
        if kwargs.get("shift_labels") is not None or not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            forwards["all"] += 1
            return None
        forwards["labeled"] += 1
        shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[..., 1:]
        mask = shifted != IGNORE
        # Rounded up to a multiple of ROWS with untrained positions (ignored by the loss), so that
        # the logits come in a few sizes: with the stage's malloc settings (AXOLOTL_ENV: freed
        # memory is kept) a new size every step grew the train process to 10 GB over 40 steps.
        n = int(mask.sum())
        want = min(mask.numel(), -(-n // ROWS) * ROWS)
        if want > n:
            mask = mask.flatten()
            mask[(~mask).nonzero()[:want - n, 0]] = True
            mask = mask.view_as(shifted)
        keep[0] = mask
        return args, {**kwargs, "shift_labels": shifted[mask]}

    def select_rows(module, args):
        mask = keep[0]
        if mask is None:
            return None
        keep[0] = None
        hidden = args[0]
        if hidden.shape[:2] != mask.shape:
            raise ValueError(f"labeled_logits: hidden states {tuple(hidden.shape)} do not match labels "
                             f"{tuple(mask.shape)}")
        return (hidden[mask],)

    model.register_forward_pre_hook(select_labels, with_kwargs=True)
    lm.lm_head.register_forward_pre_hook(select_rows)
    return True
