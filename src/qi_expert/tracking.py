"""MLflow tracking: one run per stage invocation, in the project's experiment.

Runs are tagged with the stage, the DVC experiment (DVC sets DVC_EXP_NAME inside
`dvc exp run`), the corpus and the base model, so the MLflow UI can group and compare them.
Where runs go (`mlflow`) and those tags come from the whole parameters when the stage's own do
not hold them (config.setting): no stage output depends on them, so dvc.yaml does not list them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Mapping

from omegaconf import DictConfig, OmegaConf

from qi_expert import lifetime
from qi_expert.config import ROOT, StageError, setting

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
        experiment = mlflow.set_experiment(str(setting(cfg, "mlflow.experiment")))
        close_dead_runs(mlflow.MlflowClient(uri), experiment.experiment_id, stage)
        active = mlflow.start_run(run_name=f"{stage}:{tags['dvc_experiment']}", tags=tags)
    except Exception as e:  # MLflow raises many kinds (sqlalchemy, OSError, MlflowException)
        raise StageError(f"cannot record the run in the MLflow store {uri} (mlflow.tracking_uri or "
                         f"MLFLOW_TRACKING_URI): {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}; DVC records "
                         "nothing for this stage until a rerun can log it") from e
    with active:
        try:
            if params:
                mlflow.log_params(flatten(params))
            yield mlflow
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")  # Ctrl+C or SIGTERM (config.stage_entry); an error ends FAILED
            raise


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
