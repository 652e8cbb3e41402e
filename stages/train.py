"""Stage `train`: LoRA / QLoRA fine-tuning with Axolotl, configured from params.yaml.

    python stages/train.py [lora_r=32 max_steps=10 ...]

1. A GPU model (model.requires_cuda) on a machine without CUDA stops here, before any model
   is loaded, naming the CPU alternative. Missing base model / chat template / data: a clear error.
2. Writes models/train/axolotl.yaml (the whole Axolotl config; read it to see what ran).
3. Runs `python -m axolotl.cli.train` on it (which tokenizes the rows first; under a launcher with
   several processes `python -m axolotl.cli.preprocess` does that once before), offline and
   without telemetry. Axolotl logs per-step loss into this stage's MLflow run (MLFLOW_RUN_ID).
   Checkpoints go to models/train/checkpoints (persisted by DVC): a rerun after an interruption
   resumes from the last one when the settings are unchanged, and starts afresh otherwise. A
   rerun whose last checkpoint already reached max_steps uses that checkpoint's adapter without
   launching Axolotl (resuming would train one step too many; see training.finished).
4. Copies the final adapter + tokenizer to models/adapter/ and writes metrics/train.json and
   metrics/train_loss.csv (a DVC plot) from the trainer's trainer_state.json.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core import files, tracking  # noqa: E402
from qi_expert.core.config import resolve_path, stage_entry  # noqa: E402
from qi_expert.generation import basemodel  # noqa: E402
from qi_expert.train import axolotl_config, report, training  # noqa: E402

METRICS = resolve_path("metrics/train.json")
LOSS_CSV = resolve_path("metrics/train_loss.csv")


def run(cfg):
    t0 = time.time()
    try:
        basemodel.require_device(cfg.model, "train")  # before anything is loaded
        training.check_inputs(cfg)
    except (basemodel.NoCudaError, training.TrainInputError) as e:
        sys.exit(str(e))
    cuda = basemodel.cuda_available()
    tc = cfg.train
    uri = tracking.tracking_uri(cfg)
    tags = tracking.run_tags(cfg, "train") | {"adapter": str(cfg.adapter), "device": "cuda" if cuda else "cpu"}
    run_name = f"train:{tags['dvc_experiment']}"
    y = axolotl_config.build(cfg, cuda=cuda, mlflow=True, run_name=run_name)
    config_path = axolotl_config.write(y, resolve_path(tc.axolotl_config))
    output_dir = resolve_path(tc.output_dir)
    resume = training.prepare_output_dir(output_dir, training.fingerprint(y, cfg))
    done = training.finished(resume, int(y["max_steps"]))
    # Read now: save_total_limit may rotate the resumed checkpoint away during the run.
    resumed_step = training.global_step(resume)
    start = (f"{resume.name} is the finished run, its adapter is used (nothing to train)" if done
             else f"resuming from {resume.name}" if resume else "fresh run")
    print(f"train: {config_path} written; {start}; "
          f"{cfg.model.name} {cfg.adapter} r={cfg.lora_r} on {'CUDA' if cuda else 'CPU'}", flush=True)

    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = tracking.open_experiment(client, str(cfg.mlflow.experiment))
    tracking.close_dead_runs(client, experiment_id, "train")  # a run SIGKILLed before this one
    parent = tracking.experiment_run(client, experiment_id, cfg)
    run_id = client.create_run(experiment_id, run_name=run_name,
                               tags={**tags, "mlflow.parentRunId": parent}).info.run_id
    # The rows it trains and validates on, as MLflow dataset inputs (their content digests).
    tracking.log_datasets(client, run_id, {"training": resolve_path(tc.train_file),
                                           "validation": resolve_path(tc.val_file)})
    # Axolotl's MLflow callback logs per-step loss into this run (tagged above).
    env = training.axolotl_env({"MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id})
    # The base model's validation loss (step 0) when it is already known for these inputs.
    # (train.cache_base_val_loss=false measures it in every run that launches Axolotl.)
    shared = bool(tc.cache_base_val_loss)
    val_key = training.base_val_key(y, cfg)
    base_val = training.cached_base_val(val_key, output_dir, shared=shared) if (shared or done) else None
    if base_val is not None and not done:
        env[training.SKIP_EVAL_ON_START] = "1"
        print(f"train: base model's validation loss {base_val:.4f} known for these inputs "
              f"(train.cache_base_val_loss); no step-0 validation pass", flush=True)
    status = "FAILED"
    try:
        train_seconds = 0.0
        if not done:
            if training.world_size(cfg) > 1:
                # Tokenized once before the processes start, as Axolotl advises for several. One
                # process prepares the data itself in `train` (the same code): a separate preprocess
                # would start Python, torch and Axolotl once more (~12 s of the CPU default's stage).
                training.run_axolotl("preprocess", config_path, env)
            t_train = time.time()
            training.run_axolotl("train", config_path, env, launcher=cfg.launcher)
            train_seconds = time.time() - t_train
        state = report.trainer_state(output_dir)
        reached = int(state.get("global_step", 0))
        if reached < int(y["max_steps"]):
            # Axolotl exits 0 after an interruption it handled (SIGINT: it saves and stops): that
            # is not a finished run. Nothing is copied or written; the rerun resumes.
            raise training.IncompleteRun(
                f"train: the run stopped at step {reached} of max_steps={y['max_steps']} (interrupted?); "
                f"models/adapter and metrics/train.json are left as they were. Rerun the stage "
                f"(`dvc repro train`) to resume from the last checkpoint in {tc.output_dir}")
        rows = report.loss_rows(state)
        if base_val is not None:
            rows = training.with_base_val(rows, base_val)
        elif rows and rows[0]["step"] == 0 and rows[0]["val_loss"] != "":
            training.remember_base_val(val_key, output_dir, rows[0]["val_loss"], shared=shared)
        # The plugin's reports describe the invocation that last ran Axolotl.
        metrics = report.summarise(state, rows, y, time.time() - t0, train_seconds, resumed_step,
                            report.plugin_report(output_dir, training.MODEL_REPORT),
                            report.plugin_report(output_dir, training.TOKEN_REPORT))
        metrics["val_loss_first_cached"] = base_val is not None
        client.set_tag(run_id, "precision", metrics["precision"])
        copied = training.copy_adapter(resume if done else output_dir, resolve_path(tc.adapter_dir))
        files.write_json(METRICS, metrics)
        report.write_loss_csv(LOSS_CSV, rows)
        report.log_to_mlflow(client, run_id, cfg, metrics, rows, config_path)
        tracking.log_headline(client, parent, {"val_loss_final": metrics["val_loss_final"],
                                               "val_loss_first": metrics["val_loss_first"]})
        # The adapter (a few MB) in the run's artifacts and as a registered model version.
        client.log_artifacts(run_id, str(resolve_path(tc.adapter_dir)), artifact_path="adapter")
        tracking.register_version(client, f"qi-expert-{cfg.model.name}-adapter", run_id, "adapter",
                                  {"val_loss_final": metrics["val_loss_final"], "steps": metrics["steps"]})
        status = "FINISHED"
    except training.IncompleteRun as e:
        sys.exit(str(e))  # the run ends FAILED (below)
    except KeyboardInterrupt:
        status = "KILLED"  # Ctrl+C or SIGTERM: Axolotl is stopped with the stage; checkpoints stay for the rerun
        raise
    finally:
        client.set_terminated(run_id, status)
    print(f"train: {metrics['steps']} steps in {metrics['wall_time_s']:.0f} s; train loss "
          f"{metrics['train_loss_first']} -> {metrics['train_loss_final_mean5']} (mean of last 5), val loss "
          f"{metrics['val_loss_first']} -> {metrics['val_loss_final']}; {metrics['tokens_per_second']} tokens/s, "
          f"padding {metrics['padding_share']}; adapter -> {tc.adapter_dir} ({', '.join(copied)})")


if __name__ == "__main__":
    stage_entry(run)()
