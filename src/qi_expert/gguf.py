"""GGUF export: merge the LoRA adapter, convert with llama.cpp's own scripts, quantize, check.

The `gguf` stage (stages/gguf_export.py) runs `export()`:

1. merge: the PEFT adapter is merged into the base model (`merge_and_unload`) and saved as a
   plain Hugging Face directory (in a temporary folder: it is an intermediate, not a DVC out);
2. convert: llama.cpp's `convert_hf_to_gguf.py` turns it into `<name>-f16.gguf`, and
   `convert_lora_to_gguf.py` turns the adapter alone into `<name>-lora-f16.gguf` (with the base
   model converted as `<name>-base-f16.gguf`), for users who keep the base and add the adapter.
   The scripts come from the same llama-cpp-python sdist as the compiled library
   (scripts/setup.sh unpacks them into tools/llama.cpp); they run as subprocesses with that
   folder's gguf-py first on PYTHONPATH (the PyPI `gguf` is older than the scripts);
3. quantize: `llama_cpp.llama_model_quantize` writes one file per `gguf.quantizations` entry
   (k-quants need rows divisible by 256: smaller tensors fall back to q5_0/q8_0 and the count
   is reported);
4. Ollama Modelfiles: FROM the GGUF, SYSTEM the training system prompt, PARAMETERs, and a
   TEMPLATE in Go template syntax derived from the tokenizer's chat template (ChatML, Qwen,
   Llama-2 [INST], Mistral, DeepSeek-Coder, Llama-3), checked by rendering both;
5. smoke check: every GGUF loads in llama-cpp-python and generates; llama.cpp tokenizes the
   prompts exactly as the Hugging Face tokenizer does; and for the f16 file the first greedy
   tokens equal those of the merged Hugging Face model (the same prompt token ids are fed to
   both). The same runs give tokens/s for every file and for transformers.

`complete_gguf()` decodes the eval benchmark's prompts with a GGUF, so the stage can score each
file with the eval scorer (quantcost.score_gguf: the cost of quantization); `stream_chat()` is what
`qi-expert generate` prints.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from qi_expert import lifetime
from qi_expert.config import PACKAGE_ROOT, ROOT, resolve_path

# tools/ is git-ignored: a queued DVC experiment runs in a temporary copy without it, so the
# checkout the package is installed from is looked in too. QI_LLAMA_CPP_DIR overrides both.
LLAMA_CPP_DIRS = (ROOT / "tools" / "llama.cpp", PACKAGE_ROOT / "tools" / "llama.cpp")
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
# Chat templates: Hugging Face (Jinja) -> Ollama (Go template)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TemplateSpec:
    family: str
    template: str          # Go template (Ollama TEMPLATE), .System / .Prompt / .Response
    stop: tuple[str, ...]  # PARAMETER stop entries


_CHATML = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
           "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
           "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
_LLAMA2 = ("[INST] {{ if .System }}<<SYS>>\n{{ .System }}\n<</SYS>>\n\n{{ end }}"
           "{{ .Prompt }} [/INST]{{ .Response }}")
_MISTRAL = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} [/INST]{{ .Response }}"
# DeepSeek-Coder's own template writes a custom system prompt with no newline after it and ends
# the generation prompt at "### Response:" (the model writes the newline); mirrored as is.
_DEEPSEEK = ("{{ if .System }}{{ .System }}{{ end }}### Instruction:\n{{ .Prompt }}\n"
             "### Response:{{ .Response }}\n<|EOT|>\n")
_LLAMA3 = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
           "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
           "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")

TEMPLATES: dict[str, TemplateSpec] = {
    "chatml": TemplateSpec("chatml", _CHATML, ("<|im_start|>", "<|im_end|>")),
    "qwen": TemplateSpec("qwen", _CHATML, ("<|im_start|>", "<|im_end|>", "<|endoftext|>")),
    "llama2": TemplateSpec("llama2", _LLAMA2, ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")),
    "mistral": TemplateSpec("mistral", _MISTRAL, ("[INST]", "[/INST]")),
    "deepseek": TemplateSpec("deepseek", _DEEPSEEK, ("<|EOT|>", "### Instruction:")),
    "llama3": TemplateSpec("llama3", _LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
}


def template_family(chat_template: str | None) -> str:
    """Which prompt format a Hugging Face chat template (Jinja source) writes."""
    t = chat_template or ""
    if "<|im_start|>" in t:
        return "qwen" if "qwen" in t.lower() else "chatml"
    if "<|start_header_id|>" in t:
        return "llama3"
    if "### Instruction" in t and "### Response" in t:
        return "deepseek"
    if "[INST]" in t:
        return "llama2" if "<<SYS>>" in t else "mistral"
    raise ValueError("no known prompt format in the tokenizer's chat template "
                     f"({'empty' if not t else t[:120]!r}); add one to qi_expert.gguf.TEMPLATES")


def template_spec(tokenizer) -> TemplateSpec:
    """The Ollama template and stop strings for a Hugging Face tokenizer."""
    spec = TEMPLATES[template_family(getattr(tokenizer, "chat_template", None))]
    eos = getattr(tokenizer, "eos_token", None)
    stop = spec.stop + ((eos,) if eos and eos not in spec.stop and eos in spec.template else ())
    return TemplateSpec(spec.family, spec.template, stop)


_GO_IF = re.compile(r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}", re.S)


def render_go_template(template: str, system: str, prompt: str) -> str:
    """Render a TEMPLATES entry the way Ollama builds a generation prompt (up to .Response).

    Only the constructs the entries above use: `{{ if .X }}...{{ end }}` and `{{ .X }}`.
    """
    values = {"System": system, "Prompt": prompt}
    head = template.split("{{ .Response }}")[0]
    head = _GO_IF.sub(lambda m: m.group(2) if values.get(m.group(1)) else "", head)
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], head)


def hf_prompt(tokenizer, system: str, prompt: str) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def template_matches(tokenizer, spec: TemplateSpec, system: str, prompt: str) -> bool:
    """Does the Go template render the same text as the tokenizer's chat template?

    A leading BOS token written by the Jinja template is dropped: llama.cpp adds it itself.
    """
    hf = hf_prompt(tokenizer, system, prompt)
    go = render_go_template(spec.template, system, prompt)
    bos = getattr(tokenizer, "bos_token", None)
    return hf == go or bool(bos and hf == bos + go)


def _quote(text: str) -> str:
    if '"""' in text:
        raise ValueError('a Modelfile value cannot contain """')
    return '"""' + text + '"""'


def modelfile(from_: str, spec: TemplateSpec, system_prompt: str, *, temperature: float, top_p: float,
              num_ctx: int, adapter: str | None = None, comment: str = "") -> str:
    """An Ollama Modelfile. Paths are relative to the Modelfile's own folder."""
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines.append(f"FROM {from_}")
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f"TEMPLATE {_quote(spec.template)}")
    lines.append(f"SYSTEM {_quote(system_prompt)}")
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}", f"PARAMETER num_ctx {int(num_ctx)}"]
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in spec.stop]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Inference with llama-cpp-python
# --------------------------------------------------------------------------------------------

def default_threads(n_threads: int | None = None) -> int:
    return int(n_threads) if n_threads else max(1, os.cpu_count() or 1)


def load_llama(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
               lora_path: str | Path | None = None, verbose: bool = False, seed: int = 0):
    """A llama_cpp.Llama on CPU; the chat format comes from the GGUF's own chat template."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF model at {path}")
    threads = default_threads(n_threads)
    return Llama(model_path=str(path), n_ctx=int(n_ctx), n_threads=threads, n_threads_batch=threads,
                 lora_path=str(lora_path) if lora_path else None, n_gpu_layers=0, seed=seed,
                 verbose=verbose)


def _messages(system_prompt: str | None, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]


def stream_chat(llm, prompt: str, system_prompt: str | None, max_tokens: int, *, temperature: float = 0.1,
                top_p: float = 0.9, seed: int | None = None) -> Iterator[str]:
    """Yield the completion's text pieces as llama.cpp produces them."""
    kwargs = {"seed": seed} if seed is not None else {}
    for chunk in llm.create_chat_completion(_messages(system_prompt, prompt), max_tokens=int(max_tokens),
                                            temperature=float(temperature), top_p=float(top_p),
                                            stream=True, **kwargs):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            yield piece


def complete_gguf(llm, prompts_ids: Sequence[Sequence[int]], max_tokens: int, *, stop_ids: Sequence[int] = (),
                  stop_check=None) -> tuple[list[list[int]], list[str], float]:
    """Greedy completions of already tokenized prompts: (tokens per prompt, stop reasons, seconds).

    The eval stage's prompts and stopping rules (generate.stop_checker: closed code fence,
    repetition) applied to llama.cpp, so a GGUF is scored on the same terms as the transformers
    model. llama.cpp keeps the KV cache of the longest prefix shared with the previous prompt
    (the system prompt), so consecutive prompts skip most of their prefill.
    """
    eos = set(int(i) for i in stop_ids) | {int(llm.token_eos())}
    out: list[list[int]] = []
    reasons: list[str] = []
    start = time.perf_counter()
    for ids in prompts_ids:
        tokens: list[int] = []
        reason = "length"
        if max_tokens > 0:
            for token in llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                      reset=True):
                if int(token) in eos:
                    reason = "eos"
                    break
                tokens.append(int(token))
                why = stop_check(tokens) if stop_check else None
                if why:
                    reason = why
                    break
                if len(tokens) >= max_tokens:
                    break
        out.append(tokens)
        reasons.append(reason)
    return out, reasons, time.perf_counter() - start


def greedy_gguf(llm, prompt_ids: Sequence[int], n: int) -> tuple[list[int], float, float]:
    """n greedy tokens after prompt_ids (end-of-generation tokens do not stop it).

    Returns (tokens, seconds in all, seconds to the first token: the prompt's prefill)."""
    llm.reset()
    out: list[int] = []
    start = time.perf_counter()
    first = 0.0
    for token in llm.generate(list(prompt_ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                              repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) == 1:
            first = time.perf_counter() - start
        if len(out) >= n:
            break
    return out, time.perf_counter() - start, first


def greedy_hf(model, prompt_ids: Sequence[int], n: int) -> tuple[list[int], float, float]:
    """The same for a transformers model: argmax decoding with the KV cache, n tokens."""
    import torch

    out: list[int] = []
    start = time.perf_counter()
    first = 0.0
    with torch.inference_mode():
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
        result = model(input_ids=ids, use_cache=True)
        for _ in range(n):
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            if len(out) == 1:
                first = time.perf_counter() - start
            if len(out) >= n:
                break
            result = model(input_ids=torch.tensor([[token]]), past_key_values=result.past_key_values,
                           use_cache=True)
    return out, time.perf_counter() - start, first


def _decode_rate(tokens: int, prompts: int, seconds: float, first_token_seconds: float) -> float:
    """Tokens/s after each prompt's first token (that one pays the prefill)."""
    return round((tokens - prompts) / max(seconds - first_token_seconds, 1e-9), 2)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------------------------
# Merge and the whole export
# --------------------------------------------------------------------------------------------

def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def tokenizer_source(base_dir: Path, adapter_dir: Path) -> Path:
    """The adapter's own tokenizer when training saved one, else the base model's."""
    return adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str = "float32"):
    """PEFT merge_and_unload into the base; saves model + tokenizer to out_dir; returns both."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json): run the train stage")
    torch_dtype = _torch_dtype(dtype)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(base_dir, adapter_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return merged, tokenizer


@dataclass
class ExportSettings:
    """The `gguf:` config section, as export() uses it."""
    quantizations: list[str] = field(default_factory=lambda: ["q8_0", "q4_k_m"])
    default_quantization: str = "q4_k_m"
    outtype: str = "f16"
    merge_dtype: str = "float32"
    adapter_gguf: bool = True
    n_ctx: int = 2048
    n_threads: int = 0
    temperature: float = 0.1
    top_p: float = 0.9
    prompts: list[str] = field(default_factory=list)
    compare_tokens: int = 16
    exact_tokens: int = 8
    bench_tokens: int = 64
    keep_merged: bool = False

    @classmethod
    def from_config(cls, gc: Mapping, merge_dtype: str | None = None) -> "ExportSettings":
        smoke = gc.get("smoke", {}) or {}
        dtype = str(gc.get("merge_dtype", "float32"))
        if dtype == "auto":
            dtype = merge_dtype or "float32"
        return cls(quantizations=[str(q).lower() for q in gc.get("quantizations", ["q8_0", "q4_k_m"])],
                   default_quantization=str(gc.get("default_quantization", "q4_k_m")).lower(),
                   outtype=str(gc.get("outtype", "f16")), merge_dtype=dtype,
                   adapter_gguf=bool(gc.get("adapter_gguf", True)), n_ctx=int(gc.get("n_ctx", 2048)),
                   n_threads=int(gc.get("n_threads", 0) or 0), temperature=float(gc.get("temperature", 0.1)),
                   top_p=float(gc.get("top_p", 0.9)), prompts=[str(p) for p in smoke.get("prompts", [])],
                   compare_tokens=int(smoke.get("compare_tokens", 16)), exact_tokens=int(smoke.get("exact_tokens", 8)),
                   bench_tokens=int(smoke.get("bench_tokens", 64)), keep_merged=bool(gc.get("keep_merged", False)))


class SmokeError(RuntimeError):
    """A GGUF does not behave like the model it was converted from."""


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


def _clean(out_dir: Path) -> None:
    """Start from an empty out folder so no stale file survives into the DVC out."""
    if out_dir.exists():
        for p in out_dir.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _fallback_count(log_text: str) -> int:
    m = re.search(r"(\d+) of \d+ tensor\(s\) required fallback", log_text)
    return int(m.group(1)) if m else 0


def export(base_dir: Path, adapter_dir: Path, out_dir: Path, *, name: str, system_prompt: str,
           settings: ExportSettings, llama_dir: Path | None = None, log=print) -> dict:
    """The whole stage on explicit paths; returns the metrics (also in out_dir/manifest.json)."""
    import torch

    llama_dir = llama_cpp_dir(llama_dir)
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if settings.default_quantization not in settings.quantizations:
        raise ValueError(f"gguf.default_quantization '{settings.default_quantization}' is not in "
                         f"gguf.quantizations {settings.quantizations}")
    for q in settings.quantizations:
        ftype(q)  # fail before the slow part on a typo
    threads = default_threads(settings.n_threads)
    torch.set_num_threads(threads)
    _clean(out_dir)
    logs = out_dir / "logs"
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    metrics: dict = {"model": name, "threads": threads, "outtype": settings.outtype,
                     "merge_dtype": settings.merge_dtype}

    work = Path(tempfile.mkdtemp(prefix="qi-gguf-merged-"))
    merged_dir = out_dir / "merged-hf" if settings.keep_merged else work / "merged"
    try:
        # 1. merge
        t = time.perf_counter()
        merged, tokenizer = merge_adapter(base_dir, adapter_dir, merged_dir, settings.merge_dtype)
        seconds["merge"] = time.perf_counter() - t
        log(f"gguf: merged {adapter_dir} into {base_dir} ({seconds['merge']:.1f}s)")

        # 2. convert the merged model, the adapter alone and the base it applies to (side by side)
        files[settings.outtype] = out_dir / f"{name}-{settings.outtype}.gguf"
        jobs = {f"convert_{settings.outtype}": hf_conversion(merged_dir, files[settings.outtype], settings.outtype,
                                                             logs / f"convert-{settings.outtype}.log")}
        if settings.adapter_gguf:
            files["lora_f16"] = out_dir / f"{name}{ADAPTER_SUFFIX}"
            files["base_f16"] = out_dir / f"{name}{BASE_SUFFIX}"
            jobs["convert_lora"] = lora_conversion(adapter_dir, base_dir, files["lora_f16"], "f16",
                                                   logs / "convert-lora.log")
            jobs["convert_base"] = hf_conversion(base_dir, files["base_f16"], "f16", logs / "convert-base.log")
        t = time.perf_counter()
        seconds.update(run_conversions(jobs, llama_dir))
        seconds["convert_wall"] = time.perf_counter() - t
        metrics["vocab"] = check_vocab_kind(files[settings.outtype], merged_dir)
        if settings.adapter_gguf:
            check_vocab_kind(files["base_f16"], base_dir)
        log(f"gguf: converted in {seconds['convert_wall']:.1f}s "
            f"({', '.join(f'{k} {v:.1f}s' for k, v in seconds.items() if k.startswith('convert_') and k != 'convert_wall')})")

        # 3. quantize (llama.cpp prints its per-tensor report on stderr; keep its summary)
        fallback = {}
        for q in settings.quantizations:
            files[q] = out_dir / f"{name}-{q}.gguf"
            with _captured_stderr(logs / f"quantize-{q}.log") as captured:
                seconds[f"quantize_{q}"] = quantize(files[settings.outtype], files[q], q, threads)
            fallback[q] = _fallback_count(captured.read_text(encoding="utf-8", errors="replace"))
            log(f"gguf: {q} {_mb(files[q])} MiB in {seconds[f'quantize_{q}']:.1f}s"
                + (f" ({fallback[q]} tensors fell back: rows not divisible by 256)" if fallback[q] else ""))
        metrics["fallback_tensors"] = fallback

        # 4. Modelfiles
        spec = template_spec(tokenizer)
        probe = settings.prompts[0] if settings.prompts else "Write a TypeScript function."
        metrics["template"] = {"family": spec.family, "stop": list(spec.stop),
                               "matches_tokenizer": template_matches(tokenizer, spec, system_prompt, probe)}
        if not metrics["template"]["matches_tokenizer"]:
            log(f"gguf: WARNING the Ollama TEMPLATE ({spec.family}) renders a prompt that differs from the "
                f"tokenizer's chat template; check the Modelfiles")
        write_modelfiles(out_dir, name, files, spec, system_prompt, settings)

        # 5. smoke check and speed
        metrics.update(smoke(merged, tokenizer, files, system_prompt, settings, log=log))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    metrics["bytes"] = {k: p.stat().st_size for k, p in files.items()}
    metrics["size_mb"] = {k: _mb(p) for k, p in files.items()}
    metrics["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    metrics["load_average"] = [round(x, 2) for x in os.getloadavg()]
    manifest = {"model": name, "files": {k: p.name for k, p in files.items()},
                "default": files[settings.default_quantization].name, "system_prompt": system_prompt,
                "temperature": settings.temperature, "top_p": settings.top_p, "n_ctx": settings.n_ctx,
                "template_family": spec.family, "stop": list(spec.stop)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return metrics


def write_modelfiles(out_dir: Path, name: str, files: Mapping[str, Path], spec: TemplateSpec,
                     system_prompt: str, settings: ExportSettings) -> list[Path]:
    """Modelfile (the default quantization), Modelfile.<type> for each GGUF, Modelfile.adapter."""
    params = {"temperature": settings.temperature, "top_p": settings.top_p, "num_ctx": settings.n_ctx}
    written = []
    for kind, path in files.items():
        if kind in ("lora_f16", "base_f16"):
            continue
        text = modelfile(f"./{path.name}", spec, system_prompt, **params,
                         comment=f"qi-expert {name} ({kind}): ollama create {name}:{kind} -f Modelfile.{kind}")
        written.append(out_dir / f"Modelfile.{kind}")
        written[-1].write_text(text, encoding="utf-8")
        if kind == settings.default_quantization:
            (out_dir / "Modelfile").write_text(text, encoding="utf-8")
            written.append(out_dir / "Modelfile")
    if "lora_f16" in files and "base_f16" in files:
        text = modelfile(f"./{files['base_f16'].name}", spec, system_prompt, **params,
                         adapter=f"./{files['lora_f16'].name}",
                         comment=f"qi-expert {name}: the base model plus the LoRA adapter, unmerged\n"
                                 f"ollama create {name}:adapter -f Modelfile.adapter")
        written.append(out_dir / "Modelfile.adapter")
        written[-1].write_text(text, encoding="utf-8")
    return written


class _captured_stderr:
    """Send the C library's stderr (fd 2) to a file for the duration of a block."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = open(self.path, "wb")
        os.dup2(self._file.fileno(), 2)
        # llama-cpp-python's log callback prints to sys.stderr, which may not be fd 2 (pytest).
        self._py_stderr = sys.stderr
        sys.stderr = open(self._file.fileno(), "w", encoding="utf-8", errors="replace", closefd=False)
        return self.path

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = self._py_stderr
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.close()


def smoke(merged, tokenizer, files: Mapping[str, Path], system_prompt: str, settings: ExportSettings,
          log=print) -> dict:
    """Load and run every GGUF; compare tokenization and greedy tokens with the HF model; speed.

    Raises SmokeError when llama.cpp tokenizes a prompt differently from the HF tokenizer, or
    when the f16 (outtype) file's first `exact_tokens` greedy tokens differ from the merged
    Hugging Face model's on any prompt. Quantized files and base + LoRA are only measured
    (agreeing prefix). Speed: greedy generation of bench_tokens after each chat prompt, prefill
    included (tokens_per_s) and decoding alone after the first token (decode_tokens_per_s),
    end-of-generation tokens ignored, the same for transformers and llama.cpp.
    """
    prompts = settings.prompts or ["Write a TypeScript function that adds two numbers."]
    n_cmp = max(settings.compare_tokens, settings.exact_tokens)
    n_bench = max(settings.bench_tokens, n_cmp)
    texts = [hf_prompt(tokenizer, system_prompt, p) for p in prompts]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    load_at_start = round(os.getloadavg()[0], 2)
    hf_tokens, hf_time, hf_count, hf_first = [], 0.0, 0, 0.0
    for p_ids in ids:
        toks, secs, first = greedy_hf(merged, p_ids, n_bench)
        hf_tokens.append(toks)
        hf_time += secs
        hf_first += first
        hf_count += len(toks)
    tps = {"transformers": round(hf_count / hf_time, 2)}
    # Decoding alone (after the first token, i.e. without the prompt's prefill): what a user
    # waiting on a long completion sees.
    decode_tps = {"transformers": _decode_rate(hf_count, len(ids), hf_time, hf_first)}
    agree: dict[str, list[int]] = {}
    samples: dict[str, str] = {}
    runs = [(kind, path, None) for kind, path in files.items() if kind not in ("lora_f16", "base_f16")]
    if "lora_f16" in files and "base_f16" in files:
        # The unmerged pair (llama.cpp applies the LoRA at load) must behave like the merged model.
        runs.append(("base_lora", files["base_f16"], files["lora_f16"]))
    for kind, path, lora in runs:
        llm = load_llama(path, n_ctx=settings.n_ctx, n_threads=settings.n_threads, lora_path=lora)
        try:
            for text, p_ids in zip(texts, ids):
                got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
                if list(got) != list(p_ids):
                    raise SmokeError(f"{path.name}: llama.cpp tokenizes the prompt differently from the "
                                     f"Hugging Face tokenizer ({len(got)} vs {len(p_ids)} tokens, first "
                                     f"difference at {common_prefix(got, p_ids)})")
            count, total, first_total, agree[kind] = 0, 0.0, 0.0, []
            for i, (p_ids, ref) in enumerate(zip(ids, hf_tokens)):
                toks, secs, first = greedy_gguf(llm, p_ids, n_bench)
                count += len(toks)
                total += secs
                first_total += first
                agree[kind].append(common_prefix(toks[:n_cmp], ref[:n_cmp]))
                if i == 0:
                    samples[kind] = llm.detokenize(toks[:n_cmp]).decode("utf-8", errors="replace")
            tps[kind] = round(count / total, 2)
            decode_tps[kind] = _decode_rate(count, len(ids), total, first_total)
        finally:
            llm.close()
        log(f"gguf: {kind}: {tps[kind]} tokens/s ({decode_tps[kind]} decoding alone), greedy agreement with "
            f"transformers {agree[kind]} of {n_cmp}")
        if kind == settings.outtype and min(agree[kind]) < settings.exact_tokens:
            raise SmokeError(f"{path.name}: the first {settings.exact_tokens} greedy tokens differ from the merged "
                             f"Hugging Face model (agreeing tokens per prompt: {agree[kind]})")
    return {
        "tokens_per_s": tps,
        "speedup_vs_transformers": {k: round(v / tps["transformers"], 2) for k, v in tps.items() if k != "transformers"},
        "decode_tokens_per_s": decode_tps,
        "decode_speedup_vs_transformers": {k: round(v / decode_tps["transformers"], 2)
                                           for k, v in decode_tps.items() if k != "transformers"},
        "greedy_agreement": {k: {"per_prompt": v, "min": min(v)} for k, v in agree.items()},
        "compare_tokens": n_cmp,
        "bench_tokens": n_bench,
        "prompts": len(prompts),
        "samples": samples,
        "load_average_at_bench_start": load_at_start,
    }


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
