"""MLflow tracking: one run per stage invocation, in the project's experiment, nested under one run
per DVC experiment.

Runs are tagged with the stage, the DVC experiment (DVC sets DVC_EXP_NAME inside
`dvc exp run`), the corpus and the base model, so the MLflow UI can group and compare them. The
parent run (stage "experiment", one per DVC experiment name; `workspace` for `dvc repro`) carries
the base model, corpus, adapter and hyperparameters as tags and the eval's headline figures as
metrics, so the runs view compares experiments side by side; the stage runs hang under it.
Where runs go (`mlflow`) and those tags come from the whole parameters when the stage's own do
not hold them (config.setting): no stage output depends on them, so dvc.yaml does not list them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Mapping

from omegaconf import DictConfig, OmegaConf

from qi_expert.core import lifetime
from qi_expert.core.config import ROOT, StageError, setting

# The process that opened a run (lifetime.identity): a run whose process died RUNNING is closed
# as KILLED by the next run of its stage.
PROCESS_TAG = "process"


def tracking_uri(cfg: DictConfig) -> str:
    """MLFLOW_TRACKING_URI wins; a relative sqlite path is taken from the repository root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or str(setting(cfg, "mlflow.tracking_uri"))
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(ROOT / uri[len(prefix):])
    return uri


def run_tags(cfg: DictConfig, stage: str) -> dict[str, str]:
    return {
        "stage": stage,
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
        "corpus": str(setting(cfg, "corpus.name")),
        "base_model": str(setting(cfg, "model.name")),
        PROCESS_TAG: lifetime.identity(),
    }


EXPERIMENT_STAGE = "experiment"
# What tells experiments apart, as tags of the parent run (tags, not params: a `dvc repro` in the
# workspace reuses its parent run, and MLflow params cannot change once logged).
EXPERIMENT_TAGS = ("model.name", "corpus.name", "adapter", "lora_r", "lora_alpha", "lora_dropout", "learning_rate",
                   "max_steps", "micro_batch_size", "gradient_accumulation_steps", "sequence_len", "seed",
                   "launcher.name")


def open_experiment(client, name: str) -> str:
    """The MLflow experiment's id (created if new), set to open on the runs view: MLflow 3 opens
    experiments of unknown kind on its GenAI overview, empty for this project."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            experiment_id = client.create_experiment(name)
        except MlflowException:  # another queue worker created it first (`dvc queue start -j N`)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    experiment_id = found.experiment_id if found else experiment_id
    if not found or found.tags.get("mlflow.experimentKind") != "custom_model_development":
        client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
    return experiment_id


def experiment_run(client, experiment_id: str, cfg: DictConfig) -> str:
    """The parent run of this DVC experiment: found by its name or created; tags refreshed."""
    name = os.environ.get("DVC_EXP_NAME", "workspace")
    tags = {"stage": EXPERIMENT_STAGE, "dvc_experiment": name}
    for key in EXPERIMENT_TAGS:
        try:
            value = setting(cfg, key)
        except FileNotFoundError:  # no params.yaml to fall back on (a stage run by hand on a bare config)
            value = None
        if value is not None:
            tags[key] = str(value)
    found = client.search_runs([experiment_id], filter_string=f"tags.stage = '{EXPERIMENT_STAGE}' and "
                                                              f"tags.dvc_experiment = '{name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        for k, v in tags.items():
            if found[0].data.tags.get(k) != v:
                client.set_tag(run_id, k, v)
        return run_id
    run_id = client.create_run(experiment_id, run_name=f"experiment:{name}", tags=tags).info.run_id
    client.set_terminated(run_id, "FINISHED")  # a heading for its stage runs: nothing runs in it
    return run_id


def log_headline(client, parent_run_id: str, figures: Mapping[str, float]) -> None:
    """The figures an experiment is compared by, on its parent run (eval's per arm, gguf's, ...)."""
    for key, value in figures.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            client.log_metric(parent_run_id, safe_name(key), float(value))


def log_headline_active(mlflow, figures: Mapping[str, float]) -> None:
    """log_headline on the parent run of the active stage run."""
    parent = mlflow.active_run().data.tags.get("mlflow.parentRunId")
    if parent:
        log_headline(mlflow.MlflowClient(), parent, figures)


def log_datasets(client, run_id: str, files: Mapping[str, "os.PathLike"]) -> None:
    """Data files as MLflow dataset inputs ({context: path}): name, content digest (the sha256 DVC's
    own md5 would also pin) and path, so the runs view shows what each run read."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from qi_expert.core.files import file_sha256

    inputs = []
    for context, path in files.items():
        digest = file_sha256(path)[:16]
        inputs.append(DatasetInput(Dataset(name=os.path.basename(path), digest=digest, source_type="local",
                                           source=str(path)),
                                   tags=[InputTag("mlflow.data.context", context)]))
    client.log_inputs(run_id, datasets=inputs)


def register_version(client, name: str, run_id: str, artifact_path: str, figures: Mapping[str, object],
                     local_path: "os.PathLike | None" = None) -> str:
    """A version of registered model `name` whose source is what run `run_id` logged under
    `artifact_path` (a tracking server accepts no local path), tagged with `figures` and, for a
    file too large to copy into the artifact store (a GGUF), the path where it lies."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Written by qi-expert's pipeline (dvc repro)")
    tags = {safe_name(k): str(v) for k, v in figures.items()}
    if local_path is not None:
        tags["path"] = os.path.abspath(local_path)
    version = client.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags=tags)
    return version.version


def close_dead_runs(client, experiment_id: str, stage: str) -> list[str]:
    """End as KILLED the runs of `stage` left RUNNING by a process that no longer exists.

    A stage killed outright (SIGKILL, out of memory) runs no code of its own, so its run stays
    RUNNING; the next run of the stage on the same host closes it. Returns the closed run ids.
    """
    closed = []
    for run in client.search_runs([experiment_id], filter_string=f"tags.stage = '{stage}' and attributes.status = 'RUNNING'"):
        ident = run.data.tags.get(PROCESS_TAG, "")
        if lifetime.is_dead(ident):
            client.set_tag(run.info.run_id, "ended_by", f"process {ident} died with the run open; closed by the next run")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def flatten(cfg: DictConfig | Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} with MLflow's 6000-character value limit respected."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


@contextmanager
def stage_run(cfg: DictConfig, stage: str, params: Mapping | None = None) -> Iterator[object]:
    """Start an MLflow run for `stage`; yields the mlflow module for logging inside it."""
    import mlflow  # imported late: it takes a second or two and only stages need it

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    tags = run_tags(cfg, stage)
    try:
        client = mlflow.MlflowClient(uri)
        experiment_id = open_experiment(client, str(setting(cfg, "mlflow.experiment")))
        mlflow.set_experiment(experiment_id=experiment_id)
        close_dead_runs(client, experiment_id, stage)
        parent = experiment_run(client, experiment_id, cfg)
        active = mlflow.start_run(run_name=f"{stage}:{tags['dvc_experiment']}",
                                  tags={**tags, "mlflow.parentRunId": parent})
    except Exception as e:  # MLflow raises many kinds (sqlalchemy, OSError, MlflowException)
        raise StageError(f"cannot record the run in the MLflow store {uri} (mlflow.tracking_uri or "
                         f"MLFLOW_TRACKING_URI): {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}; DVC records "
                         "nothing for this stage until a rerun can log it") from e
    try:
        with active:
            try:
                if params:
                    mlflow.log_params(flatten(params))
                yield mlflow
            except KeyboardInterrupt:
                mlflow.end_run("KILLED")  # Ctrl+C or SIGTERM (config.stage_entry); an error ends FAILED
                raise
    finally:
        span_to_now(client, parent)  # after the stage's run has ended


def span_to_now(client, parent_run_id: str) -> None:
    """The parent run ends when its latest stage run ends, so that it spans its stages in the UI
    (it starts with the first). A heading only: FINISHED, whatever its stages did."""
    import time

    try:
        client.set_terminated(parent_run_id, "FINISHED", end_time=int(time.time() * 1000))
    except Exception:  # noqa: BLE001 (the stage's own run and outputs matter more than the heading's time)
        pass


def safe_name(name: str) -> str:
    """A metric or tag key MLflow accepts: "@" -> "_at_", "+" -> "_plus_", spaces -> "_"."""
    return name.replace(" ", "_").replace("@", "_at_").replace("+", "_plus_")


def log_counts(mlflow, metrics: Mapping, prefix: str = "") -> None:
    """Log every number in a nested metrics dict as `prefix.a.b` ("@" -> "_at_", "+" -> "_plus_": MLflow refuses them in names)."""
    flat: dict[str, float] = {}

    def walk(obj: Mapping, path: str) -> None:
        for k, v in obj.items():
            name = safe_name(f"{path}{k}")
            if isinstance(v, Mapping):
                walk(v, name + ".")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[name] = float(v)

    walk(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat)
