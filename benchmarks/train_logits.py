"""A training step with the output layer at the trained positions only vs at every position.

    python benchmarks/train_logits.py [--reps 8] [--precision bf16|fp32]

The base model (models/base, params.yaml) with the default's LoRA (lora_r, lora_alpha, the model
entry's target modules) and packed attention, as the train stage's Axolotl run has it: frozen
weights in bf16 under CPU autocast (or fp32), LoRA weights in fp32. The batch is the default's
shape, micro_batch_size rows of sequence_len tokens, packed from the chat training rows
(train.train_file, shuffled with the config's seed) with labels on the assistant turn only (the prompt masked, as
roles_to_train: [assistant] does). One model computes logits everywhere (transformers' way), one
has qi_expert.train.labeled_logits installed; forward + backward alternate between them `--reps`
times and the medians are printed with both losses (the same to float rounding).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.generation import attention  # noqa: E402
from qi_expert.train import labeled_logits


def packed_batch(tok, rows: list[dict], batch: int, width: int):
    """`batch` packs of `width` tokens from the chat rows: ids, positions, labels (prompt masked)."""
    import torch

    ids, pos, labels = torch.full((batch, width), tok.pad_token_id), torch.zeros(batch, width, dtype=torch.long), \
        torch.full((batch, width), -100)
    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    r = 0
    for b in range(batch):
        t = 0
        while r < len(rows):
            prompt = encode(tok.apply_chat_template(rows[r]["messages"][:-1], tokenize=False, add_generation_prompt=True))
            full = encode(tok.apply_chat_template(rows[r]["messages"], tokenize=False))
            if t + len(full) > width:
                break
            ids[b, t:t + len(full)] = torch.tensor(full)
            pos[b, t:t + len(full)] = torch.arange(len(full))
            labels[b, t + len(prompt):t + len(full)] = torch.tensor(full[len(prompt):])
            t, r = t + len(full), r + 1
    return ids, pos, labels


def load_default(cfg, bf16: bool):
    """(tokenizer, base model, chat training rows) of the default, the base model in bf16 or fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve_path(cfg.model.base_model)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                attn_implementation="sdpa")
    rows = [json.loads(line) for line in resolve_path(cfg.train.train_file).read_text().splitlines() if line.strip()]
    return tok, base, rows


def with_lora(cfg, base, labeled: bool):
    """`base` with the default's LoRA (fp32 adapter weights, as in the stage), packed attention and,
    when `labeled`, the output layer at the trained positions only; in training mode."""
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(base, LoraConfig(r=int(cfg.lora_r), lora_alpha=int(cfg.lora_alpha),
                                        target_modules=list(cfg.model.target_modules)))
    for p in m.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # PEFT's adapter weights stay fp32, as in the stage
    attention.use_packed_attention(m.get_base_model())
    if labeled:
        labeled_logits.use_labeled_logits(m)
    return m.train()


def timed_step(m, ids, pos, labels, bf16: bool) -> tuple[float, float, float]:
    """One forward + backward of `m` on a packed batch, as the trainer runs it (bf16 autocast or fp32):
    (forward seconds, backward seconds, loss)."""
    import torch

    count = (torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:] != -100).sum()
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = m(input_ids=ids, position_ids=pos, labels=labels, use_cache=False, num_items_in_batch=count)
    t1 = time.perf_counter()
    out.loss.backward()
    m.zero_grad()
    return t1 - t0, time.perf_counter() - t1, out.loss.item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()
    import torch

    cfg = load_params()
    bf16 = args.precision == "bf16"
    tok, base, rows = load_default(cfg, bf16)
    random.Random(int(cfg.seed)).shuffle(rows)  # packs like the trainer's shuffled ones, not the file's first rows
    ids, pos, labels = packed_batch(tok, rows, int(cfg.micro_batch_size), int(cfg.sequence_len))
    count = (torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:] != -100).sum()

    def model(labeled: bool):
        return with_lora(cfg, copy.deepcopy(base), labeled)

    def step(m) -> tuple[float, float]:
        forward, backward, loss = timed_step(m, ids, pos, labels, bf16)
        return forward + backward, loss

    models = {"every position": model(False), "trained positions": model(True)}
    times: dict[str, list[float]] = {k: [] for k in models}
    losses = {}
    for name, m in models.items():  # warm-up
        losses[name] = step(m)[1]
    for _ in range(args.reps):
        for name, m in models.items():
            times[name].append(step(m)[0])
    print(f"{args.precision}, batch {tuple(ids.shape)}, {int(count)} trained positions "
          f"({int(count) / ids.numel():.0%}), median of {args.reps} steps each, alternating:")
    for name in models:
        print(f"  {name:18} {statistics.median(times[name]):.2f} s a step (loss {losses[name]:.6f})")
    a, b = (statistics.median(times[k]) for k in models)
    print(f"  speed-up {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
