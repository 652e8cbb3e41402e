"""Parallel sweeps: `dvc exp run --queue` with two queue workers (`dvc queue start -j 2`), each
experiment with its own outputs and its own MLflow runs (issue 15). A short sweep of the extract
stage keeps it fast; the mechanism is the one a training sweep uses."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time

import pytest

from qi_expert.core.config import ROOT

DVC = str(ROOT / ".venv" / "bin" / "dvc")


@pytest.mark.slow
def test_a_sweep_on_two_queue_workers_gives_each_experiment_its_outputs_and_runs(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    # The project's environment, as make setup leaves it (set-up is not what this test is about).
    (repo / ".venv").symlink_to(ROOT / ".venv")
    (repo / "node_modules").symlink_to(ROOT / "node_modules")
    env = dict(os.environ, PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
               GIT_AUTHOR_NAME="qi", GIT_AUTHOR_EMAIL="qi@example.org",
               GIT_COMMITTER_NAME="qi", GIT_COMMITTER_EMAIL="qi@example.org")

    def dvc(*args: str, timeout: float = 300) -> str:
        proc = subprocess.run([DVC, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-4000:])
        return proc.stdout

    # The store exists, as after the project's first `make repro` (two processes creating a new
    # sqlite file at once race in MLflow's own schema migration: a tracking server has no such race).
    import mlflow

    mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()
    try:
        for n in (2, 6):
            dvc("exp", "run", "--queue", "-n", f"min-lines-{n}", "-S", f"extract.min_lines={n}", "extract")
        dvc("queue", "start", "-j", "2")
        deadline = time.time() + 600
        while True:
            status = dvc("queue", "status")
            if "Queued" not in status and "Running" not in status:
                break
            assert time.time() < deadline, status
            time.sleep(3)
        assert status.count("Success") == 2, status
    finally:
        subprocess.run([DVC, "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=120)

    table = list(csv.DictReader(io.StringIO(dvc("exp", "show", "--csv", "--no-pager"))))
    column = next(k for k in table[0] if k in ("records", "metrics/extract.json:records"))
    records = {row["Experiment"]: int(row[column]) for row in table if row["Experiment"].startswith("min-lines-")}
    assert set(records) == {"min-lines-2", "min-lines-6"} and records["min-lines-2"] > records["min-lines-6"]

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("qi-expert")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'extract'")
    parents = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id], "tags.stage = 'experiment'")}
    by_exp = {r.data.tags["dvc_experiment"]: r for r in runs}
    assert set(by_exp) == {"min-lines-2", "min-lines-6"}
    for name, run in by_exp.items():
        parent = parents[run.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["dvc_experiment"] == name and run.info.status == "FINISHED"
