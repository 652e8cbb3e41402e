"""Loading a model for generation (an adapter merged, a bf16 copy with prepacked linears for
decoding on CPU) and the eval's generate(): decoding.complete on the transformers backend
(batched, continuous), where a row stops being decoding.StopPolicy's to say.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from qi_expert.generation import basemodel, decoding, transformers_backend


def load_model(base_model: Path | str, adapter: Path | None = None, merge: bool = True, *,
               requires_cuda: bool = False, bf16: bool = False):
    """(model, tokenizer) from a Hugging Face directory (or a Hub id), optionally with a PEFT adapter.

    fp32 on CPU; on a CUDA device the model goes there, in bf16 when the model entry says so.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    if requires_cuda and not cuda:
        raise RuntimeError(f"{base_model} needs a CUDA device and there is none: evaluate "
                           "model=smollm2-135m on CPU, or score outputs with eval.predictions=path.jsonl")
    if isinstance(base_model, Path) and not base_model.is_dir():
        raise FileNotFoundError(f"base model {base_model} is missing: run the prepare stage "
                                "(or score a predictions file: eval.predictions=path.jsonl)")
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    dtype = torch.bfloat16 if (cuda and bf16) else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if cuda:
        model = model.to("cuda")
    if adapter is not None:
        model = apply_adapter(model, adapter, merge)
    model.eval()
    return model, tokenizer


def generation_model(model, precision: str):
    """The model decoding runs on: a bf16 copy of an fp32 CPU model when `precision` is bf16
    (eval.cpu_precision), else the model itself. A copy, so that an adapter is merged into the fp32
    weights and the reference loss keeps its own precision. Measured on the tuned model, 54 tasks:
    39.5 s (118.2 tokens/s) vs 62.0 s (72.6) in fp32; 27 of 54 completions the same text."""
    import copy

    import torch

    param = next(model.parameters())
    if precision != "bf16" or param.device.type != "cpu" or param.dtype != torch.float32:
        return model
    return prepack_linears(copy.deepcopy(model).to(torch.bfloat16))


@functools.cache
def _prepacked_linear_class():
    """nn.Linear for bf16 on CPU with its weight reordered once into oneDNN's blocked layout.

    Eager nn.Linear hands oneDNN the plain weight on every call, and at the 16 rows a decoding step
    multiplies that costs more than the product itself (the weight is read, reordered, read again).
    torch's inductor makes the same swap when it freezes a CPU model (mkldnn._reorder_linear_weight,
    then mkldnn._linear_pointwise); done here without compiling, which would recompile for each new
    batch width and cache length. Measured (benchmarks/generation_prepacked.py, the base model on the
    54 plain prompts, batch 16, 2 cores of an AMD EPYC with AVX512-BF16): 57.6 vs 71.8 s (130.7 vs
    104.9 tokens/s, 1.25x), the same text on 54 of 54 completions. (Not for the reference loss:
    its forward runs thousands of rows at once, where the swap measured 49.0 vs 50.7 s.)
    """
    import torch

    class PrepackedLinear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear, rows_hint: int = 16):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight_packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
            self.bias = linear.bias

        def forward(self, x):
            y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.weight_packed,
                                                   self.bias, "none", [], "")
            return y.view(*x.shape[:-1], self.out_features)

    return PrepackedLinear


def prepack_linears(model):
    """Every bf16 nn.Linear of `model` on CPU swapped for a prepacked one (_prepacked_linear_class);
    `model` as it is where oneDNN cannot run bf16 on this processor (an AVX2-only CPU: the plain
    bf16 layers still run, emulated)."""
    import torch

    if not (basemodel.onednn_bf16_supported() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child.weight.dtype == torch.bfloat16 and child.weight.device.type == "cpu":
                setattr(parent, name, _prepacked_linear_class()(child))
    return model


def apply_adapter(model, adapter: Path, merge: bool = True):
    """Base + LoRA adapter through PEFT; merged into the weights (same numbers, base-model speed)."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter {adapter} has no adapter_config.json: run the train stage")
    model = PeftModel.from_pretrained(model, str(adapter))
    return model.merge_and_unload() if merge else model


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
             n_samples: int = 1, temperature: float = 0.0, seed: int = 0,
             stop_at_fence: bool = True, stop_on_repetition: bool = True, continuous: bool = True) -> decoding.Generation:
    """decoding.complete() on the transformers backend with the eval's stop policy."""
    policy = decoding.StopPolicy.eval(tokenizer, max_new_tokens, model=model, stop_at_fence=stop_at_fence,
                                      stop_on_repetition=stop_on_repetition)
    backend = transformers_backend.Transformers(model, batch_size=batch_size, continuous=continuous,
                                                pad_id=tokenizer.pad_token_id)
    return decoding.complete(backend, tokenizer, prompts, policy, n_samples=n_samples, temperature=temperature, seed=seed)
