"""Helpers of the train stage: input checks, run Axolotl, resume bookkeeping, read its results.

Axolotl does the training (`python -m axolotl.cli.train` on the generated YAML in a subprocess,
after `python -m axolotl.cli.preprocess` under a launcher with several processes); this module
only prepares, launches and reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig

from qi_expert.core import files, lifetime
from qi_expert.core.config import ROOT, resolve_path
from qi_expert.generation import basemodel
from qi_expert.train import axolotl_config

FINGERPRINT = "RUN_FINGERPRINT.json"
# Written into output_dir by qi_expert.train.axolotl_plugin inside the Axolotl process.
MODEL_REPORT = "qi_model_report.json"
TOKEN_REPORT = "qi_token_report.json"
# Set to "1" in the Axolotl process's environment: the plugin turns eval_on_start off.
SKIP_EVAL_ON_START = "QI_SKIP_EVAL_ON_START"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
                   "added_tokens.json")


class IncompleteRun(RuntimeError):
    """Axolotl ended before max_steps (e.g. it handled a SIGINT and exited 0)."""


class TrainInputError(RuntimeError):
    """The model or data the train stage was given cannot be trained on (before any run)."""


def check_inputs(cfg: DictConfig) -> None:
    """Clear errors before anything is launched: missing base model, no chat template, no data."""
    m, tc = cfg.model, cfg.train
    if not basemodel.is_hub_id(m):
        base = resolve_path(m.base_model)
        if not (base / "config.json").is_file():
            hint = ("run the prepare stage first (`python stages/prepare.py` or `dvc repro prepare`)"
                    if str(m.source.kind) != "hub" else "fix model.base_model")
            raise TrainInputError(f"model '{m.name}': base model directory {base} does not exist or "
                                  f"holds no config.json; {hint}")
        if str(tc.dataset_type) == "chat_template" and str(m.chat_template) == "tokenizer_default":
            if not tokenizer_has_chat_template(base):
                raise TrainInputError(
                    f"model '{m.name}': the tokenizer in {base} has no chat template, and the chat "
                    f"format (train.dataset_type=chat_template) with model.chat_template="
                    f"tokenizer_default needs one; name a template in the model entry "
                    f"(e.g. chatml) or train another model")
    for key in ("train_file", "val_file"):
        path = resolve_path(tc[key])
        if not path.is_file() or path.stat().st_size == 0:
            raise TrainInputError(f"train.{key}: {path} is missing or empty; run the format stage "
                                  f"(`python stages/format.py`)")


def tokenizer_has_chat_template(path: Path) -> bool:
    """Without loading the tokenizer: a chat_template.jinja or one in tokenizer_config.json."""
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    tc = path / "tokenizer_config.json"
    if tc.is_file():
        return bool(json.loads(tc.read_text(encoding="utf-8")).get("chat_template"))
    return False


def _sha(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _sha_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# The plugin Axolotl loads (axolotl_config.PLUGIN); its code changes what a run computes.
PLUGIN_SOURCE = Path(__file__).with_name("axolotl_plugin.py")
# What the plugin installs into the model inside Axolotl: a change to them computes otherwise too.
MODEL_PATCHES = (Path(__file__).parents[1] / "generation" / "attention.py", Path(__file__).with_name("labeled_logits.py"))
# Libraries whose version changes what a training step computes.
TRAINING_LIBRARIES = ("axolotl", "torch", "transformers", "peft", "accelerate", "bitsandbytes")


def fingerprint(y: dict[str, Any], cfg: DictConfig) -> dict[str, str]:
    """What a checkpoint was trained with: a rerun resumes only when all of it is unchanged.

    Besides the config, data and base model: the plugin that runs inside Axolotl (it seeds the
    LoRA init, orders the packed batches and installs qi_expert.generation.attention's and labeled_logits'
    functions into the model), the environment of the Axolotl processes and the
    training libraries' versions, so a fix to any of them starts afresh instead of resuming the
    old run's last checkpoint.
    """
    settings = {k: v for k, v in y.items() if not k.startswith(("mlflow_", "hf_mlflow"))}
    base = resolve_path(cfg.model.base_model)
    return {
        "axolotl_config": _sha_json(settings),
        "data": _sha([resolve_path(cfg.train.train_file), resolve_path(cfg.train.val_file)]),
        "base_model": _sha([base / "config.json", base / "SOURCE.json", base / "tokenizer.json"]),
        "plugin": _sha([PLUGIN_SOURCE, *MODEL_PATCHES]),
        "environment": _sha_json(axolotl_config.AXOLOTL_ENV),
        "libraries": fingerprint_libraries(),
        # How many processes share each step: a checkpoint of another world size is another run.
        "world_size": str(world_size(cfg)),
    }


def world_size(cfg: DictConfig) -> int:
    """Processes that train the model together under the launcher (conf/launcher/)."""
    lc = cfg.get("launcher")
    if lc is None or str(lc.program) == "python":
        return 1
    return int(lc.num_processes) * int(lc.num_machines)


def fingerprint_libraries() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return " ".join(f"{n}=={installed(n)}" for n in TRAINING_LIBRARIES)


# --- the base model's validation loss, measured once ---------------------------------------------
# Axolotl evaluates before the first step (eval_on_start). LoRA's B matrices start at zero, so that
# pass measures the base model alone: its result depends on the validation rows, the base model's
# bytes, how rows are tokenized and batched, the precision and the libraries, and NOT on lora_r,
# lora_alpha, the learning rate or the schedule. A sweep (`dvc exp run -S lora_r=32`) and every
# rerun would otherwise pay ~20-37 s to measure the same number. It is cached by content
# (gencache, kind "base_val_loss"); a changed input measures it again.
BASE_VAL_KIND = "base_val_loss"
BASE_VAL_FILE = "qi_base_val_loss.json"  # also kept beside the checkpoints (a finished run reused)
BASE_VAL_SETTINGS = ("base_model", "tokenizer_config", "trust_remote_code", "chat_template",
                     "chat_template_jinja", "test_datasets", "sequence_len", "excess_length_strategy",
                     "sample_packing", "eval_sample_packing", "pad_to_sequence_len", "micro_batch_size",
                     "eval_batch_size", "adapter", "load_in_4bit", "load_in_8bit", "bnb_config_kwargs",
                     "lora_target_modules", "bf16", "fp16", "tf32", "attn_implementation",
                     "qi_packed_attention", "qi_labeled_logits", "seed", "data_seed")


def base_val_key(y: dict[str, Any], cfg: DictConfig) -> str:
    """Content key of the step-0 validation loss: the settings above, the validation file's bytes,
    the base model's files (gencache.files_digest), the training libraries' versions and the machine
    (gencache.platform)."""
    from qi_expert.core import gencache

    settings = {k: y.get(k) for k in BASE_VAL_SETTINGS}
    base = resolve_path(cfg.model.base_model)
    payload = {
        "settings": settings,
        "val": _sha([resolve_path(cfg.train.val_file)]),
        "base_model": gencache.files_digest([base]) if base.is_dir() else str(cfg.model.base_model),
        "libraries": fingerprint_libraries(),
        "platform": gencache.platform(),
    }
    return _sha_json(payload)


def cached_base_val(key: str, output_dir: Path, *, shared: bool) -> float | None:
    """The base model's validation loss for this key, if known: from the shared cache (`shared`,
    train.cache_base_val_loss), else from beside this run's checkpoints (a finished run reused)."""
    from qi_expert.core import gencache

    hit = gencache.load(key, kind=BASE_VAL_KIND) if shared else None
    if hit is None and (output_dir / BASE_VAL_FILE).is_file():
        hit = json.loads((output_dir / BASE_VAL_FILE).read_text(encoding="utf-8"))
    return float(hit["val_loss"]) if hit and hit.get("key") == key else None


def remember_base_val(key: str, output_dir: Path, val_loss: float, *, shared: bool) -> None:
    from qi_expert.core import gencache

    value = {"key": key, "val_loss": float(val_loss)}
    if shared:
        gencache.store(key, value, kind=BASE_VAL_KIND)
    (output_dir / BASE_VAL_FILE).write_text(json.dumps(value) + "\n", encoding="utf-8")


def with_base_val(rows: list[dict], val_loss: float) -> list[dict]:
    """The loss rows with the base model's validation loss at step 0, as eval_on_start logs it."""
    rows = [dict(r) for r in rows]
    first = next((r for r in rows if r["step"] == 0), None)
    if first is None:
        rows.insert(0, {"step": 0, "train_loss": "", "val_loss": float(val_loss)})
    elif first["val_loss"] == "":
        first["val_loss"] = float(val_loss)
    return rows


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def prepare_output_dir(output_dir: Path, fp: dict[str, str]) -> Path | None:
    """Keep checkpoints of the same settings (resume), wipe those of other settings.

    Returns the checkpoint Axolotl will resume from, if any.
    """
    marker = output_dir / FINGERPRINT
    if output_dir.exists():
        old = json.loads(marker.read_text()) if marker.is_file() else None
        if old != fp:
            shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(fp, indent=2, sort_keys=True) + "\n")
    for ckpt in checkpoints(output_dir):
        # The trainer writes trainer_state.json last: without it the save was interrupted.
        if not (ckpt / "trainer_state.json").is_file():
            shutil.rmtree(ckpt)
    found = checkpoints(output_dir)
    return found[-1] if found else None


def global_step(checkpoint: Path | None) -> int:
    """The optimizer steps a checkpoint holds (0 for none)."""
    if checkpoint is None:
        return 0
    return int(json.loads((checkpoint / "trainer_state.json").read_text()).get("global_step", 0))


def finished(checkpoint: Path | None, max_steps: int) -> bool:
    """True when the checkpoint to resume from is the end of the run.

    Resuming it would not be a no-op: the HF trainer checks for the end only after a step, so it
    trains one step past max_steps (at the schedule's last learning rate) and changes the adapter.
    The stage uses such a checkpoint's adapter as it is instead.
    """
    return checkpoint is not None and global_step(checkpoint) >= max_steps


def axolotl_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # os.environ carries the OpenMP wait policy qi_expert chose at import (see qi_expert/__init__.py).
    env = dict(os.environ)
    env.update(axolotl_config.AXOLOTL_ENV)
    # The project's src/ on the path of the Axolotl processes too (an editable install has it).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


# `python -m axolotl.cli.<command> <config>`, run through runpy from a `-c` stub. The same code
# runs, but the main module is no file: datasets' save_to_disk (preprocess) uses a *spawn* pool,
# and a spawned child re-imports a `-m` main module, i.e. all of Axolotl and torch, once per
# saved split (~20 s each on 2 idle cores, over a minute under load).
# runtime.setup() first: the same process set-up in Axolotl's process as in the stage's (OpenMP
# wait policy, quiet.py's silencing of uninformative third-party messages).
_STUB = ("import runpy, sys; from qi_expert.core import runtime; runtime.setup(); sys.argv = [{mod!r}] + sys.argv[1:]; "
         "runpy.run_module({mod!r}, run_name='__main__', alter_sys=False)")


def axolotl_command(command: str, config_path: Path) -> list[str]:
    module = f"axolotl.cli.{command}"
    return [sys.executable, "-c", _STUB.format(mod=module), str(config_path)]


LAUNCH_PROGRAMS = ("python", "torchrun", "accelerate")


def launch_command(command: str, config_path: Path, launcher=None) -> list[str]:
    """The command that runs Axolotl's `command` under the launcher (conf/launcher/).

    Only training is spread over processes (preprocess writes the tokenized dataset once). torchrun
    and accelerate are the launchers Axolotl supports (`axolotl train --launcher ...`); both start
    `num_processes` processes on this machine, and with num_machines > 1 rendezvous with the other
    machines at main_process_ip:main_process_port, this one being machine_rank.
    """
    program = str(launcher.program) if launcher is not None else "python"
    if program not in LAUNCH_PROGRAMS:
        raise ValueError(f"launcher.program must be one of {LAUNCH_PROGRAMS}, not {program!r}")
    if command != "train" or program == "python":
        return axolotl_command(command, config_path)
    procs, machines = int(launcher.num_processes), int(launcher.num_machines)
    entry = ["-m", "qi_expert.train.axolotl_main", f"axolotl.cli.{command}", str(config_path)]
    where = [str(launcher.main_process_ip), str(int(launcher.main_process_port))]
    if program == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={machines}", f"--nproc_per_node={procs}",
                f"--node_rank={int(launcher.machine_rank)}", f"--master_addr={where[0]}",
                f"--master_port={where[1]}", *entry]
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(procs * machines),
            "--num_machines", str(machines), "--machine_rank", str(int(launcher.machine_rank)),
            "--main_process_ip", where[0], "--main_process_port", where[1],
            *(["--multi_gpu"] if procs * machines > 1 else []), *entry]


def run_axolotl(command: str, config_path: Path, env: dict[str, str], cwd: Path = ROOT, launcher=None) -> None:
    """Run one Axolotl CLI command on the config; raises naming the command on failure."""
    proc = subprocess.run(lifetime.tied(launch_command(command, config_path, launcher)), cwd=cwd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"Axolotl {command} failed (exit {proc.returncode}): "
                           f"python -m axolotl.cli.{command} {config_path}")


def copy_adapter(output_dir: Path, adapter_dir: Path) -> list[str]:
    """The final adapter and tokenizer -> adapter_dir.

    output_dir is Axolotl's (it saves the final adapter at its root) or a finished checkpoint.
    """
    missing = [f for f in ADAPTER_FILES if not (output_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"Axolotl left no {', '.join(missing)} in {output_dir}")
    # Copied beside it, then swapped in: an interruption never leaves a half-copied adapter.
    staging = files.staging_dir(adapter_dir)
    copied = []
    try:
        for name in ADAPTER_FILES + TOKENIZER_FILES:
            if (output_dir / name).is_file():
                shutil.copy2(output_dir / name, staging / name)
                copied.append(name)
        files.replace_dir(staging, adapter_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copied
