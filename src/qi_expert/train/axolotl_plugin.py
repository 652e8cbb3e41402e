"""An Axolotl plugin that seeds the run and reports what ran: the model's layers, the padding.

Listed under `plugins:` in the generated Axolotl YAML; Axolotl imports it inside its own
process. It writes two JSON files into Axolotl's output_dir, which the train stage reads:

* qi_model_report.json (after the model and adapter are loaded): trainable / total parameters,
  how many linear layers are bitsandbytes Linear4bit (QLoRA) or LoRA-wrapped, parameter dtypes.
* qi_token_report.json (at the end of training): real tokens vs token slots of the training
  batches the collator built in this process, so padding share = 1 - real / slots.

Two changes to training, both for "same inputs and params, same adapter":

Seeding. Axolotl 0.19 seeds nothing before it loads the model: the first set_seed is the HF
Trainer's, built after the LoRA layers exist, so lora_A's random init came from torch's unseeded
start-up RNG and two runs with the same params began from different adapters (measured on the
default: step-1 grad norm 0.3854 vs 0.389, final adapters up to 0.08 apart). The plugin seeds
(random, numpy, torch) with cfg.seed before the model is built and again before the LoRA layers
are created, so their init depends on the seed alone.

Packed order, for exact resumption: with sample packing, Axolotl 0.19 shuffles with a
RandomSampler that draws its seed from torch's global RNG when the batches are (re)built, so a run
resumed from a checkpoint sees another order than the uninterrupted run did. The plugin gives
the packed batch sampler an order that depends on the seed and epoch alone (the same shuffle,
reproducible): an interrupted run resumed from step k ends with the same adapter. One more
piece for a resume inside a later epoch: transformers 5.16 wraps the loader in accelerate's
skip_first_batches there, and that loader's set_epoch never reaches the packed sampler, which
then shuffles the resumed epoch as epoch 0 (measured: 16 steps of 8 per epoch, resumed from
step 12, losses from step 13 on differ and so does the adapter). The plugin sets the sampler's
epoch itself at the start of every epoch.

And two for speed: with `qi_packed_attention: true` in the Axolotl YAML (the CPU default's
train.cpu_attention: sdpa_packed), the loaded model attends each packed row on its own
(qi_expert.generation.attention): the same result as transformers' block-diagonal mask, less work. With
`qi_labeled_logits: true` (train.cpu_logits: labeled), its output layer and loss run on the
trained positions only (qi_expert.train.labeled_logits): the same loss and gradients.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

import torch
from axolotl.integrations.base import BasePlugin
from pydantic import BaseModel
from torch.utils.data import RandomSampler, Sampler
from transformers import TrainerCallback, set_seed

from qi_expert.generation import attention
from qi_expert.train import labeled_logits
from qi_expert.train.training import MODEL_REPORT, SKIP_EVAL_ON_START, TOKEN_REPORT


class QiArgs(BaseModel):
    """This plugin's keys in the Axolotl YAML (Axolotl validates them with its own config)."""

    qi_packed_attention: bool = False
    qi_labeled_logits: bool = False


def _rank() -> int:
    """This process's rank under a multi-process launcher (conf/launcher/); 0 alone."""
    return int(os.environ.get("RANK", "0"))


def _write(cfg, name: str, data: dict) -> None:
    if _rank() != 0:
        return  # several processes train one model: only the first writes what the stage reads
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class _CountingCollator:
    """Wraps the training collator: counts real tokens and token slots of every batch."""

    def __init__(self, inner):
        self.inner = inner
        self.real = 0
        self.slots = 0
        self.batches = 0
        self.batch_real: list[int] = []
        self.batch_slots: list[int] = []
        self.digest = hashlib.sha256()  # of every batch's token ids: which rows this process trained on

    def __call__(self, features, *args, **kwargs):
        batch = self.inner(features, *args, **kwargs)
        items = [x for group in features for x in group] if features and isinstance(features[0], list) else features
        real, slots = sum(len(x["input_ids"]) for x in items), int(batch["input_ids"].numel())
        self.real += real
        self.slots += slots
        self.batch_real.append(real)
        self.batch_slots.append(slots)
        self.batches += 1
        self.digest.update(batch["input_ids"].cpu().numpy().tobytes())
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _TokenReport(TrainerCallback):
    """Also times the optimizer steps alone (forward, backward, update): evaluation, logging and
    checkpointing happen between on_step_end and the next on_step_begin and are left out."""

    def __init__(self, cfg, counter: _CountingCollator):
        self.cfg, self.counter = cfg, counter
        self.step_seconds = 0.0
        self.steps = 0
        self.step_times: list[float] = []
        self._t = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t is not None:
            dt = time.perf_counter() - self._t
            self.step_seconds += dt
            self.step_times.append(round(dt, 4))
            self.steps += 1
            self._t = None

    def on_train_end(self, args, state, control, **kwargs):
        c = self.counter
        if not c.batches and (Path(self.cfg.output_dir) / TOKEN_REPORT).is_file():
            return  # resumed at the final checkpoint: keep the report of the run that trained
        # Every process's share, gathered on the first: under a multi-process launcher the tokens
        # are the sum, and the trained weights' digest must be the same on every rank (the
        # gradients were all-reduced: one model, trained once).
        mine = {"rank": _rank(), "batches": c.batches, "real_tokens": c.real, "token_slots": c.slots,
                "batches_sha256": c.digest.hexdigest(), "trainable_sha256": _trainable_digest(kwargs.get("model"))}
        ranks = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        real, slots = sum(r["real_tokens"] for r in ranks), sum(r["token_slots"] for r in ranks)
        _write(self.cfg, TOKEN_REPORT, {
            "batches": sum(r["batches"] for r in ranks), "real_tokens": real, "token_slots": slots,
            "padding_share": round(1 - real / slots, 4) if slots else None,
            "steps_timed": self.steps, "step_seconds": round(self.step_seconds, 3),
            "token_slots_per_second": round(slots / self.step_seconds, 1) if self.step_seconds else None,
            "real_tokens_per_second": round(real / self.step_seconds, 1) if self.step_seconds else None,
            "global_step": state.global_step,
            "step_times": self.step_times,
            "batch_slots": self.counter.batch_slots,
            "batch_real": self.counter.batch_real,
            # Forward passes (with a mask) by how they attended: all "packed" when packing is on.
            "attention_forwards": dict(attention.forwards),
            # Forward passes with labels by where the output layer ran (train.cpu_logits).
            "logits_forwards": dict(labeled_logits.forwards),
            "world_size": len(ranks),
            "ranks": ranks,
        })


def _trainable_digest(model) -> str | None:
    if model is None:
        return None
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class _SeededOrder(Sampler):
    """A random permutation of range(n) fixed by (seed, epoch of the owning batch sampler)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.owner = n, seed, None

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch = int(getattr(self.owner, "epoch", 0) or 0)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class _EpochOfPackedOrder(TrainerCallback):
    """Tells the packed training sampler which epoch begins, resumed epochs included."""

    def __init__(self):
        self.samplers: list = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional mid-epoch (a resume at step 12 of 8 per epoch: 1.5) and whole at
        # an epoch's start; the small margin keeps 0.9999999 from a float sum out of epoch 0.
        epoch = math.floor((state.epoch or 0.0) + 1e-6)
        for sampler in self.samplers:
            sampler.set_epoch(epoch)


def _seed_packed_order(trainer, seed: int) -> None:
    create = getattr(trainer, "_create_multipack_sampler", None)
    if create is None:  # another Axolotl version: leave its sampler alone
        return
    epochs = _EpochOfPackedOrder()
    trainer.add_callback(epochs)

    def seeded(base_sampler, dataset):
        if type(base_sampler) is RandomSampler:
            base_sampler = _SeededOrder(len(dataset), seed)
        sampler = create(base_sampler=base_sampler, dataset=dataset)
        if isinstance(base_sampler, _SeededOrder):
            base_sampler.owner = sampler
            epochs.samplers.append(sampler)
        return sampler

    trainer._create_multipack_sampler = seeded


class ModelReportPlugin(BasePlugin):
    def get_input_args(self):
        return "qi_expert.train.axolotl_plugin.QiArgs"

    def get_training_args(self, cfg):
        args = {}
        if not torch.cuda.is_available():
            # Axolotl 0.19 never sets use_cpu; without it transformers refuses bf16 on a machine
            # without a GPU ("Your setup doesn't support bf16/gpu"), though CPU autocast runs it.
            args["use_cpu"] = True
        if os.environ.get(SKIP_EVAL_ON_START) == "1":
            # The train stage already knows the base model's validation loss (training.cached_base_val):
            # Axolotl's eval_on_start pass would measure the same number again.
            args["eval_on_start"] = False
        return args

    def pre_model_load(self, cfg):
        set_seed(int(cfg.seed or 0))  # weights the build itself initialises (e.g. resized embeddings)
        # Several processes on CPU (launcher=ddp, gloo): Axolotl places rank r's model on
        # accelerator r ({"": LOCAL_RANK}), which a CPU has not. Every rank loads on the CPU; the
        # loader holds this same mapping object, so the change reaches from_pretrained.
        if not torch.cuda.is_available() and isinstance(cfg.device_map, dict):
            for key in list(cfg.device_map):
                cfg.device_map[key] = "cpu"

    def pre_lora_load(self, cfg, model):
        set_seed(int(cfg.seed or 0))  # the adapter's init, whatever the build drew before it

    def post_model_load(self, cfg, model):
        packed = bool(cfg.qi_packed_attention) and attention.use_packed_attention(model)
        labeled = bool(cfg.qi_labeled_logits) and labeled_logits.use_labeled_logits(model)
        kinds: Counter = Counter()
        dtypes: Counter = Counter()
        for module in model.modules():
            name = type(module).__name__
            if name in ("Linear4bit", "Linear8bitLt", "Linear"):
                kinds[f"{type(module).__module__}.{name}"] += 1
        trainable = total = 0
        for p in model.parameters():
            n = p.numel()
            total += n
            dtypes[str(p.dtype)] += n
            if p.requires_grad:
                trainable += n
        _write(cfg, MODEL_REPORT, {
            "model_class": type(model).__name__,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "linear_layers": dict(sorted(kinds.items())),
            # bitsandbytes' own 4-bit layers (PEFT's LoRA wrapper around each is also "Linear4bit").
            "linear4bit_layers": sum(v for k, v in kinds.items()
                                     if k.startswith("bitsandbytes.") and k.endswith(".Linear4bit")),
            "parameter_dtypes": dict(sorted(dtypes.items())),
            "attention": getattr(model.config, "_attn_implementation", None),
            "packed_attention": packed,
            "labeled_logits": labeled,
        })

    def post_trainer_create(self, cfg, trainer):
        counter = _CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        trainer.add_callback(_TokenReport(cfg, counter))
        _seed_packed_order(trainer, int(cfg.seed or 0))
