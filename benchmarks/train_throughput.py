"""Training throughput: the train stage's Axolotl run in bf16 vs fp32, and vs a plain PEFT loop.

    python benchmarks/train_throughput.py [--steps 6] [--skip 1] [key=value ...]
    python benchmarks/train_throughput.py --only axolotl --validate     # the default's whole run, both precisions

Precision (--precisions, default: bf16 and fp32 where the CPU has bf16 instructions): the same
Axolotl run with train.cpu_precision set to each, one after the other; prints tokens/s of each
and the bf16 / fp32 ratio. --validate runs the config's whole run (max_steps, validation every
eval_steps) in each precision and prints the validation loss at every pass side by side: does
bf16 learn as well?

The plain loop trains the same base model (params.yaml's model.base_model, fp32, CPU) with the same LoRA
settings (adapter, lora_r, lora_alpha, lora_dropout, target modules), the same rows
(train.train_file, chat template applied, truncated to sequence_len) and the same batch
(micro_batch_size x gradient_accumulation_steps rows/bins of at most sequence_len tokens),
for --steps optimizer steps. Only the optimizer steps are timed (forward, backward, update),
the first --skip of them left out as warm-up; no evaluation, no checkpoint in either.

* Axolotl: the stage's generated config (sample packing and train.cpu_attention as configured), run by
  `axolotl.cli.preprocess` + `axolotl.cli.train`; the stage's plugin times the steps and counts
  real tokens vs token slots of every batch it built.
* Plain loop: shuffled rows, micro_batch_size rows per micro-batch padded to the longest one
  (what a hand-written loop does), the same AdamW.

Prints tokens/s over real (non-padding) tokens and over token slots, and the padding share of
each, plus the machine's load average (the figures are only comparable on a quiet machine).
Extra arguments are Hydra overrides of params.yaml (e.g. adapter=qlora sequence_len=256).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core import files

# The plain loop runs in this process with the OpenMP settings the Axolotl processes inherit
# (qi_expert picks the wait policy at import).
from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.generation import basemodel
from qi_expert.train import axolotl_config, training  # noqa: E402
from qi_expert.train import report as train_report  # noqa: E402


def axolotl_run(cfg, steps: int, workdir: Path, validate: bool = False) -> dict:
    y = axolotl_config.build(cfg, cuda=False)
    y.update({"max_steps": steps, "output_dir": str(workdir / "out"),
              "dataset_prepared_path": str(workdir / "prepared"), "auto_resume_from_checkpoints": False})
    if validate:  # the stage's run as configured; one checkpoint at the end holds the log history
        y.update({"save_strategy": "steps", "save_steps": steps})
    else:
        y.update({"warmup_steps": 0, "save_strategy": "no", "eval_strategy": "no"})
        for key in ("test_datasets", "eval_steps", "save_steps", "eval_sample_packing"):
            y.pop(key, None)
    path = axolotl_config.write(y, workdir / "axolotl.yaml")
    env = training.axolotl_env({"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"})
    training.run_axolotl("preprocess", path, env)
    training.run_axolotl("train", path, env)
    report = train_report.plugin_report(workdir / "out", training.TOKEN_REPORT)
    if validate:
        rows = train_report.loss_rows(train_report.trainer_state(workdir / "out"))
        report["val_loss"] = {r["step"]: r["val_loss"] for r in rows if r["val_loss"] != ""}
    return report


def plain_run(cfg, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(int(cfg.seed))
    base = resolve_path(cfg.model.base_model)
    tok = AutoTokenizer.from_pretrained(base)
    rows = [r["messages"] for r in files.read_jsonl(resolve_path(cfg.train.train_file))]
    seq = [tok(tok.apply_chat_template(m, tokenize=False), add_special_tokens=False)["input_ids"][: int(cfg.sequence_len)]
           for m in rows]
    random.Random(int(cfg.seed)).shuffle(seq)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                 attn_implementation=axolotl_config.cpu_attention(str(cfg.train.cpu_attention)))
    if str(cfg.adapter) == "qlora":
        raise SystemExit("the plain loop compares the LoRA path; run it with adapter=lora")
    model = get_peft_model(model, LoraConfig(r=int(cfg.lora_r), lora_alpha=int(cfg.lora_alpha),
                                             lora_dropout=float(cfg.lora_dropout),
                                             target_modules=list(cfg.model.target_modules), task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(cfg.learning_rate))
    mbs, ga = int(cfg.micro_batch_size), int(cfg.gradient_accumulation_steps)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    step_times, batch_real, batch_slots = [], [], []
    i = 0
    for _ in range(steps):
        t = time.perf_counter()
        for _ in range(ga):
            batch = [seq[(i + k) % len(seq)] for k in range(mbs)]
            i += mbs
            width = max(len(s) for s in batch)
            ids = torch.full((mbs, width), pad, dtype=torch.long)
            mask = torch.zeros((mbs, width), dtype=torch.long)
            for r, s in enumerate(batch):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / ga
            loss.backward()
            batch_real.append(int(mask.sum()))
            batch_slots.append(ids.numel())
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.train.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - t)
    return {"step_times": step_times, "batch_real": batch_real, "batch_slots": batch_slots}


def summary(report: dict, skip: int, ga: int) -> dict:
    times = report["step_times"][skip:]
    real = report["batch_real"][skip * ga:]
    slots = report["batch_slots"][skip * ga:]
    seconds = sum(times)
    return {"steps_timed": len(times), "seconds": round(seconds, 2),
            "real_tokens_per_s": round(sum(real) / seconds, 1), "slot_tokens_per_s": round(sum(slots) / seconds, 1),
            "padding_share": round(1 - sum(real) / sum(slots), 4), "s_per_step": round(seconds / len(times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip", type=int, default=1, help="warm-up steps left out of the timing")
    ap.add_argument("--only", choices=["axolotl", "plain"], default=None)
    ap.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"],
                    default=["bf16", "fp32"] if basemodel.cpu_bf16_supported() else ["fp32"],
                    help="train.cpu_precision of each Axolotl run")
    ap.add_argument("--validate", action="store_true",
                    help="the config's whole run (max_steps, validation every eval_steps) per precision")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_params(args.overrides)
    steps = int(cfg.max_steps) if args.validate else args.steps
    ga = int(cfg.gradient_accumulation_steps)
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores); model {cfg.model.name}, {cfg.adapter} "
          f"r={cfg.lora_r}, batch {cfg.micro_batch_size}x{ga} x {cfg.sequence_len} tokens, "
          f"sample_packing={cfg.sample_packing}, {steps} steps ({args.skip} warm-up)", flush=True)
    results = {}
    if args.only in (None, "axolotl"):
        for precision in args.precisions:
            run_cfg = load_params([*args.overrides, f"train.cpu_precision={precision}"])
            work = Path(tempfile.mkdtemp(prefix="qi-throughput-"))
            try:
                report = axolotl_run(run_cfg, steps, work, validate=args.validate)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            results[f"axolotl-{precision}"] = {**summary(report, args.skip, ga),
                                               **({"val_loss": report["val_loss"]} if args.validate else {})}
    if args.only in (None, "plain"):
        results["plain-fp32"] = summary(plain_run(cfg, args.steps), args.skip, ga)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for name, r in results.items():
        print(f"{name:13s} {r['real_tokens_per_s']:8.1f} real tokens/s  {r['slot_tokens_per_s']:8.1f} slot tokens/s  "
              f"padding {r['padding_share']:.1%}  {r['s_per_step']} s/step over {r['steps_timed']} steps")
    bf16, fp32 = results.get("axolotl-bf16"), results.get("axolotl-fp32")
    if bf16 and fp32:
        print(f"axolotl bf16 / fp32 (real tokens/s): {bf16['real_tokens_per_s'] / fp32['real_tokens_per_s']:.2f}")
        for step, v in fp32.get("val_loss", {}).items():
            b = bf16["val_loss"].get(step)
            if b is not None:
                print(f"  val loss at step {step}: fp32 {v:.4f}  bf16 {b:.4f}  ({(b - v) / v:+.2%})")
    if fp32 and "plain-fp32" in results:
        print(f"axolotl / plain, fp32 (real tokens/s): "
              f"{fp32['real_tokens_per_s'] / results['plain-fp32']['real_tokens_per_s']:.2f}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
