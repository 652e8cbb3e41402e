"""The train stage: Axolotl config generation, GPU guard, and real Axolotl runs on a tiny model.

The tiny model is a random Llama (hidden 64, 2 layers) with a byte-level BPE tokenizer trained
here on the test's own strings and a ChatML chat template, so everything runs offline in seconds.
The stage runs in a throwaway project folder (its own params.yaml, data/ and models/), exactly
as DVC would run it, with the repo's stages/train.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import launch_stage, params_unread
from tiny import CHATML, build_llama

from qi_expert.core.config import ROOT, compose_conf, to_yaml
from qi_expert.generation import basemodel
from qi_expert.train import axolotl_config, report, training

GPU_MODELS = ["qwen2.5-coder-7b", "deepseek-coder-6.7b", "codellama-7b"]


SYSTEM = "You write TypeScript with @qi/base: return Result<T>, never throw."
PAIRS = [
    ("Write divide.", "export const divide = (a: number, b: number): Result<number> =>\n"
                      "  b === 0 ? failure(validationError('zero')) : success(a / b)"),
    ("Write parsePort.", "export function parsePort(s: string): Result<number> {\n  const n = Number(s)\n"
                         "  return Number.isInteger(n) ? success(n) : failure(validationError(s))\n}"),
    ("Write safeSqrt.", "export const safeSqrt = (x: number): Result<number> =>\n"
                        "  x < 0 ? failure(validationError('negative')) : success(Math.sqrt(x))"),
    ("Write head.", "export const head = <T>(xs: T[]): Result<T> =>\n"
                    "  xs.length ? success(xs[0]) : failure(validationError('empty'))"),
]


def _rows(repeat: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                          {"role": "assistant", "content": f"```typescript\n{a}\n```"}]}
            for _ in range(repeat) for q, a in PAIRS]


def build_tiny_model(path: Path, chat_template: str | None = CHATML) -> Path:
    """A random 2-layer Llama (hidden 64) + a byte-level BPE tokenizer trained on PAIRS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [SYSTEM] + [q + "\n" + a for q, a in PAIRS] + ["system user assistant typescript"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    if chat_template:
        tok.chat_template = chat_template
    # Logits large enough (initializer_range 0.1) for LoRA to move the loss fast.
    return build_llama(path, tok, hidden=64, intermediate=128, max_positions=512, initializer_range=0.1)


def make_project(dst: Path) -> Path:
    """A project folder the stage can run in: params.yaml + conf/ + dvc.yaml, tiny model, data."""
    shutil.copytree(ROOT / "conf", dst / "conf")
    shutil.copy2(ROOT / "params.yaml", dst / "params.yaml")
    # The train stage as dvc.yaml declares it: the stage sees only the params listed for it.
    train = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    (dst / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": train}}, sort_keys=False))
    build_tiny_model(dst / "models" / "tiny")
    fmt = dst / "data" / "formatted"
    fmt.mkdir(parents=True)
    for name, repeat in (("train", 8), ("val", 1)):
        (fmt / f"{name}.chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(repeat)))
    return dst


TINY = ["model.name=tiny", "model.base_model=models/tiny", "model.source.kind=local",
        "model.chat_template=tokenizer_default", "max_steps=8", "eval_steps=4", "train.save_steps=4",
        "sequence_len=256", "micro_batch_size=2", "learning_rate=0.01", "warmup_steps=0",
        "lora_r=8", "lora_alpha=16", "lora_dropout=0.0"]


def train_stage(project: Path, *overrides: str, check: bool = True, cache: Path | None = None) -> subprocess.CompletedProcess:
    """This project's train stage run in `project` as DVC runs it (conftest.launch_stage); `cache` is
    the QI_CACHE_DIR to use (default: the test's own, which a module fixture, built before any
    test's environment is set, must not rely on)."""
    proc = launch_stage(project, "train", *TINY, *overrides, env={"QI_CACHE_DIR": cache} if cache else None,
                        timeout=600, script_root=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"train stage failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


# ---------------------------------------------------------------- config generation (fast)

@pytest.mark.parametrize("name", GPU_MODELS)
def test_gpu_entries_generate_qlora_bf16_flash_yaml(name):
    cfg = compose_conf([f"model={name}", "recipe=gpu_7b"])
    y = axolotl_config.build(cfg, cuda=True)
    assert y["adapter"] == "qlora" and y["load_in_4bit"] is True and y["load_in_8bit"] is False
    assert y["bnb_config_kwargs"] == {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    assert y["bf16"] is True and y["fp16"] is False and y["gradient_checkpointing"] is True
    assert y["attn_implementation"] == "flash_attention_2" and y["sample_packing"] is True
    assert y["lora_target_modules"] == list(cfg.model.target_modules) and len(y["lora_target_modules"]) == 7
    assert y["base_model"] == cfg.model.hub_id  # Axolotl fetches it on the GPU machine
    assert (y["sequence_len"], y["max_steps"], y["gradient_accumulation_steps"]) == (2048, 1000, 4)
    assert y["datasets"][0]["type"] == "chat_template" and y["datasets"][0]["roles_to_train"] == ["assistant"]
    text = axolotl_config.to_yaml(y)
    assert yaml.safe_load(text) == y  # what is written is what was built


def test_one_answer_to_is_the_base_model_a_hub_id(tmp_path):
    """basemodel.is_hub_id decides for train (Axolotl's base_model), eval and gguf alike."""
    cpu, gpu = compose_conf(), compose_conf(["model=qwen2.5-coder-7b"])
    local = compose_conf(["model=qwen2.5-coder-7b", f"model.base_model={tmp_path}"])
    assert [basemodel.is_hub_id(c.model) for c in (cpu, gpu, local)] == [False, True, False]
    assert axolotl_config.build(gpu, cuda=True)["base_model"] == "Qwen/Qwen2.5-Coder-7B-Instruct"
    assert axolotl_config.build(local, cuda=True)["base_model"] == str(tmp_path)
    assert axolotl_config.build(cpu, cuda=False)["base_model"] == "models/base/smollm2-135m"


def test_codellama_template_is_given_as_jinja():
    """Axolotl 0.19 has no built-in `llama2` template: the entry's name becomes its Jinja text."""
    y = axolotl_config.build(compose_conf(["model=codellama-7b"]), cuda=True)
    assert y["chat_template"] == "jinja" and "[INST]" in y["chat_template_jinja"]
    qwen = axolotl_config.build(compose_conf(["model=qwen2.5-coder-7b"]), cuda=True)
    assert qwen["chat_template"] == "qwen_25"


def test_chat_templates_are_known_to_axolotl():
    from axolotl.utils.schemas.enums import ChatTemplate

    for name in GPU_MODELS + ["smollm2-135m"]:
        y = axolotl_config.build(compose_conf([f"model={name}"]), cuda=True)
        assert y["chat_template"] in {t.value for t in ChatTemplate}


def test_cpu_default_yaml_has_cpu_settings():
    cfg = compose_conf(["lora_r=32"])
    y = axolotl_config.build(cfg, cuda=False, mlflow=True)
    assert y["lora_r"] == 32 and y["base_model"] == "models/base/smollm2-135m"
    # Mixed precision where this CPU has bf16 instructions (train.cpu_precision: auto), else fp32.
    assert y["bf16"] is basemodel.cpu_bf16_supported() and not (y["fp16"] or y["tf32"])
    assert y["attn_implementation"] in ("eager", "sdpa") and y["optimizer"] == "adamw_torch"
    assert y["dataloader_pin_memory"] is False
    assert not any(y[k] for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel"))
    assert y["mlflow_experiment_name"] == cfg.mlflow.experiment and y["hf_mlflow_log_artifacts"] is False
    # No path of this machine in the generated file: the store reaches Axolotl by environment.
    assert "mlflow_tracking_uri" not in y and str(ROOT) not in axolotl_config.to_yaml(y)
    assert y["auto_resume_from_checkpoints"] is True and y["output_dir"] == "models/train/checkpoints"
    # The output layer at the trained positions only (train.cpu_logits: labeled); `all` selectable.
    assert y["qi_labeled_logits"] is True
    assert axolotl_config.build(compose_conf(["train.cpu_logits=all"]), cuda=False)["qi_labeled_logits"] is False
    with pytest.raises(ValueError, match="train.cpu_logits: 'some' is not one of"):
        axolotl_config.build(compose_conf(["train.cpu_logits=some"]), cuda=False)
    # The GPU entries keep transformers' way (their fused losses are Axolotl plugins of their own).
    assert "qi_labeled_logits" not in axolotl_config.build(compose_conf(["model=qwen2.5-coder-7b"]), cuda=True)


def test_cpu_precision_is_chosen_by_the_cpu_and_fp32_stays_selectable(monkeypatch):
    fp32 = axolotl_config.build(compose_conf(["train.cpu_precision=fp32"]), cuda=False)
    assert fp32["bf16"] is False and fp32["fp16"] is False
    monkeypatch.setattr(basemodel, "cpu_bf16_supported", lambda: True)
    assert axolotl_config.build(compose_conf([]), cuda=False)["bf16"] is True
    monkeypatch.setattr(basemodel, "cpu_bf16_supported", lambda: False)
    assert axolotl_config.build(compose_conf([]), cuda=False)["bf16"] is False  # auto falls back
    with pytest.raises(ValueError, match="train.cpu_precision=bf16: this CPU has no bf16"):
        axolotl_config.build(compose_conf(["train.cpu_precision=bf16"]), cuda=False)
    with pytest.raises(ValueError, match="train.cpu_precision must be auto, bf16 or fp32"):
        axolotl_config.build(compose_conf(["train.cpu_precision=fp8"]), cuda=False)


def test_axolotl_accepts_the_generated_configs(tmp_path):
    """Axolotl's own validation (pydantic schema) passes for every model entry's YAML."""
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    for name, cuda in [("smollm2-135m", False)] + [(n, True) for n in GPU_MODELS]:
        y = axolotl_config.build(compose_conf([f"model={name}"]), cuda=cuda)
        y.pop("plugins")  # registering plugins is the CLI's job
        validated = validate_config(DictDefault(y))
        assert validated.adapter == y["adapter"] and validated.sequence_len == y["sequence_len"]


# ---------------------------------------------------------------- guards (fast)

def _project_with_params(dst: Path, overrides: list[str]) -> Path:
    """A project folder whose params.yaml is conf/ composed with `overrides` (as `dvc exp run -S`)."""
    shutil.copytree(ROOT / "conf", dst / "conf")
    (dst / "dvc.yaml").write_text("stages: {}\n")
    (dst / "params.yaml").write_text(to_yaml(compose_conf(overrides)))
    return dst


@pytest.mark.skipif(basemodel.cuda_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", GPU_MODELS)
def test_gpu_model_without_cuda_stops_at_once(name, tmp_path):
    project = _project_with_params(tmp_path / "p", [f"model={name}"])
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py")],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr and "-S model=smollm2-135m" in proc.stderr
    assert name in proc.stderr
    assert not (project / "models").exists()  # nothing was written or launched


@pytest.mark.skipif(basemodel.cuda_available(), reason="this machine has CUDA")
def test_prepare_for_hub_model_without_cuda_stops():
    cfg = compose_conf(["model=qwen2.5-coder-7b"])
    with pytest.raises(basemodel.NoCudaError, match="smollm2-135m"):
        basemodel.prepare(cfg.model)


def test_missing_base_model_and_missing_chat_template_are_clear_errors(tmp_path):
    cfg = compose_conf(["model.base_model=" + str(tmp_path / "nope"), "model.source.kind=local"])
    with pytest.raises(training.TrainInputError, match="does not exist"):
        training.check_inputs(cfg)
    build_tiny_model(tmp_path / "plain", chat_template=None)
    cfg = compose_conf(["model.base_model=" + str(tmp_path / "plain"), "model.source.kind=local"])
    with pytest.raises(training.TrainInputError, match="no chat template"):
        training.check_inputs(cfg)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_do_not_attend_to_each_other(attn):
    """What the CPU profile relies on: with sample packing Axolotl drops the attention mask and
    transformers masks packed samples apart from position_ids, for sdpa and eager alike."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         use_cache=False, attn_implementation=attn)).eval()
    a, b = torch.randint(0, 97, (1, 7)), torch.randint(0, 97, (1, 5))
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=position_ids).logits[:, 7:]
        alone = model(input_ids=b).logits
    assert torch.allclose(together, alone, atol=1e-5)


def test_resume_keeps_matching_checkpoints_and_wipes_others(tmp_path):
    out = tmp_path / "ckpt"
    assert training.prepare_output_dir(out, {"a": "1"}) is None
    for step in (4, 12):
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (out / "checkpoint-16").mkdir()  # a save that was interrupted: no trainer_state.json
    last = training.prepare_output_dir(out, {"a": "1"})
    assert last.name == "checkpoint-12" and not (out / "checkpoint-16").exists()
    # A checkpoint at max_steps is a finished run (not resumed); one before it is resumed.
    assert training.finished(last, 12) and not training.finished(last, 16)
    assert not training.finished(None, 12)
    assert training.prepare_output_dir(out, {"a": "2"}) is None and not (out / "checkpoint-4").exists()



def test_fingerprint_changes_with_the_plugin_code_and_library_versions(tmp_path, monkeypatch):
    """Checkpoints of an older plugin, environment or Axolotl/torch are not resumed: their run
    computed otherwise."""
    cfg = compose_conf([])
    y = axolotl_config.build(cfg, cuda=False)
    fp = training.fingerprint(y, cfg)
    assert "axolotl==" in fp["libraries"] and "torch==" in fp["libraries"]
    patched = tmp_path / "axolotl_plugin.py"
    patched.write_text(training.PLUGIN_SOURCE.read_text() + "# changed\n")
    monkeypatch.setattr(training, "PLUGIN_SOURCE", patched)
    changed = training.fingerprint(y, cfg)
    assert changed["plugin"] != fp["plugin"]
    assert {k: v for k, v in changed.items() if k != "plugin"} == {k: v for k, v in fp.items() if k != "plugin"}
    # ... and so are the functions it installs into the model.
    patched_logits = tmp_path / "labeled_logits.py"
    patched_logits.write_text(training.MODEL_PATCHES[1].read_text() + "# changed\n")
    monkeypatch.setattr(training, "MODEL_PATCHES", (training.MODEL_PATCHES[0], patched_logits))
    assert training.fingerprint(y, cfg)["plugin"] != changed["plugin"]
    monkeypatch.setattr(axolotl_config, "AXOLOTL_ENV", {**axolotl_config.AXOLOTL_ENV, "PYTHONHASHSEED": "1"})
    assert training.fingerprint(y, cfg)["environment"] != fp["environment"]

# ---------------------------------------------------------------- real Axolotl runs (slow)

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny model, data and params, nothing trained: tests copy it and never change it."""
    return make_project(tmp_path_factory.mktemp("train") / "proj")


@pytest.fixture(scope="module")
def trained(project, tmp_path_factory) -> Path:
    """A copy of the project after one uninterrupted run of the stage (8 steps): tests that change
    it work on a copy of their own (`_copy_all`), so any of them can run alone or in any order."""
    proj = tmp_path_factory.mktemp("trained") / "proj"
    shutil.copytree(project, proj)
    train_stage(proj, cache=proj.parent / "qi-cache")
    return proj


def _copy_all(proj: Path, dst: Path) -> Path:
    shutil.copytree(proj, dst)
    return dst


@pytest.mark.slow
def test_lora_run_learns_and_writes_adapter_metrics_and_mlflow(trained):
    assert params_unread(trained, "train") == []  # every param dvc.yaml lists for the stage, read
    project = trained
    adapter = project / "models" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["peft_type"] == "LORA"
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0 and (adapter / "tokenizer.json").is_file()
    m = json.loads((project / "metrics" / "train.json").read_text())
    assert m["steps"] == 8 and m["steps_this_run"] == 8 and m["trainable_parameters"] > 0 and m["linear4bit_layers"] == 0
    assert m["train_loss_final_mean5"] < m["train_loss_first"] * 0.8
    assert m["val_loss_final"] < m["val_loss_first"]
    assert 0 <= m["padding_share"] <= 0.2 and m["tokens_per_second"] > 0
    # train.cpu_attention=sdpa_packed: every forward pass attended its packed rows one by one.
    assert m["attention"] == "qi_sdpa_packed" and m["attention_forwards"]["packed"] > 0
    assert m["attention_forwards"]["stock"] == 0
    # train.cpu_logits=labeled: every forward pass with labels (training and validation) ran the
    # output layer at the trained positions only, through Axolotl's trainer and PEFT's wrapper.
    assert m["labeled_logits"] is True and m["logits_forwards"]["labeled"] > 0 and m["logits_forwards"]["all"] == 0
    lines = (project / "metrics" / "train_loss.csv").read_text().splitlines()
    assert lines[0] == "step,train_loss,val_loss" and len(lines) == 1 + 9  # steps 0 (eval) .. 8
    written = yaml.safe_load((project / "models" / "train" / "axolotl.yaml").read_text())
    assert written["adapter"] == "lora" and written["lora_r"] == 8

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("qi-expert").experiment_id], "tags.stage = 'train'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["base_model"] == "tiny" and run.data.tags["adapter"] == "lora"
    assert run.data.tags["stage"] == "train" and "dvc_experiment" in run.data.tags
    assert run.data.params["lora_r"] == "8" and run.data.params["train.save_steps"] == "4"
    # Nested under the experiment's run, with the rows it read and the adapter registered.
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).data.tags["stage"] == "experiment"
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation"}
    assert [v.run_id for v in client.search_model_versions("name='qi-expert-tiny-adapter'")] == [run.info.run_id]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 8


@pytest.mark.slow
def test_same_inputs_and_params_give_the_same_adapter_bit_for_bit(project, trained, tmp_path):
    """A second fresh run, in another folder with the same model, data and params, writes the
    same adapter files byte for byte (Axolotl alone leaves the LoRA init unseeded: see the plugin;
    PEFT lists target_modules in set order: see AXOLOTL_ENV)."""
    first = {f: (trained / "models" / "adapter" / f).read_bytes() for f in training.ADAPTER_FILES}
    other = tmp_path / "proj"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns("train", "adapter", "mlflow.db", "metrics"))
    assert not (other / "models" / "adapter").exists()
    proc = train_stage(other)
    assert "fresh run" in proc.stdout
    assert {f: (other / "models" / "adapter" / f).read_bytes() for f in training.ADAPTER_FILES} == first


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_adapter(trained, tmp_path):
    """Lose the last checkpoint and the final adapter; the rerun resumes at step 4 and ends with
    the same weights as the uninterrupted run, exactly (seeded packed order, same optimizer state)."""
    import torch
    from safetensors.torch import load_file

    project = _copy_all(trained, tmp_path / "proj")
    ckpt = project / "models" / "train" / "checkpoints"
    before = load_file(project / "models" / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(ckpt / "checkpoint-8")
    for f in training.ADAPTER_FILES:
        (ckpt / f).unlink()
    proc = train_stage(project)
    assert "resuming from checkpoint-4" in proc.stdout
    after = load_file(project / "models" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    m = json.loads((project / "metrics" / "train.json").read_text())
    assert m["steps"] == 8 and m["steps_this_run"] == 4
    assert len(report.loss_rows(report.trainer_state(ckpt))) == 9


@pytest.mark.slow
def test_rerun_of_a_finished_run_trains_no_further_step(trained, tmp_path):
    """Rerun with the same settings after the run reached max_steps (as `dvc repro -f` does):
    the last checkpoint's adapter is used as it is. Resuming it would train a 9th step."""
    project = _copy_all(trained, tmp_path / "proj")
    adapter = project / "models" / "adapter"
    before = {f: (adapter / f).read_bytes() for f in training.ADAPTER_FILES}
    shutil.rmtree(adapter)
    proc = train_stage(project)
    assert "checkpoint-8 is the finished run" in proc.stdout
    assert {f: (adapter / f).read_bytes() for f in training.ADAPTER_FILES} == before
    assert (adapter / "tokenizer.json").is_file()
    m = json.loads((project / "metrics" / "train.json").read_text())
    assert m["steps"] == 8 and m["steps_this_run"] == 0


@pytest.mark.slow
def test_base_val_loss_is_measured_once_and_reused_across_a_sweep(project, tmp_path):
    """The step-0 validation pass measures the base model (LoRA B is zero): a sweep over lora_r
    reuses the first run's figure, which is exactly what the pass would have measured."""
    other = tmp_path / "proj"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns("train", "adapter", "mlflow.db", "metrics"))

    def metrics():
        return json.loads((other / "metrics" / "train.json").read_text())

    skipped = "no step-0 validation pass"
    assert skipped not in train_stage(other).stdout
    first = metrics()
    assert first["val_loss_first_cached"] is False and first["precision"] in ("bf16", "fp32")
    assert skipped in train_stage(other, "lora_r=4").stdout
    reused = metrics()
    assert reused["val_loss_first_cached"] is True and reused["val_loss_first"] == first["val_loss_first"]
    csv_rows = (other / "metrics" / "train_loss.csv").read_text().splitlines()
    assert csv_rows[1].startswith("0,") and float(csv_rows[1].split(",")[2]) == pytest.approx(first["val_loss_first"], abs=1e-6)
    assert reused["val_loss_final"] != first["val_loss_final"]  # another adapter was trained
    # Measured again with the cache off and yet another lora_r: the same number.
    assert skipped not in train_stage(other, "lora_r=2", "train.cache_base_val_loss=false").stdout
    assert metrics()["val_loss_first"] == first["val_loss_first"]
    # Another input of the pass (the sequence length): measured again.
    assert skipped not in train_stage(other, "sequence_len=128").stdout


def test_the_base_val_key_covers_the_machine(tmp_path, monkeypatch):
    """The cached step-0 validation loss is another machine's number only if its processor is this one's."""
    from qi_expert.core import gencache
    from qi_expert.core.config import load_params

    val = tmp_path / "val.chat.jsonl"
    val.write_text('{"messages": []}\n')
    cfg = load_params([f"train.val_file={val}", f"model.base_model={tmp_path / 'base'}"])
    here = training.base_val_key({"sequence_len": 1024}, cfg)
    assert training.base_val_key({"sequence_len": 1024}, cfg) == here
    monkeypatch.setattr(gencache, "_cpu", lambda: {"machine": "aarch64", "model": "Neoverse-V2", "flags": "sve2"})
    assert training.base_val_key({"sequence_len": 1024}, cfg) != here


def test_a_run_that_stops_before_max_steps_is_a_failure(project, tmp_path, monkeypatch):
    """Axolotl handles SIGINT by saving and exiting 0: the stage must not take that for a finished
    run. Here Axolotl "stops" at step 4 of 8: the stage exits non-zero naming the step and how to
    resume, copies no adapter, writes no metrics, and its MLflow run ends FAILED."""
    import importlib.util

    import mlflow

    from qi_expert.core import config

    other = tmp_path / "proj"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns("train", "adapter", "mlflow.db", "metrics"))
    monkeypatch.setattr(config, "ROOT", other)
    cfg = config.load_params(TINY, params_file=other / "params.yaml")

    def stopped_at_step_4(command, config_path, env, cwd=None, launcher=None):
        if command == "train":
            ckpt = other / "models" / "train" / "checkpoints" / "checkpoint-4"
            ckpt.mkdir(parents=True)
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": [
                {"step": 0, "eval_loss": 2.0}, {"step": 4, "loss": 1.5}]}))

    monkeypatch.setattr(training, "run_axolotl", stopped_at_step_4)
    spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages" / "train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(SystemExit, match=r"stopped at step 4 of max_steps=8 .*Rerun the stage"):
        stage.run(cfg)
    assert not (other / "models" / "adapter").exists()
    assert not (other / "metrics" / "train.json").exists()
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("qi-expert").experiment_id], "tags.stage = 'train'")
    assert run.info.status == "FAILED"


# Interruptions (issue 19): a 16-step run on the tiny model, stopped once checkpoint-4 is saved.
LONGER = ["max_steps=16", "eval_steps=16", "train.save_steps=4"]


def _copy(project: Path, dst: Path) -> Path:
    """The project without any run's outputs."""
    shutil.copytree(project, dst, ignore=shutil.ignore_patterns("train", "adapter", "mlflow.db", "metrics"))
    return dst


def _started_until_checkpoint(proj: Path, step: int = 4) -> subprocess.Popen:
    """The train stage started in `proj` (LONGER), returned once checkpoint-`step` is saved."""
    import time

    proc = launch_stage(proj, "train", *TINY, *LONGER, script_root=ROOT, background=True)
    state = proj / "models" / "train" / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.time() + 300
    while not state.is_file():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.1)
    return proc


def _only_run(proj: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{proj}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("qi-expert").experiment_id], "tags.stage = 'train'")
    return client, run


def _nothing_written(proj: Path) -> bool:
    return not (proj / "models" / "adapter").exists() and not (proj / "metrics" / "train.json").exists()


def _resumes_and_finishes(proj: Path) -> None:
    rerun = train_stage(proj, *LONGER)
    assert "resuming from checkpoint-" in rerun.stdout
    m = json.loads((proj / "metrics" / "train.json").read_text())
    assert m["steps"] == 16 and 0 < m["steps_this_run"] < 16


@pytest.mark.slow
def test_sigterm_to_the_stage_stops_axolotl_writes_nothing_and_the_rerun_resumes(project, tmp_path, left_running):
    """A scheduler's SIGTERM to the stage while Axolotl trains: Axolotl is stopped with it, the stage
    exits 130 saying so, no adapter or metrics appear, its MLflow run ends KILLED, and the rerun
    resumes from the last checkpoint and finishes."""
    import signal

    other = _copy(project, tmp_path / "proj")
    proc = _started_until_checkpoint(other)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "train: interrupted by SIGTERM" in err
    assert _nothing_written(other)
    assert left_running(other) == [], "Axolotl outlived the stage"
    assert _only_run(other)[1].info.status == "KILLED"
    _resumes_and_finishes(other)


@pytest.fixture(scope="module")
def uninterrupted(project, tmp_path_factory) -> Path:
    """A copy of the project trained LONGER (16 steps, 8 per epoch) without interruption."""
    whole = _copy(project, tmp_path_factory.mktemp("uninterrupted") / "proj")
    train_stage(whole, *LONGER, cache=whole.parent / "qi-cache")
    return whole


def _same_adapter(proj: Path, whole: Path) -> bool:
    return all((proj / "models" / "adapter" / name).read_bytes() == (whole / "models" / "adapter" / name).read_bytes()
               for name in ("adapter_model.safetensors", "adapter_config.json"))


@pytest.mark.slow
def test_a_run_resumed_in_its_second_epoch_ends_like_an_uninterrupted_run(uninterrupted, tmp_path):
    """Resumed from step 12 (epoch 2 of 2), the run shuffles epoch 2 as the uninterrupted run did:
    the same losses from step 13 on and the same adapter. (transformers' resumed loader never told
    the packed sampler its epoch: see axolotl_plugin; the adapter differed.)"""
    proj = tmp_path / "proj"
    shutil.copytree(uninterrupted, proj)
    ckpt = proj / "models" / "train" / "checkpoints"
    shutil.rmtree(ckpt / "checkpoint-16")
    shutil.rmtree(proj / "models" / "adapter")
    for f in training.ADAPTER_FILES:
        (ckpt / f).unlink()
    rerun = train_stage(proj, *LONGER)
    assert "resuming from checkpoint-12" in rerun.stdout
    assert json.loads((proj / "metrics" / "train.json").read_text())["steps_this_run"] == 4
    losses = report.loss_rows(report.trainer_state(ckpt))
    assert losses == report.loss_rows(report.trainer_state(uninterrupted / "models" / "train" / "checkpoints"))
    assert _same_adapter(proj, uninterrupted)


@pytest.mark.slow
def test_sigkill_at_a_random_point_kills_axolotl_too_and_the_rerun_ends_like_an_uninterrupted_run(
        project, uninterrupted, tmp_path, left_running):
    """SIGKILL to the stage at a random moment after the first checkpoint: the stage runs no code,
    yet Axolotl dies with it (lifetime.tied: the kernel kills it), so no orphan goes on writing
    checkpoints. Nothing final was written; the run left RUNNING in MLflow is closed KILLED by the
    rerun, which resumes from the last whole checkpoint (or, killed after the last one, uses it as
    it is) and ends with the adapter an uninterrupted run writes."""
    import random
    import time

    other = _copy(project, tmp_path / "proj")
    proc = _started_until_checkpoint(other)
    after = random.uniform(0.0, 3.0)
    time.sleep(after)
    assert proc.poll() is None, f"the run ended before the kill ({after:.2f} s after checkpoint-4): kill earlier"
    proc.kill()
    proc.communicate(timeout=60)
    assert left_running(other) == [], f"Axolotl outlived the stage killed {after:.2f} s after checkpoint-4"
    assert _nothing_written(other)
    client, killed = _only_run(other)
    assert killed.info.status == "RUNNING"  # SIGKILL: nothing could close it

    rerun = train_stage(other, *LONGER)
    assert "resuming from checkpoint-" in rerun.stdout or "checkpoint-16 is the finished run" in rerun.stdout
    assert json.loads((other / "metrics" / "train.json").read_text())["steps"] == 16
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert _same_adapter(other, uninterrupted), f"the adapter differs from the uninterrupted run's (killed {after:.2f} s after checkpoint-4)"


@pytest.mark.slow
def test_sigint_to_axolotl_alone_fails_the_stage_and_the_rerun_finishes(project, tmp_path):
    """The issue's measured case, for real: Ctrl+C reaches the Axolotl process alone (not the
    stage) after a checkpoint; Axolotl's own handler saves and exits 0. The stage must not take that
    for a finished run: exit 1 naming the step reached and how to resume, no adapter or metrics,
    MLflow FAILED; the rerun resumes and finishes."""
    import signal

    other = _copy(project, tmp_path / "proj")
    proc = _started_until_checkpoint(other)
    (axolotl,) = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == proc.pid
                  and b"axolotl.cli.train" in (p / "cmdline").read_bytes()]
    os.kill(int(axolotl.name), signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert re.search(r"train: the run stopped at step \d+ of max_steps=16 \(interrupted\?\).*Rerun the stage", err), err[-2000:]
    assert _nothing_written(other)
    assert _only_run(other)[1].info.status == "FAILED"
    _resumes_and_finishes(other)


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.slow
def test_qlora_run_uses_linear4bit_and_learns(project, tmp_path):
    project = _copy(project, tmp_path / "proj")
    train_stage(project, "adapter=qlora")
    report = json.loads((project / "models" / "train" / "checkpoints" / training.MODEL_REPORT).read_text())
    # 7 projections x 2 layers are bitsandbytes 4-bit layers under the LoRA wrappers.
    assert report["linear4bit_layers"] == 14
    assert any(k.startswith("bitsandbytes.") for k in report["linear_layers"])
    m = json.loads((project / "metrics" / "train.json").read_text())
    assert m["adapter"] == "qlora" and m["linear4bit_layers"] == 14
    assert m["train_loss_final_mean5"] < m["train_loss_first"] * 0.92
    assert m["val_loss_final"] < m["val_loss_first"]
    assert json.loads((project / "models" / "adapter" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.slow
def test_two_processes_on_cpu_train_one_model_and_write_it_once(project, tmp_path):
    """launcher=ddp on CPU: torchrun starts two processes (gloo); each trains on its own share of
    the rows, the gradients are all-reduced, so both end with the same weights; rank 0 alone
    writes the adapter and the reports, and the stage records both ranks."""
    proj = _copy_all(project, tmp_path / "proj")
    # Every row distinct, so the two shards differ; validation rows enough for a packed batch on each rank.
    for name, repeat in (("train", 8), ("val", 4)):
        rows = _rows(repeat)
        for i, row in enumerate(rows):
            row["messages"][1]["content"] += f" (variant {i})"
        (proj / f"data/formatted/{name}.chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (proj / "params.yaml").write_text(to_yaml(compose_conf(["launcher=ddp", "launcher.main_process_port=29613"])))
    train_stage(proj, cache=tmp_path / "qi-cache")
    metrics = json.loads((proj / "metrics/train.json").read_text())
    assert metrics["world_size"] == 2 and [r["rank"] for r in metrics["ranks"]] == [0, 1]
    first, second = metrics["ranks"]
    assert first["trainable_sha256"] == second["trainable_sha256"]  # one model: synchronised
    assert first["batches_sha256"] != second["batches_sha256"]  # ... trained on different rows
    assert first["batches"] == second["batches"] == metrics["steps"]
    assert metrics["val_loss_final"] < metrics["val_loss_first"]
    assert sorted(p.name for p in (proj / "models/adapter").glob("adapter_model*")) == ["adapter_model.safetensors"]
    launch = training.launch_command("train", Path("c.yaml"), compose_conf(["launcher=ddp"]).launcher)
    assert launch[1:4] == ["-m", "torch.distributed.run", "--nnodes=1"] and "--nproc_per_node=2" in launch


def test_launchers_generate_configs_axolotl_accepts_and_shard_only_on_gpus():
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    for launcher, keys in [("single", set()), ("ddp", set()), ("deepspeed_zero2", {"deepspeed"}),
                           ("deepspeed_zero3", {"deepspeed"}), ("fsdp", {"fsdp_version", "fsdp_config"})]:
        cfg = compose_conf(["model=qwen2.5-coder-7b", f"launcher={launcher}"])
        y = axolotl_config.build(cfg, cuda=True)
        assert keys <= set(y) and not ({"deepspeed", "fsdp_config"} - keys) & set(y), launcher
        y.pop("plugins")
        validated = validate_config(DictDefault(y))
        if launcher == "fsdp":
            assert validated.fsdp_config.transformer_layer_cls_to_wrap == "Qwen2DecoderLayer"
        if launcher.startswith("deepspeed"):
            zero = json.loads((ROOT / y["deepspeed"]).read_text())["zero_optimization"]["stage"]
            assert zero == int(launcher[-1])
        cmd = training.launch_command("train", Path("c.yaml"), cfg.launcher)
        assert ("accelerate.commands.launch" in cmd) == launcher.startswith(("deepspeed", "fsdp"))
        if launcher != "single":  # several machines: accelerate's own settings on the command line
            many = compose_conf([f"launcher={launcher}", "launcher.num_machines=2", "launcher.machine_rank=1",
                                 "launcher.main_process_ip=10.0.0.1"]).launcher
            text = " ".join(training.launch_command("train", Path("c.yaml"), many))
            assert ("--nnodes=2" in text and "--node_rank=1" in text and "--master_addr=10.0.0.1" in text) or \
                   ("--num_machines 2" in text and "--machine_rank 1" in text and "--main_process_ip 10.0.0.1" in text
                    and "--num_processes 4" in text)
    for launcher in ("deepspeed_zero2", "fsdp"):
        with pytest.raises(ValueError, match=f"launcher={launcher} shards the model .* needs CUDA"):
            axolotl_config.build(compose_conf([f"launcher={launcher}"]), cuda=False)
    assert training.launch_command("preprocess", Path("c.yaml"), compose_conf(["launcher=ddp"]).launcher) == \
        training.axolotl_command("preprocess", Path("c.yaml"))
