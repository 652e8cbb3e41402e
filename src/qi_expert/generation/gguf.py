"""GGUF files: llama.cpp's converters, quantization, the file's header, and finding a model.

- convert: llama.cpp's `convert_hf_to_gguf.py` turns a Hugging Face directory into a GGUF and
  `convert_lora_to_gguf.py` turns a PEFT adapter alone into one. The scripts come from the same
  llama-cpp-python sdist as the compiled library (scripts/setup.sh unpacks them into
  tools/llama.cpp); they run as subprocesses with that folder's gguf-py first on PYTHONPATH (the
  PyPI `gguf` is older than the scripts), tied to this process's life (lifetime.tied);
- quantize: `llama_cpp.llama_model_quantize` (k-quants need rows divisible by 256: smaller
  tensors fall back to q5_0/q8_0, which the converter log counts);
- the header: a few metadata keys read without loading the tensors (see gguf_metadata);
- the model the CLI and the server use: models/gguf/ and its manifest.

The whole export (merge, convert, quantize, Modelfiles, smoke check) is export.py's; decoding a
GGUF is llamacpp.py's.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from qi_expert.core import lifetime
from qi_expert.core.config import PACKAGE_ROOT, ROOT, resolve_path

# tools/ is git-ignored: a queued DVC experiment runs in a temporary copy under .dvc/tmp/exps
# without it (and runs that copy's code: the stage scripts put its src/ first), so the enclosing
# checkouts are looked in too, then the one the package is installed from, as node.modules does
# for node_modules. QI_LLAMA_CPP_DIR overrides them all.
LLAMA_CPP_DIRS = tuple(folder / "tools" / "llama.cpp" for folder in (ROOT, *ROOT.parents, PACKAGE_ROOT))
MANIFEST = "manifest.json"
ADAPTER_SUFFIX = "-lora-f16.gguf"
BASE_SUFFIX = "-base-f16.gguf"


# --------------------------------------------------------------------------------------------
# llama.cpp converters (subprocesses) and quantization (in process)
# --------------------------------------------------------------------------------------------

class ConversionError(RuntimeError):
    """A llama.cpp converter failed; the message carries the end of its output."""


def llama_cpp_dir(path: str | Path | None = None) -> Path:
    """The folder holding convert_hf_to_gguf.py, convert_lora_to_gguf.py and gguf-py."""
    if path or os.environ.get("QI_LLAMA_CPP_DIR"):
        folder = resolve_path(path or os.environ["QI_LLAMA_CPP_DIR"])
    else:
        folder = next((d for d in LLAMA_CPP_DIRS if (d / "convert_hf_to_gguf.py").is_file()), LLAMA_CPP_DIRS[0])
    missing = [n for n in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py")
               if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"llama.cpp converters missing in {folder} ({', '.join(missing)}): run `bash scripts/setup.sh`, "
            f"which unpacks them from the llama-cpp-python sdist that matches the compiled library")
    return folder


def converter_env(llama_dir: Path) -> dict[str, str]:
    """The converters' environment: their own gguf-py first, offline, no telemetry."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(llama_dir / "gguf-py")] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("NO_LOCAL_GGUF", None)  # set, it would make the scripts skip their own gguf-py
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


@dataclass
class Conversion:
    """One converter run: `script args...`, its output kept in `log`."""
    script: str
    args: list
    log: Path | None = None


def hf_conversion(model_dir: Path, out_file: Path, outtype: str = "f16", log: Path | None = None) -> Conversion:
    """convert_hf_to_gguf.py on a Hugging Face directory."""
    return Conversion("convert_hf_to_gguf.py", [model_dir, "--outtype", outtype, "--outfile", out_file], log)


def lora_conversion(adapter_dir: Path, base_dir: Path, out_file: Path, outtype: str = "f16",
                    log: Path | None = None) -> Conversion:
    """convert_lora_to_gguf.py on a PEFT adapter directory (the base's config from base_dir)."""
    return Conversion("convert_lora_to_gguf.py",
                      [adapter_dir, "--base", base_dir, "--outtype", outtype, "--outfile", out_file], log)


def run_conversions(jobs: Mapping[str, Conversion], llama_dir: Path | None = None) -> dict[str, float]:
    """Run the converters side by side (each is mostly a torch import and file I/O).

    Returns each job's wall seconds; raises ConversionError with the end of the output of the
    first one that failed (after every job has ended).
    """
    llama_dir = llama_cpp_dir(llama_dir)
    env = converter_env(llama_dir)
    running = {}
    for name, job in jobs.items():
        for arg in job.args:
            if isinstance(arg, Path) and arg.suffix == ".gguf":
                arg.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(llama_dir / job.script), *map(str, job.args)]
        out = tempfile.TemporaryFile()
        running[name] = (cmd, subprocess.Popen(lifetime.tied(cmd), env=env, stdout=out, stderr=subprocess.STDOUT),
                         out, time.perf_counter())
    seconds, failures = {}, []
    for name, (cmd, proc, out, start) in running.items():
        rc = proc.wait()
        seconds[name] = time.perf_counter() - start
        out.seek(0)
        output = out.read().decode("utf-8", errors="replace")
        out.close()
        log = jobs[name].log
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            # The converters draw progress bars with carriage returns: keep each line's last state.
            log.write_text("\n".join(line.split("\r")[-1] for line in output.splitlines()) + "\n",
                           encoding="utf-8")
        if rc != 0:
            tail = "\n".join(output.strip().splitlines()[-25:])
            failures.append(f"{jobs[name].script} failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    if failures:
        raise ConversionError("\n\n".join(failures))
    return seconds


def convert_hf(model_dir: Path, out_file: Path, outtype: str = "f16", llama_dir: Path | None = None,
               log: Path | None = None) -> float:
    """convert_hf_to_gguf.py on a Hugging Face directory; returns the seconds it took."""
    return run_conversions({"hf": hf_conversion(model_dir, out_file, outtype, log)}, llama_dir)["hf"]


def convert_lora(adapter_dir: Path, base_dir: Path, out_file: Path, outtype: str = "f16",
                 llama_dir: Path | None = None, log: Path | None = None) -> float:
    """convert_lora_to_gguf.py on a PEFT adapter directory; returns the seconds it took."""
    return run_conversions({"lora": lora_conversion(adapter_dir, base_dir, out_file, outtype, log)},
                           llama_dir)["lora"]


def ftype(qtype: str) -> int:
    """'q4_k_m' -> llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M."""
    import llama_cpp

    name = "LLAMA_FTYPE_MOSTLY_" + qtype.upper()
    if not hasattr(llama_cpp, name):
        known = sorted(k[len("LLAMA_FTYPE_MOSTLY_"):].lower() for k in dir(llama_cpp)
                       if k.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise ValueError(f"unknown quantization '{qtype}'; llama.cpp knows {', '.join(known)}")
    return int(getattr(llama_cpp, name))


def quantize(src: Path, dst: Path, qtype: str, n_threads: int = 0) -> float:
    """llama_model_quantize(src -> dst); returns the seconds it took."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(qtype)
    params.nthread = int(n_threads)
    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ConversionError(f"llama_model_quantize({src.name} -> {qtype}) returned {rc}")
    return time.perf_counter() - start


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: Path, keys: Sequence[str]) -> dict:
    """Metadata values of a GGUF file, read from its header without loading it in llama.cpp.

    A small reader of the GGUF key/value section (v2/v3), kept by measurement: gguf-py's
    GGUFReader (the pinned `gguf` package) parses every field and tensor eagerly: 3.4 s against
    0.04 s here for three keys of the 100 MiB q4_k_m file (2026-12-01, 2 cores); and llama.cpp
    aborts the process on a broken vocabulary, which is one of the things looked for here. The
    tests check it against GGUFReader's values.
    """
    import struct

    wanted, found = set(keys), {}
    with open(path, "rb") as f:
        def read(fmt: str):
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, f.read(size))[0]

        def string(skip: bool = False):
            n = read("<Q")
            if skip:
                f.seek(n, 1)
                return None
            return f.read(n).decode("utf-8", errors="replace")

        def value(vtype: int, skip: bool):
            if vtype == 8:
                return string(skip)
            if vtype == 9:
                etype, count = read("<I"), read("<Q")
                if etype in _GGUF_SCALARS and skip:
                    f.seek(struct.calcsize(_GGUF_SCALARS[etype]) * count, 1)
                    return None
                items = [value(etype, skip) for _ in range(count)]
                return None if skip else items
            fmt = _GGUF_SCALARS[vtype]
            if skip:
                f.seek(struct.calcsize(fmt), 1)
                return None
            return read(fmt)

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = read("<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key = string()
            vtype = read("<I")
            skip = key not in wanted
            v = value(vtype, skip)
            if not skip:
                found[key] = v
                if len(found) == len(wanted):
                    break
    return found


def check_vocab_kind(gguf_file: Path, tokenizer_dir: Path) -> str:
    """A byte-level BPE tokenizer must become a `gpt2` GGUF vocabulary.

    convert_hf_to_gguf.py files a BPE tokenizer.json with `byte_fallback: true` as a
    SentencePiece-style (`llama`) vocabulary; for a byte-level BPE (GPT-2 style, as SmolLM2,
    Qwen and DeepSeek-Coder use) llama.cpp then aborts on load (std::out_of_range) or
    tokenizes wrongly. Such a tokenizer.json comes from transformers' GGUF->HF tokenizer
    conversion; it must be rebuilt as a plain byte-level BPE before the base is converted.
    """
    meta = gguf_metadata(gguf_file, ["tokenizer.ggml.model", "tokenizer.ggml.pre"])
    kind = str(meta.get("tokenizer.ggml.model", ""))
    tj = tokenizer_dir / "tokenizer.json"
    if tj.is_file():
        data = json.loads(tj.read_text(encoding="utf-8"))
        byte_level = "ByteLevel" in json.dumps(data.get("pre_tokenizer"))
        if byte_level and kind != "gpt2":
            raise ConversionError(
                f"{gguf_file.name}: the tokenizer in {tokenizer_dir} is byte-level BPE, but the converter "
                f"wrote a '{kind}' vocabulary (tokenizer.json model.byte_fallback="
                f"{data.get('model', {}).get('byte_fallback')}); llama.cpp would crash or mis-tokenize. "
                f"Rebuild tokenizer.json as a byte-level BPE without byte_fallback (the prepare stage's job).")
    return f"{kind}/{meta.get('tokenizer.ggml.pre', '')}"


# --------------------------------------------------------------------------------------------
# Finding a model for the CLI
# --------------------------------------------------------------------------------------------

def is_model_gguf(path: Path) -> bool:
    """A runnable GGUF (not a LoRA adapter file)."""
    return path.suffix == ".gguf" and not path.name.endswith(ADAPTER_SUFFIX)


def default_model(folder: str | Path = "models/gguf", quantization: str = "q4_k_m") -> Path:
    """The newest `*-<quantization>.gguf` in folder, else its newest runnable GGUF."""
    folder = resolve_path(folder)
    candidates = sorted(folder.glob(f"*-{quantization}.gguf"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not candidates and folder.is_dir():
        candidates = sorted((p for p in folder.glob("*.gguf") if is_model_gguf(p)), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no GGUF model in {folder}: run the gguf stage (`dvc repro gguf`) or pass --model")
    return candidates[-1]


def read_manifest(model_path: Path) -> dict:
    """The manifest written beside a GGUF by export(), or {}."""
    path = Path(model_path).parent / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
