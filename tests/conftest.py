import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny

# Offline and silent, whatever the caller's environment says.
for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "AXOLOTL_DO_NOT_TRACK": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(autouse=True)
def _mlflow_in_tmp(tmp_path, monkeypatch):
    """No test writes to the project's mlflow.db or the user's caches."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    # ... and no test reads or fills the user's generation cache.
    monkeypatch.setenv("QI_CACHE_DIR", str(tmp_path / "qi-cache"))


@pytest.fixture(scope="session")
def make_checkout(tmp_path_factory):
    """A factory of checkouts to run stages in as DVC does (`python stages/<stage>.py`, cwd = the
    checkout): this project's code, config, sample corpus and benchmark, and its node_modules
    (the pinned TypeScript) and tools/ (llama.cpp's converters) linked, not copied."""
    import shutil

    root_of_project = Path(__file__).resolve().parents[1]

    def make(name: str = "checkout") -> Path:
        root = tmp_path_factory.mktemp(name)
        for rel in ("src", "stages", "conf", "data/sample", "data/qi-bench"):
            shutil.copytree(root_of_project / rel, root / rel,
                            ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        for rel in ("dvc.yaml", "params.yaml", "package.json"):
            shutil.copy(root_of_project / rel, root / rel)
        (root / "node_modules").symlink_to(root_of_project / "node_modules")
        # llama.cpp's converters (scripts/setup.sh), git-ignored like node_modules: a checkout in a
        # temporary folder has no enclosing one to find them in.
        (root / "tools").symlink_to(root_of_project / "tools")
        return root

    return make


PARAMS_READ = "params_read.jsonl"  # in a checkout: what its stages read (core/config.py, $QI_PARAMS_READ)
STAGE_SCRIPTS = {"gguf": "gguf_export"}  # dvc.yaml stage name -> stages/<script>.py where they differ


def stage_env(root: Path, **extra) -> dict:
    """The environment a stage (or DVC) runs in under test: this virtual environment's `python`
    first on PATH (what dvc.yaml's commands call), MLflow in the checkout, and every parameter the
    stage reads traced to <root>/params_read.jsonl. `extra` wins (MLFLOW_TRACKING_URI, QI_CACHE_DIR...)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "QI_PARAMS_READ": str(root / PARAMS_READ),
           "GIT_AUTHOR_NAME": "t", "GIT_COMMITTER_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_EMAIL": "t@t"}
    return env | {k: str(v) for k, v in extra.items()}


def params_unread(root: Path, stage: str) -> list[str]:
    """The params dvc.yaml lists for `stage` that none of its runs in `root` read: a listed leaf
    must be read itself; a listed group through one of its keys, or converted whole."""
    rows = [json.loads(line) for line in (root / PARAMS_READ).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["stage"] == stage]
    assert rows, f"no run of stage {stage} was traced in {root}"
    read = {r["read"] for r in rows}
    whole = {k[:-2] for k in read if k.endswith(".*")}

    def is_read(key: str) -> bool:
        return (key in read and not _is_group(rows[0], key)) or any(r.startswith(key + ".") for r in read) \
            or any(key == w or key.startswith(w + ".") for w in whole)

    return [k for k in rows[0]["listed"] if not is_read(k)]


@functools.cache
def _params():
    """The project's composed params, once per session (params_unread asks per listed key)."""
    from qi_expert.core.config import load_params

    return load_params([])


def _is_group(row: dict, key: str) -> bool:
    """Whether a listed key names a group of params (its reads are its own keys)."""
    from omegaconf import DictConfig, OmegaConf

    return isinstance(OmegaConf.select(_params(), key), DictConfig)


def launch_stage(root: Path, stage: str, *overrides: str, env: dict | None = None, timeout: float = 900,
                 script_root: Path | None = None, background: bool = False):
    """`python stages/<stage>.py [overrides]` in a checkout, as DVC runs it (cwd = the checkout,
    stage_env + `env`). `script_root`: run that tree's script instead (the train tests run this
    project's script in a project folder). `background=True`: the process, started with SIGINT at
    its default (as a terminal's Ctrl+C finds it; a shell that starts a job in the background
    without job control, as CI may start pytest, sets it to ignored and children inherit that)."""
    script = f"stages/{STAGE_SCRIPTS.get(stage, stage)}.py"
    cmd = [sys.executable, str(script_root / script) if script_root else script, *overrides]
    environment = stage_env(root, **(env or {}))
    if background:
        return subprocess.Popen(cmd, cwd=root, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(cmd, cwd=root, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_stage():
    """launch_stage, for tests: run_stage(checkout, "validate", "validate.x=1", env={...})."""
    return launch_stage


@pytest.fixture(scope="session")
def left_running():
    """f(folder, within=0.3) -> the command lines of processes still working in `folder` (their
    cwd) after up to `within` seconds: what a stopped or killed stage left behind. Children tied to
    the stage (lifetime.tied) are gone within milliseconds; an orphan lives on for seconds."""
    import time

    def running(folder: Path) -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder.resolve():
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue  # gone meanwhile, or a zombie
        return found

    def left(folder: Path, within: float = 0.3) -> list[str]:
        deadline = time.time() + within
        while (found := running(folder)) and time.time() < deadline:
            time.sleep(0.05)
        return found

    return left


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llama with the SmolLM2 tokenizer (from the GGUF) and a random LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    base = tiny.build_llama(root / "base", tiny.smollm2_tokenizer(), hidden=32, intermediate=64, max_positions=2048)
    model = LlamaForCausalLM.from_pretrained(base)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    adapter = root / "adapter"
    lora.save_pretrained(adapter)
    return base, adapter


SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "data/sample/typescript"
EXAMPLE_ROWS = [
    {"instruction": "Write a function that parses a port number and returns a Result.", "input": "",
     "output": 'import { success, failure, validationError, type Result, type QiError } from "@qi/base";\n\n'
               "export function toPort(n: number): Result<number, QiError> {\n"
               '  return n > 0 && n < 65536 ? success(n) : failure(validationError("bad port", { n }));\n}\n'},
    {"instruction": "Log a message with the @qi/core logger.", "input": "",
     "output": 'import { createLogger } from "@qi/core";\n\nexport const log = createLogger({ level: "info" });\n'},
]


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory) -> Path:
    """A pattern store of the sample corpus's @qi API and two hand-written examples (as the index stage builds it)."""
    from qi_expert.data import retrieval
    from qi_expert.typescript import typecheck

    out = tmp_path_factory.mktemp("index") / "index"
    api = retrieval.api_surface(SAMPLE_CORPUS, typecheck.module_exports(SAMPLE_CORPUS))
    retrieval.build(out, api, EXAMPLE_ROWS, source={"corpus_name": "sample", "corpus_root": "data/sample/typescript"})
    return out
