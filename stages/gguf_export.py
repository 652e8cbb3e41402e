"""Stage `gguf` (the script is not named gguf.py: it would shadow the `gguf` package): merge the adapter, convert with llama.cpp, quantize, Ollama Modelfiles, smoke check.

    python stages/gguf_export.py

Reads models/base/<model> (prepare) and train.adapter_dir (models/adapter, train). Writes models/gguf/:
qi-expert-<model>-{f16,q8_0,q4_k_m}.gguf (merged), -base-f16.gguf + -lora-f16.gguf (unmerged
pair), Modelfile, Modelfile.<type>, Modelfile.adapter, manifest.json, logs/, quant_eval.jsonl; and
metrics/gguf.json (sizes, conversion/quantization seconds, tokens/s against transformers, and
`quantization_cost`: the eval benchmark scored on the f16, q8_0 and q4_k_m files through llama.cpp).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from omegaconf import OmegaConf  # noqa: E402

from qi_expert.core import files, tracking
from qi_expert.core.config import resolve_path, stage_entry  # noqa: E402
from qi_expert.data import bench
from qi_expert.export import convert, quantcost
from qi_expert.generation import basemodel, gguf  # noqa: E402
from qi_expert.typescript import npmdeps, sandbox

OUT = resolve_path("models/gguf")
METRICS = resolve_path("metrics/gguf.json")
EVAL_RESULTS = resolve_path("data/eval/results.jsonl")


def base_model_dir(model) -> Path:
    """The Hugging Face directory of the base model: the prepare out, or the Hub cache (GPU models)."""
    local = basemodel.base_dir(model)
    if not basemodel.is_hub_id(model):
        for candidate in (resolve_path(str(model.base_model)), local):
            if (candidate / "config.json").is_file():
                return candidate
    else:
        # prepare does not download Hub models; on the GPU machine Axolotl has cached it by now.
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model.base_model)))
    raise FileNotFoundError(f"{local} holds no Hugging Face model (config.json): run the prepare stage")


def quantization_cost(cfg, folder: Path, tokenizer_dir: Path) -> tuple[list[dict], dict]:
    """The eval benchmark on the f16 file and each quantized file (quantcost.score_gguf)."""
    from transformers import AutoTokenizer

    qc, ec = cfg.gguf.quant_eval, cfg.eval
    manifest = gguf.read_manifest(folder / gguf.MANIFEST)
    ggufs = {str(k): folder / manifest["files"][k] for k in qc.files}
    tasks = bench.load_tasks(resolve_path(ec.benchmark))
    if qc.limit is not None:
        tasks = tasks[: int(qc.limit)]
    reference_rows = None
    if qc.reference == "eval":
        if not EVAL_RESULTS.is_file():
            raise FileNotFoundError(f"{EVAL_RESULTS} is missing: run the eval stage first, or set "
                                    "gguf.quant_eval.reference=generate")
        reference_rows = [r for r in files.read_jsonl(EVAL_RESULTS) if r["model"] == "tuned"]
    elif qc.reference != "generate":
        raise ValueError(f"gguf.quant_eval.reference is {qc.reference!r}: eval (the eval stage's tuned "
                         "completions) or generate (the first of gguf.quant_eval.files)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # The eval's budget, measured on the same benchmark with the same tokenizer (eval.max_new_tokens: auto).
    budget = bench.token_budget(ec.max_new_tokens, bench.load_tasks(resolve_path(ec.benchmark)), tokenizer,
                                float(ec.budget_quantile))
    return quantcost.score_gguf(
        ggufs, tokenizer, tasks, system_prompt=str(cfg.format.system_prompt),
        max_new_tokens=budget, no_repeat_ngram=int(ec.no_repeat_ngram), project=resolve_path(cfg.corpus.root),
        tsconfig=str(cfg.corpus.tsconfig), timeout=float(ec.timeout_seconds), memory_mb=int(ec.memory_mb),
        try_catch_allowed_in=cfg.validate.try_catch_allowed_in, isolation=str(ec.sandbox), n_ctx=int(cfg.gguf.n_ctx),
        n_threads=int(cfg.gguf.n_threads or 0) or None, reference_rows=reference_rows, cache=bool(ec.cache),
        module_format=sandbox.module_format(resolve_path(cfg.corpus.root), str(cfg.corpus.module_format)),
        dependencies=npmdeps.install(resolve_path(cfg.corpus.root)) if cfg.corpus.install_dependencies else None)


def run(cfg):
    gc = OmegaConf.to_container(cfg.gguf, resolve=True)
    settings = convert.ExportSettings.from_config(gc, model_bf16=bool(cfg.model.bf16))
    runnable = [settings.outtype, *settings.quantizations]
    unknown = [str(k) for k in cfg.gguf.quant_eval.files if str(k) not in runnable]
    if unknown:  # before the slow part
        raise ValueError(f"gguf.quant_eval.files names {unknown}: the stage writes {runnable} "
                         f"(gguf.outtype and gguf.quantizations)")
    adapter = resolve_path(str(cfg.get("train", {}).get("adapter_dir", "models/adapter")))
    base = base_model_dir(cfg.model)
    # Everything is built in a staging folder and swapped in when complete: an interrupted run
    # leaves models/gguf as it was (or absent), never a folder of some files that looks whole.
    staging = files.staging_dir(OUT)
    metrics = convert.export(base, adapter, staging, name=f"qi-expert-{cfg.model.name}",
                          system_prompt=str(cfg.format.system_prompt), settings=settings)
    if cfg.gguf.quant_eval.files:
        rows, metrics["quantization_cost"] = quantization_cost(cfg, staging, convert.tokenizer_source(base, adapter))
        files.write_jsonl(staging / "quant_eval.jsonl", rows)
        qc = metrics["quantization_cost"]
        for kind in [qc["reference"]] + [k for k in cfg.gguf.quant_eval.files if k != qc["reference"]]:
            m, cost = qc[kind], qc["cost"].get(kind)
            vs = (f" (vs {qc['reference']}: compile {cost['compile_rate']:+.3f}, compliance "
                  f"{cost['compliance_rate']:+.3f})") if cost else ""
            print(f"gguf eval: {kind}: pass@1 {m.get('pass@1', 0):.3f}, compile {m['compile_rate']:.3f}, "
                  f"compliance {m['compliance_rate']:.3f}{vs}")
    files.replace_dir(staging, OUT)
    files.write_json(METRICS, metrics)
    tps = metrics["tokens_per_s"]
    print("gguf: " + ", ".join(f"{k} {metrics['size_mb'][k]} MiB" for k in metrics["size_mb"]))
    print("gguf: tokens/s " + ", ".join(f"{k} {v}" for k, v in tps.items())
          + f" (load average {metrics['load_average'][0]})")
    with tracking.stage_run(cfg, "gguf", {"gguf": cfg.gguf, "model": cfg.model.name}) as mlflow:
        tracking.log_counts(mlflow, {k: metrics[k] for k in ("size_mb", "seconds", "tokens_per_s",
                                                              "speedup_vs_transformers", "decode_tokens_per_s",
                                                              "decode_speedup_vs_transformers")})
        if "quantization_cost" in metrics:
            tracking.log_counts(mlflow, {"quant_eval": {k: v for k, v in metrics["quantization_cost"].items()
                                                        if k != "reference"}})
            mlflow.log_artifact(str(OUT / "quant_eval.jsonl"), artifact_path="gguf")
        for path in sorted(OUT.glob("Modelfile*")) + [OUT / gguf.MANIFEST]:
            mlflow.log_artifact(str(path), artifact_path="gguf")
        # Each file a model version in the registry (pointing at models/gguf, not copied), with
        # what quantization cost it on the eval benchmark; the figures also on the experiment's run.
        manifest = gguf.read_manifest(OUT / gguf.MANIFEST)
        qc = metrics.get("quantization_cost", {})
        client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
        headline = {}
        for kind, name in manifest["files"].items():
            figures = {"size_mb": metrics["size_mb"].get(kind)}
            if isinstance(qc.get(kind), dict):
                figures.update({"compile_rate": qc[kind]["compile_rate"], "compliance_rate": qc[kind]["compliance_rate"],
                                "pass_at_1": qc[kind].get("pass@1")})
            headline.update({f"gguf.{kind}.{k}": v for k, v in figures.items() if v is not None})
            # The run's gguf/ artifacts hold the Modelfiles and manifest; the weights stay in models/gguf.
            tracking.register_version(client, f"qi-expert-{cfg.model.name}-{kind}".replace("_", "-"), run_id, "gguf",
                                      {k: v for k, v in figures.items() if v is not None}, local_path=OUT / name)
        tracking.log_headline_active(mlflow, headline)


if __name__ == "__main__":
    stage_entry(run)()
