"""The GGUF export: merge the LoRA adapter, convert with llama.cpp's own scripts, quantize, check.

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

The files themselves (converters, quantization, header) are gguf.py's, the Modelfiles
modelfile.py's; decoding a GGUF is llamacpp.py's (the llama.cpp backend of decoding.complete);
scoring the files with the eval's scorer is quantcost.py's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from qi_expert.export import modelfile
from qi_expert.generation import decoding, gguf, llamacpp, transformers_backend


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


@dataclass(frozen=True)
class ExportSettings:
    """The `gguf:` config section as export() uses it. No defaults here: they live in conf/ alone
    (from_config reads every key; a missing one is a KeyError naming it)."""
    quantizations: list[str]
    default_quantization: str
    outtype: str
    merge_dtype: str
    adapter_gguf: bool
    keep_merged: bool
    n_ctx: int
    n_threads: int
    temperature: float
    top_p: float
    prompts: list[str]
    compare_tokens: int
    exact_tokens: int
    bench_tokens: int

    @classmethod
    def from_config(cls, gc: Mapping, *, model_bf16: bool) -> "ExportSettings":
        smoke = gc["smoke"]
        dtype = str(gc["merge_dtype"])
        if dtype == "auto":
            dtype = "float16" if model_bf16 else "float32"
        return cls(quantizations=[str(q).lower() for q in gc["quantizations"]],
                   default_quantization=str(gc["default_quantization"]).lower(), outtype=str(gc["outtype"]),
                   merge_dtype=dtype, adapter_gguf=bool(gc["adapter_gguf"]), keep_merged=bool(gc["keep_merged"]),
                   n_ctx=int(gc["n_ctx"]), n_threads=int(gc["n_threads"] or 0), temperature=float(gc["temperature"]),
                   top_p=float(gc["top_p"]), prompts=[str(p) for p in smoke["prompts"]],
                   compare_tokens=int(smoke["compare_tokens"]), exact_tokens=int(smoke["exact_tokens"]),
                   bench_tokens=int(smoke["bench_tokens"]))


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

    llama_dir = gguf.llama_cpp_dir(llama_dir)
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if settings.default_quantization not in settings.quantizations:
        raise ValueError(f"gguf.default_quantization '{settings.default_quantization}' is not in "
                         f"gguf.quantizations {settings.quantizations}")
    for q in settings.quantizations:
        gguf.ftype(q)  # fail before the slow part on a typo
    threads = llamacpp.default_threads(settings.n_threads)
    torch.set_num_threads(threads)
    _clean(out_dir)
    logs = out_dir / "logs"
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    metrics: dict = {"model": name, "threads": threads, "outtype": settings.outtype,
                     "merge_dtype": settings.merge_dtype}

    # The merged model (the base model's size: 14 GB for a 7B one) is written inside out_dir, which
    # the next run empties before anything else: a run killed with SIGKILL, which runs no finally,
    # left it behind in /tmp, 56 MB for SmolLM2 each time.
    work = out_dir / ".merge-work"
    work.mkdir()
    merged_dir = out_dir / "merged-hf" if settings.keep_merged else work / "merged"
    try:
        # 1. merge
        t = time.perf_counter()
        merged, tokenizer = merge_adapter(base_dir, adapter_dir, merged_dir, settings.merge_dtype)
        seconds["merge"] = time.perf_counter() - t
        log(f"gguf: merged {adapter_dir} into {base_dir} ({seconds['merge']:.1f}s)")

        # 2. convert the merged model, the adapter alone and the base it applies to (side by side)
        files[settings.outtype] = out_dir / f"{name}-{settings.outtype}.gguf"
        jobs = {f"convert_{settings.outtype}": gguf.hf_conversion(merged_dir, files[settings.outtype], settings.outtype,
                                                             logs / f"convert-{settings.outtype}.log")}
        if settings.adapter_gguf:
            files["lora_f16"] = out_dir / f"{name}{gguf.ADAPTER_SUFFIX}"
            files["base_f16"] = out_dir / f"{name}{gguf.BASE_SUFFIX}"
            jobs["convert_lora"] = gguf.lora_conversion(adapter_dir, base_dir, files["lora_f16"], "f16",
                                                   logs / "convert-lora.log")
            jobs["convert_base"] = gguf.hf_conversion(base_dir, files["base_f16"], "f16", logs / "convert-base.log")
        t = time.perf_counter()
        seconds.update(gguf.run_conversions(jobs, llama_dir))
        seconds["convert_wall"] = time.perf_counter() - t
        metrics["vocab"] = gguf.check_vocab_kind(files[settings.outtype], merged_dir)
        if settings.adapter_gguf:
            gguf.check_vocab_kind(files["base_f16"], base_dir)
        log(f"gguf: converted in {seconds['convert_wall']:.1f}s "
            f"({', '.join(f'{k} {v:.1f}s' for k, v in seconds.items() if k.startswith('convert_') and k != 'convert_wall')})")

        # 3. gguf.quantize (llama.cpp prints its per-tensor report on stderr; keep its summary)
        fallback = {}
        for q in settings.quantizations:
            files[q] = out_dir / f"{name}-{q}.gguf"
            with _captured_stderr(logs / f"quantize-{q}.log") as captured:
                seconds[f"quantize_{q}"] = gguf.quantize(files[settings.outtype], files[q], q, threads)
            fallback[q] = _fallback_count(captured.read_text(encoding="utf-8", errors="replace"))
            log(f"gguf: {q} {_mb(files[q])} MiB in {seconds[f'quantize_{q}']:.1f}s"
                + (f" ({fallback[q]} tensors fell back: rows not divisible by 256)" if fallback[q] else ""))
        metrics["fallback_tensors"] = fallback

        # 4. Modelfiles
        spec = modelfile.template_spec(tokenizer)
        probe = settings.prompts[0] if settings.prompts else "Write a TypeScript function."
        metrics["template"] = {"family": spec.family, "stop": list(spec.stop),
                               "matches_tokenizer": modelfile.template_matches(tokenizer, spec, system_prompt, probe)}
        if not metrics["template"]["matches_tokenizer"]:
            log(f"gguf: WARNING the Ollama TEMPLATE ({spec.family}) renders a prompt that differs from the "
                f"tokenizer's chat template; check the Modelfiles")
        modelfile.write_modelfiles(out_dir, name, files, spec, system_prompt, temperature=settings.temperature,
                                   top_p=settings.top_p, n_ctx=settings.n_ctx,
                                   default_quantization=settings.default_quantization)

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
    (out_dir / gguf.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return metrics


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
    texts = [modelfile.hf_prompt(tokenizer, system_prompt, p) for p in prompts]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    load_at_start = round(os.getloadavg()[0], 2)
    probe = decoding.StopPolicy.fixed(n_bench)  # n tokens each, end-of-generation ids included: like for like
    hf_tokens, hf_time, hf_first = [], 0.0, 0.0
    hf_backend = transformers_backend.Transformers(merged, batch_size=1, continuous=False)
    for p_ids in ids:  # one at a time, prefill included: what llama.cpp does below
        out = hf_backend.decode([p_ids], probe)
        hf_tokens += out.tokens
        hf_time += out.seconds
        hf_first += sum(out.stats["first_token_seconds"])
    hf_count = sum(len(t) for t in hf_tokens)
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
        llm = llamacpp.load_llama(path, n_ctx=settings.n_ctx, n_threads=settings.n_threads, lora_path=lora)
        try:
            for text, p_ids in zip(texts, ids):
                got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
                if list(got) != list(p_ids):
                    raise SmokeError(f"{path.name}: llama.cpp tokenizes the prompt differently from the "
                                     f"Hugging Face tokenizer ({len(got)} vs {len(p_ids)} tokens, first "
                                     f"difference at {common_prefix(got, p_ids)})")
            out = llamacpp.LlamaCpp(llm, reuse_prefix=False).decode(ids, probe)
            count, total, first_total = sum(len(t) for t in out.tokens), out.seconds, sum(out.stats["first_token_seconds"])
            agree[kind] = [common_prefix(toks[:n_cmp], ref[:n_cmp]) for toks, ref in zip(out.tokens, hf_tokens)]
            samples[kind] = llm.detokenize(out.tokens[0][:n_cmp]).decode("utf-8", errors="replace")
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
