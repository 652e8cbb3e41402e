"""MLflow against a tracking server: stage runs nested under one run per DVC experiment, the
experiment opening on its runs view, dataset inputs and registered model versions."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from qi_expert.core import tracking
from qi_expert.core.config import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with a database backend and an artifact root, on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--backend-store-uri", f"sqlite:///{folder}/store.db",
                             "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=(log := open(folder / "server.log", "w")))
    uri = f"http://127.0.0.1:{port}"
    # Its first start creates the store's tables: a minute and more on a loaded 2-core machine.
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_a_stage_against_a_tracking_server_nests_under_its_experiment_run(server, tmp_path):
    import mlflow

    # A project folder of its own (the stage writes its outputs where it runs, never in this checkout).
    project = tmp_path / "proj"
    shutil.copytree(ROOT / "conf", project / "conf")
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    (project / "dvc.yaml").write_text("stages: {}\n")
    env = dict(os.environ, MLFLOW_TRACKING_URI=server, DVC_EXP_NAME="lora-r-32")
    for _ in range(2):  # a rerun reuses the experiment's parent run
        proc = subprocess.run([sys.executable, str(ROOT / "stages/extract.py"),
                               f"corpus.root={ROOT / 'data/sample/typescript'}"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(server)
    experiment = client.get_experiment_by_name("qi-expert")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs view
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'experiment'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["dvc_experiment"] == "lora-r-32" and parent.data.tags["model.name"] == "smollm2-135m"
    assert parent.data.tags["lora_r"] == "16" and parent.data.tags["corpus.name"] == "sample"
    children = client.search_runs([experiment.experiment_id], "tags.stage = 'extract'")
    assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    # The parent spans its stage runs: from before the first starts to when the last ends.
    assert parent.info.start_time <= min(c.info.start_time for c in children)
    assert parent.info.end_time >= max(c.info.end_time for c in children)
    assert (project / "metrics/extract.json").is_file()

    # Headline figures on the parent, dataset inputs and registered versions (as train, eval and gguf log them).
    data = tmp_path / "train.chat.jsonl"
    data.write_text('{"messages": []}\n')
    run_id = children[0].info.run_id
    tracking.log_headline(client, parent.info.run_id, {"tuned.pass@1": 0.25, "note": "not a number"})
    assert client.get_run(parent.info.run_id).data.metrics == {"tuned.pass_at_1": 0.25}
    tracking.log_datasets(client, run_id, {"training": data})
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.tags[0].value) for i in inputs] == [("train.chat.jsonl", "training")]
    client.log_artifact(run_id, str(data), artifact_path="adapter")
    assert tracking.register_version(client, "qi-expert-test-adapter", run_id, "adapter", {"val_loss": 1.2}) == "1"
    assert tracking.register_version(client, "qi-expert-test-adapter", run_id, "adapter", {"val_loss": 1.1},
                                     local_path=data) == "2"
    version = client.get_model_version("qi-expert-test-adapter", "2")
    assert version.tags == {"val_loss": "1.1", "path": str(data)} and version.run_id == run_id
    assert version.source == f"runs:/{run_id}/adapter"
