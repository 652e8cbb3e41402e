"""Ollama Modelfiles: FROM the GGUF, SYSTEM the training system prompt, PARAMETERs, and a TEMPLATE
in Go template syntax derived from the tokenizer's chat template (ChatML, Qwen, Llama-2 [INST],
Mistral, DeepSeek-Coder, Llama-3), checked by rendering both with the same messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

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
                     f"({'empty' if not t else t[:120]!r}); add one to qi_expert.export.modelfile.TEMPLATES")


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


def write_modelfiles(out_dir: Path, name: str, files: Mapping[str, Path], spec: TemplateSpec,
                     system_prompt: str, *, temperature: float, top_p: float, n_ctx: int,
                     default_quantization: str) -> list[Path]:
    """Modelfile (the default quantization), Modelfile.<type> for each GGUF, Modelfile.adapter."""
    params = {"temperature": temperature, "top_p": top_p, "num_ctx": n_ctx}
    written = []
    for kind, path in files.items():
        if kind in ("lora_f16", "base_f16"):
            continue
        text = modelfile(f"./{path.name}", spec, system_prompt, **params,
                         comment=f"qi-expert {name} ({kind}): ollama create {name}:{kind} -f Modelfile.{kind}")
        written.append(out_dir / f"Modelfile.{kind}")
        written[-1].write_text(text, encoding="utf-8")
        if kind == default_quantization:
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
