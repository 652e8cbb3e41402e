"""A content-keyed cache of what a model computes: the same model files and inputs give the same numbers.

Three users: the eval's generations and reference losses (below), the gguf stage's llama.cpp
completions of each GGUF file (quantcost.score_gguf: a rerun after an interruption redoes only
the files it had not finished), and the train stage's base-model validation loss
(training.base_val_key), each under its own folder (`kind`).

The eval's base arms depend only on the base model, the tasks, the prompt and the decoding, yet
every experiment of a sweep (`dvc exp run -S lora_r=32`) would generate them again (~2 min each
on 2 cores). The key covers everything the completions depend on: the bytes of the model (and
adapter) files, the prompts, every decoding setting, the generation code itself, the library
versions and the machine's arithmetic (platform()); so a hit returns exactly what generating would. It lives outside the repository
($QI_CACHE_DIR, default ~/.cache/qi-expert/generations), never a DVC out, and `eval.cache=false`
turns it off. A hit is recorded in the stage's metrics (generation.cached).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qi_expert.core.files import file_sha256

# Relative to the package folder (src/qi_expert/).
CODE_FILES = ("generation/models.py", "generation/decoding.py", "generation/transformers_backend.py",
              "generation/attention.py", "generation/refloss.py", "core/gencache.py")


def cache_dir(kind: str = "generations") -> Path:
    return Path(os.environ.get("QI_CACHE_DIR") or Path.home() / ".cache/qi-expert") / kind


def files_digest(folders: Iterable[Path]) -> dict[str, str]:
    """sha256 of every file under the folders (relative names), i.e. the model as bytes; a path
    that is a file (one GGUF) stands for itself."""
    out = {}
    for folder in folders:
        folder = Path(folder)
        if folder.is_file():
            out[folder.name] = file_sha256(folder)
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                out[f"{folder.name}/{p.relative_to(folder)}"] = file_sha256(p)
    return out


def _cpu() -> dict[str, str]:
    """The processor's name and instruction-set flags (Linux's /proc/cpuinfo), else what Python knows."""
    import platform as _platform

    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = " ".join(sorted(fields.get("flags", fields.get("Features", "")).split()))
    return {"machine": _platform.machine(), "model": fields.get("model name", _platform.processor()),
            "flags": hashlib.sha256(flags.encode("utf-8")).hexdigest()[:16]}


def platform() -> dict:
    """What the numbers depend on beyond the files and the library versions: the processor (its
    instruction sets pick the kernels: oneDNN's bf16 products on a CPU with AVX512-BF16 are not
    those of one without) and the GPUs torch sees. A cache folder shared by several machines
    ($QI_CACHE_DIR on a shared disk, one home folder on a cluster) must not hand one machine's
    completions to another: the same llama.cpp version built for AVX2 and for AVX512 gave the same
    text on only 9-10 of 54 completions of each quantized file (2026-12-02)."""
    import torch

    gpus = [f"{torch.cuda.get_device_name(i)} sm_{''.join(map(str, torch.cuda.get_device_capability(i)))}"
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": _cpu(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpus": gpus}


def key(model_folders: Sequence[Path], prompts: Sequence[str], decoding: Mapping,
        code_files: Sequence[str] = CODE_FILES) -> str:
    import torch
    import transformers

    here = Path(__file__).parents[1]  # src/qi_expert
    payload = {
        "model": files_digest(model_folders),
        "prompts": list(prompts),
        "decoding": dict(decoding),
        "code": {f: hashlib.sha256((here / f).read_bytes()).hexdigest() for f in code_files},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "platform": platform(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def load(k: str, kind: str = "generations") -> dict | None:
    path = cache_dir(kind) / f"{k}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or unreadable: generate


def store(k: str, value: Mapping, kind: str = "generations") -> None:
    folder = cache_dir(kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{k}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value), encoding="utf-8")
        tmp.replace(folder / f"{k}.json")  # atomic: a reader never sees half a file
    except OSError:
        pass  # a cache that cannot be written only costs time
