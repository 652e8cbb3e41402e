"""The Axolotl YAML for the train stage, generated from the composed Hydra config.

Everything Axolotl is told comes from params.yaml: the model group entry (base model, target
modules, chat template, bf16 / gradient checkpointing / flash attention), the top-level
hyperparameters a user sweeps (adapter, lora_*, learning_rate, max_steps, ...) and the `train:`
section (dataset files, output paths, logging/saving cadence, CPU settings).

Two device profiles:

* CUDA (the 7B entries): 4-bit QLoRA (bitsandbytes nf4, double quantisation), bf16, gradient
  checkpointing, flash attention 2, sample packing, paged 8-bit AdamW.
* CPU (the embedded SmolLM2 default; also what a test runs): fp32, no bf16/fp16/tf32,
  `train.cpu_attention` (sdpa_packed by default, sdpa or eager: with sample packing Axolotl
  drops the attention mask and transformers builds a block-diagonal mask from position_ids, so
  packed samples do not see each other; sdpa_packed attends each of them on its own instead; no
  flash attention/xformers), `train.cpu_logits` (labeled by default: logits and loss at the
  trained positions only), Axolotl's CUDA-only LoRA kernels
  off, adamw_torch, no pinned memory. `adapter: qlora` still gives real bitsandbytes Linear4bit
  layers on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qi_expert.core import files
from qi_expert.core.config import ROOT, resolve_path
from qi_expert.generation import basemodel

# Model entries may name a template Axolotl 0.19 has no built-in for; these are passed as
# `chat_template: jinja` + `chat_template_jinja`. Llama 2 / CodeLlama Instruct's own format:
LLAMA2_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
EXTRA_TEMPLATES = {"llama2": LLAMA2_JINJA, "codellama": LLAMA2_JINJA}

PLUGIN = "qi_expert.train.axolotl_plugin.ModelReportPlugin"

# Environment for every Axolotl process: offline, no telemetry (without it the process finishes
# and then hangs sending it), no W&B. A fixed hash seed because PEFT writes adapter_config.json's
# target_modules in set order: without it two runs with identical weights differ in that file.
AXOLOTL_ENV = {
    "PYTHONHASHSEED": "0",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    # glibc malloc: never hand big blocks back to the kernel. By default every tensor over 32 MB
    # (the [2048, 49152] logits and their gradients) is a fresh mmap whose pages fault in on
    # first touch: a 400 MB fill_ took 0.53 s of a 7.4 s bf16 step. With these the step took
    # 6.6 s (bf16) and 10.1 s instead of 11.5 s (fp32) (/tmp profile of one packed 2x1024 step,
    # torch.profiler; benchmarks/train_throughput.py has the Axolotl figures).
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
}


CPU_ATTENTION = {"sdpa_packed": "sdpa", "sdpa": "sdpa", "eager": "eager"}  # train.cpu_attention -> transformers'


CPU_LOGITS = ("labeled", "all")  # train.cpu_logits


def cpu_logits(name: str) -> bool:
    """Whether the plugin computes logits at the trained positions only (train.cpu_logits)."""
    if name not in CPU_LOGITS:
        raise ValueError(f"train.cpu_logits: {name!r} is not one of {list(CPU_LOGITS)}")
    return name == "labeled"


def cpu_attention(name: str) -> str:
    """The attn_implementation transformers loads the model with for train.cpu_attention."""
    if name not in CPU_ATTENTION:
        raise ValueError(f"train.cpu_attention: {name!r} is not one of {sorted(CPU_ATTENTION)}")
    return CPU_ATTENTION[name]


def _rel(path: str | Path) -> str:
    """A config path as Axolotl should see it: relative to the repo root when inside it."""
    p = resolve_path(path)
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def chat_template_keys(name: str) -> dict[str, Any]:
    if name in EXTRA_TEMPLATES:
        return {"chat_template": "jinja", "chat_template_jinja": EXTRA_TEMPLATES[name]}
    return {"chat_template": name}


def _dataset(path: str, tc: DictConfig) -> dict[str, Any]:
    return {
        "path": _rel(path),
        "ds_type": "json",
        "split": "train",
        "type": str(tc.dataset_type),
        "field_messages": "messages",
        "message_property_mappings": {"role": "role", "content": "content"},
        "roles_to_train": list(tc.roles_to_train),
        "train_on_eos": str(tc.train_on_eos),
    }


def build(cfg: DictConfig, cuda: bool, mlflow: bool = False,
          run_name: str | None = None) -> dict[str, Any]:
    """The Axolotl config (a plain dict, YAML-ready) for the composed Hydra config `cfg`."""
    m, tc = cfg.model, cfg.train
    adapter = str(cfg.adapter)
    if adapter not in ("lora", "qlora"):
        raise ValueError(f"adapter must be lora or qlora, not {adapter!r}")
    base = str(m.base_model) if basemodel.is_hub_id(m) else _rel(m.base_model)
    y: dict[str, Any] = {
        "base_model": base,
        "tokenizer_config": base,
        "trust_remote_code": False,
        "seed": int(cfg.seed),
        "data_seed": int(cfg.seed),
        # --- adapter ---
        "adapter": adapter,
        "lora_r": int(cfg.lora_r),
        "lora_alpha": int(cfg.lora_alpha),
        "lora_dropout": float(cfg.lora_dropout),
        "lora_target_modules": list(m.target_modules),
        "load_in_8bit": False,
        "load_in_4bit": adapter == "qlora",
        # --- data ---
        **chat_template_keys(str(m.chat_template)),
        "datasets": [_dataset(tc.train_file, tc)],
        "test_datasets": [_dataset(tc.val_file, tc)],
        "val_set_size": 0.0,
        "dataset_prepared_path": _rel(tc.prepared_dir),
        "dataset_num_proc": 1,
        "shuffle_merged_datasets": True,
        "sequence_len": int(cfg.sequence_len),
        "excess_length_strategy": str(tc.excess_length_strategy),
        "sample_packing": bool(cfg.sample_packing),
        "eval_sample_packing": bool(cfg.sample_packing),
        "pad_to_sequence_len": bool(cfg.sample_packing),
        "group_by_length": bool(tc.group_by_length) and not bool(cfg.sample_packing),
        # --- optimisation ---
        "micro_batch_size": int(cfg.micro_batch_size),
        "gradient_accumulation_steps": int(cfg.gradient_accumulation_steps),
        "max_steps": int(cfg.max_steps),
        "num_epochs": int(tc.num_epochs),
        "learning_rate": float(cfg.learning_rate),
        "lr_scheduler": str(tc.lr_scheduler),
        "warmup_steps": int(cfg.warmup_steps),
        "weight_decay": float(tc.weight_decay),
        "max_grad_norm": float(tc.max_grad_norm),
        # --- evaluation, logging, checkpoints ---
        "eval_strategy": "steps",
        "eval_steps": int(cfg.eval_steps),
        "logging_steps": int(tc.logging_steps),
        "save_strategy": "steps",
        "save_steps": int(tc.save_steps),
        "save_total_limit": int(tc.save_total_limit),
        "save_safetensors": True,
        "output_dir": _rel(tc.output_dir),
        "auto_resume_from_checkpoints": True,
        "dataloader_num_workers": 0,
        "strict": False,
        # Reports the loaded model's layers (Linear4bit for QLoRA, trainable parameters) and the
        # training batches' padding into output_dir; changes nothing in training.
        "plugins": [PLUGIN],
    }
    if cuda:
        y.update({
            "bf16": bool(m.bf16) or "auto",
            "fp16": False,
            "tf32": bool(m.bf16),
            "gradient_checkpointing": bool(m.gradient_checkpointing),
            "attn_implementation": "flash_attention_2" if bool(m.flash_attention) else "sdpa",
            "optimizer": str(tc.gpu_optimizer),
            "dataloader_pin_memory": True,
        })
        if adapter == "qlora":
            y["bnb_config_kwargs"] = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    else:
        bf16 = basemodel.cpu_precision(str(tc.get("cpu_precision", "fp32"))) == "bf16"
        y.update({
            # bf16: the frozen base weights load in bf16 and the forward/backward run under the
            # trainer's CPU autocast; the LoRA weights and AdamW state stay fp32 (PEFT keeps
            # adapter weights in fp32).
            "bf16": bf16,
            "fp16": False,
            "tf32": False,
            "gradient_checkpointing": bool(m.gradient_checkpointing),
            # sdpa or eager (not flash/xformers): both run on CPU and keep packed samples apart;
            # sdpa_packed is sdpa with each packed row attended on its own (the plugin switches
            # the loaded model to qi_expert.generation.attention's function: same result, less work).
            "attn_implementation": cpu_attention(str(tc.cpu_attention)),
            "qi_packed_attention": str(tc.cpu_attention) == "sdpa_packed",
            # The output layer and the loss at the trained positions only (qi_expert.train.labeled_logits).
            "qi_labeled_logits": cpu_logits(str(tc.get("cpu_logits", "all"))),
            "optimizer": "adamw_torch",
            "dataloader_pin_memory": False,
            # Axolotl switches these CUDA/Triton kernels on by itself: "Torch not compiled with CUDA".
            "lora_mlp_kernel": False,
            "lora_qkv_kernel": False,
            "lora_o_kernel": False,
            "lora_embedding_kernel": False,
        })
        if adapter == "qlora":
            # nf4 + double quantisation as on the GPU; compute in fp32 (bf16 is off on CPU).
            y["bnb_config_kwargs"] = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    y.update(launcher_keys(cfg, cuda))
    if mlflow:
        # The experiment name switches Axolotl's MLflow callback on. The store is not written here:
        # the stage passes MLFLOW_TRACKING_URI (and the run id) in Axolotl's environment, so this
        # file holds no path of the machine it was written on and is the same in every clone.
        y.update({
            "mlflow_experiment_name": str(cfg.mlflow.experiment),
            "mlflow_run_name": run_name or f"train:{m.name}",
            "hf_mlflow_log_artifacts": False,
        })
    return y


STRATEGIES = ("none", "deepspeed", "fsdp")


def launcher_keys(cfg: DictConfig, cuda: bool) -> dict[str, Any]:
    """Axolotl's keys for the launcher's sharding strategy (conf/launcher/): `deepspeed` (a ZeRO
    JSON, conf/deepspeed/) or `fsdp_version` + `fsdp_config`; none for single and ddp."""
    lc = cfg.get("launcher")
    if lc is None:
        return {}
    strategy = str(lc.strategy)
    if strategy not in STRATEGIES:
        raise ValueError(f"launcher.strategy must be one of {STRATEGIES}, not {strategy!r}")
    if strategy != "none" and not cuda:
        raise ValueError(f"launcher={lc.name} shards the model with {strategy}, which needs CUDA GPUs; "
                         "on CPU use launcher=single (the default) or launcher=ddp")
    if strategy == "deepspeed":
        if not lc.deepspeed_config or not resolve_path(str(lc.deepspeed_config)).is_file():
            raise ValueError(f"launcher.deepspeed_config: no DeepSpeed JSON at {lc.deepspeed_config}")
        return {"deepspeed": _rel(str(lc.deepspeed_config))}
    if strategy == "fsdp":
        fc = OmegaConf.to_container(lc.fsdp_config, resolve=True) if lc.fsdp_config else {}
        return {"fsdp_version": 2,
                "fsdp_config": {**fc, "transformer_layer_cls_to_wrap": str(cfg.model.decoder_layer)}}
    return {}


def to_yaml(y: dict[str, Any]) -> str:
    header = ("# Generated by stages/train.py from params.yaml (conf/): do not edit, change conf/ or\n"
              "# `dvc exp run -S key=value` instead. Run by hand from the repo root with\n"
              "#   MLFLOW_TRACKING_URI=sqlite:///mlflow.db AXOLOTL_DO_NOT_TRACK=1 \\\n"
              "#     python -m axolotl.cli.train models/train/axolotl.yaml\n")
    return header + OmegaConf.to_yaml(OmegaConf.create(y))


def write(y: dict[str, Any], path: Path) -> Path:
    files.write_text(path, to_yaml(y))
    return path
