"""What a train run leaves, read back: Axolotl's trainer state, the loss curve, the plugin's
reports, the stage's metrics (summarise) and their MLflow run."""

from __future__ import annotations

import csv
import json
import resource
import time
from pathlib import Path

from omegaconf import DictConfig

from qi_expert.core import files
from qi_expert.train.training import checkpoints


def plugin_report(output_dir: Path, name: str) -> dict:
    path = output_dir / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def log_to_mlflow(client, run_id: str, cfg: DictConfig, metrics: dict, rows: list[dict],
                  config_path: Path) -> None:
    """The whole flattened config as params, the summary metrics, and any per-step loss Axolotl's
    MLflow callback did not log in this run (the steps before a resumed checkpoint)."""
    from mlflow.entities import Metric, Param

    from qi_expert.core import tracking

    existing = client.get_run(run_id).data.params
    params = []
    for key, value in tracking.flatten(cfg).items():
        if key not in existing:
            params.append(Param(key, value))
        elif existing[key] != value:  # a name Axolotl/HF logged with another meaning or format
            params.append(Param(f"cfg.{key}", value))
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    ts = int(time.time() * 1000)
    summary = [Metric(f"final.{k}", float(v), ts, 0) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    logged = {m.step for m in client.get_metric_history(run_id, "loss")}
    logged_eval = {m.step for m in client.get_metric_history(run_id, "eval_loss")}
    backfill = [Metric("loss", float(r["train_loss"]), ts, r["step"]) for r in rows
                if r["train_loss"] != "" and r["step"] not in logged]
    backfill += [Metric("eval_loss", float(r["val_loss"]), ts, r["step"]) for r in rows
                 if r["val_loss"] != "" and r["step"] not in logged_eval]
    batch = summary + backfill
    for i in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[i:i + 500])
    client.log_artifact(run_id, str(config_path))


def trainer_state(output_dir: Path) -> dict:
    """The HF trainer state of the finished run: output_dir's own, else the last checkpoint's."""
    candidates = [output_dir / "trainer_state.json"] + [c / "trainer_state.json" for c in reversed(checkpoints(output_dir))]
    states = [json.loads(p.read_text()) for p in candidates if p.is_file()]
    if not states:
        raise FileNotFoundError(f"no trainer_state.json in {output_dir} or its checkpoints")
    return max(states, key=lambda s: s.get("global_step", 0))


def loss_rows(state: dict) -> list[dict]:
    """[{step, train_loss, val_loss}] from log_history (a step may have either or both)."""
    rows: dict[int, dict] = {}
    for entry in state.get("log_history", []):
        step = int(entry.get("step", 0))
        if "loss" in entry:
            rows.setdefault(step, {"step": step, "train_loss": "", "val_loss": ""})["train_loss"] = float(entry["loss"])
        if "eval_loss" in entry:
            rows.setdefault(step, {"step": step, "train_loss": "", "val_loss": ""})["val_loss"] = float(entry["eval_loss"])
    return [rows[s] for s in sorted(rows)]


def write_loss_csv(path: Path, rows: list[dict]) -> None:
    with files.atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["step", "train_loss", "val_loss"], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})


def _last(state: dict, key: str):
    """The last value of `key` in the trainer's log history (Axolotl's cumulative counters)."""
    for entry in reversed(state.get("log_history", [])):
        if key in entry:
            return entry[key]
    return None


def summarise(state: dict, rows: list[dict], y: dict, wall: float, train_seconds: float, resumed_step: int,
              model_report: dict, token_report: dict) -> dict:
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] != ""]
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] != ""]
    slots = int(_last(state, "tokens/total") or 0)       # token slots of all steps (with padding)
    trained = int(_last(state, "tokens/trainable") or 0)  # tokens with a label (assistant turns)
    padding = token_report.get("padding_share")
    tail = [v for _, v in train[-5:]]  # the mean of the last few says more than one noisy batch
    steps = int(state.get("global_step", 0))
    return {
        "steps": steps,
        "steps_this_run": steps - resumed_step,  # 0: a finished run reused
        "max_steps": int(y["max_steps"]),
        "micro_batch_size": int(y["micro_batch_size"]),
        "gradient_accumulation_steps": int(y["gradient_accumulation_steps"]),
        "sequence_len": int(y["sequence_len"]),
        "adapter": y["adapter"],
        "precision": "bf16" if y.get("bf16") is True else "fp16" if y.get("fp16") is True
                     else "bf16 (auto)" if y.get("bf16") == "auto" else "fp32",
        "train_loss_first": train[0][1] if train else None,
        "train_loss_final": train[-1][1] if train else None,
        "train_loss_final_mean5": round(sum(tail) / len(tail), 4) if tail else None,
        "train_loss_best": min(v for _, v in train) if train else None,
        "val_loss_first": val[0][1] if val else None,
        "val_loss_final": val[-1][1] if val else None,
        "val_loss_final_step": val[-1][0] if val else None,
        "val_loss_best": min(v for _, v in val) if val else None,
        "val_loss_best_step": min(val, key=lambda sv: sv[1])[0] if val else None,
        "tokens_seen": slots,
        "tokens_seen_non_padding": round(slots * (1 - padding)) if padding is not None else None,
        "tokens_trained": trained,
        "padding_share": padding,
        # Throughput of the optimizer steps this invocation ran (no eval/checkpoint time), over
        # token slots (with padding) and over real tokens.
        "tokens_per_second": token_report.get("token_slots_per_second"),
        "non_padding_tokens_per_second": token_report.get("real_tokens_per_second"),
        "train_steps_s": token_report.get("step_seconds"),
        "train_process_s": round(train_seconds, 1),
        "wall_time_s": round(wall, 1),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "trainable_parameters": model_report.get("trainable_parameters"),
        "linear4bit_layers": model_report.get("linear4bit_layers"),
        # How the model attended (train.cpu_attention): qi_sdpa_packed attends each packed row on
        # its own; forward passes (training and validation) that did so vs that fell back.
        "attention": model_report.get("attention"),
        "attention_forwards": token_report.get("attention_forwards"),
        # train.cpu_logits: labeled: the output layer and the loss ran at the trained positions only.
        "labeled_logits": model_report.get("labeled_logits", False),
        "logits_forwards": token_report.get("logits_forwards"),
        # Processes that trained the model together (launcher): each one's rows and final weights.
        "world_size": token_report.get("world_size", 1),
        "ranks": token_report.get("ranks", []),
    }
