"""Stage `gguf` (the script is not named gguf.py: it would shadow the `gguf` package): merge the adapter, convert with llama.cpp, quantize, Ollama Modelfiles, smoke check.

    python stages/gguf_export.py

Reads models/base/<model> (prepare) and train.adapter_dir (models/adapter, train). Writes models/gguf/:
qi-expert-<model>-{f16,q8_0,q4_k_m}.gguf (merged), -base-f16.gguf + -lora-f16.gguf (unmerged
pair), Modelfile, Modelfile.<type>, Modelfile.adapter, manifest.json, logs/; and
metrics/gguf.json (sizes, conversion/quantization seconds, tokens/s against transformers).
"""

from pathlib import Path

from omegaconf import OmegaConf

from qi_expert import gguf, io, tracking
from qi_expert.config import resolve_path, stage_entry

OUT = resolve_path("models/gguf")
METRICS = resolve_path("metrics/gguf.json")


def base_model_dir(model) -> Path:
    """The Hugging Face directory of the base model: the prepare out, or the Hub cache (GPU models)."""
    local = resolve_path(f"models/base/{model.name}")
    for candidate in (resolve_path(str(model.base_model)), local):
        if (candidate / "config.json").is_file():
            return candidate
    if str(model.source.kind) == "hub":
        # prepare does not download Hub models; on the GPU machine Axolotl has cached it by now.
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model.base_model)))
    raise FileNotFoundError(f"{local} holds no Hugging Face model (config.json): run the prepare stage")


def run(cfg):
    gc = OmegaConf.to_container(cfg.gguf, resolve=True)
    settings = gguf.ExportSettings.from_config(gc, merge_dtype="float16" if cfg.model.bf16 else "float32")
    adapter = resolve_path(str(cfg.get("train", {}).get("adapter_dir", "models/adapter")))
    metrics = gguf.export(base_model_dir(cfg.model), adapter, OUT, name=f"qi-expert-{cfg.model.name}",
                          system_prompt=str(cfg.format.system_prompt), settings=settings)
    io.write_json(METRICS, metrics)
    tps = metrics["tokens_per_s"]
    print("gguf: " + ", ".join(f"{k} {metrics['size_mb'][k]} MiB" for k in metrics["size_mb"]))
    print("gguf: tokens/s " + ", ".join(f"{k} {v}" for k, v in tps.items())
          + f" (load average {metrics['load_average'][0]})")
    with tracking.stage_run(cfg, "gguf", {"gguf": cfg.gguf, "model": cfg.model.name}) as mlflow:
        tracking.log_counts(mlflow, {k: metrics[k] for k in ("size_mb", "seconds", "tokens_per_s",
                                                              "speedup_vs_transformers")})
        for path in sorted(OUT.glob("Modelfile*")) + [OUT / gguf.MANIFEST]:
            mlflow.log_artifact(str(path), artifact_path="gguf")


if __name__ == "__main__":
    stage_entry(run)()
