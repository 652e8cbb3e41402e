"""Interruptions: a stage stopped by SIGTERM or Ctrl+C fails loudly, leaves no output that looks whole,
and a rerun ends with the outputs of an uninterrupted run (issue 19).

The stage runs for real as DVC runs it (`python stages/validate.py` in a checkout: a copy of this
one's code, config and sample corpus in a temporary folder).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stage_env

from qi_expert.core import files, lifetime, tracking
from qi_expert.core.config import compose_conf



@pytest.fixture(scope="module")
def checkout(make_checkout, run_stage, tmp_path_factory) -> Path:
    """This project's code, config and sample corpus, extracted once (validate reads data/extracted)."""
    root = make_checkout()
    done = run_stage(root, "extract", env=_mlflow(tmp_path_factory.mktemp("mlflow")))
    assert done.returncode == 0, done.stderr
    return root


def _mlflow(folder: Path) -> dict:
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}


def _interrupt(run_stage, root: Path, stage: str, sig: int, after: float, mlflow_dir: Path) -> subprocess.CompletedProcess:
    """Start the stage, send `sig` once it is `after` seconds into its work, wait for it to end."""
    proc = run_stage(root, stage, env=_mlflow(mlflow_dir), background=True)
    time.sleep(after)
    assert proc.poll() is None, "the stage ended before the signal: interrupt it earlier"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _outputs(root: Path) -> dict[str, bytes]:
    folder = root / "data/validated"
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}
    return files | {"metrics/validate.json": (root / "metrics/validate.json").read_bytes()}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.slow
def test_an_interrupted_stage_fails_and_its_rerun_equals_an_uninterrupted_run(run_stage, checkout, sig, tmp_path, left_running):
    shutil.rmtree(checkout / "data/validated", ignore_errors=True)
    (checkout / "metrics/validate.json").unlink(missing_ok=True)
    # Validate spends seconds in the TypeScript compiler before it writes anything.
    stopped = _interrupt(run_stage, checkout, "validate", sig, after=3.0, mlflow_dir=tmp_path)
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl+C (SIGINT)"
    assert stopped.returncode == 130, stopped.stderr
    assert f"validate: interrupted by {name}" in stopped.stderr and "dvc repro" in stopped.stderr
    assert not (checkout / "data/validated").exists() and not (checkout / "metrics/validate.json").exists()
    # The compiler process it had started is gone with it: nothing runs in this checkout any more.
    assert left_running(checkout) == []

    rerun = run_stage(checkout, "validate", env=_mlflow(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    first = _outputs(checkout)
    again = run_stage(checkout, "validate", env=_mlflow(tmp_path))
    assert again.returncode == 0 and _outputs(checkout) == first  # byte-identical to an uninterrupted run
    assert {"accepted.jsonl", "augmented.jsonl"} <= set(first) and not [n for n in first if n.endswith(".tmp")]


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "rows.jsonl"
    files.write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_jsonl(path, rows())
    assert path.read_text() == '{"a":1}\n' and [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_mlflow_run_of_an_interrupted_stage_ends_killed_and_of_an_error_failed():
    import mlflow

    cfg = compose_conf()
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run(cfg, "validate"):
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError):
        with tracking.stage_run(cfg, "format"):
            raise RuntimeError("disk full")
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    runs = mlflow.search_runs(experiment_names=[str(cfg.mlflow.experiment)], output_format="list",
                              filter_string="tags.stage != 'experiment'")
    status = {r.data.tags["stage"]: r.info.status for r in runs}
    assert status == {"validate": "KILLED", "format": "FAILED"}


@pytest.mark.slow
def test_an_unwritable_mlflow_store_fails_the_stage_with_one_clear_message(run_stage, checkout, tmp_path):
    if not (checkout / "data/validated/accepted.jsonl").is_file():
        assert run_stage(checkout, "validate", env=_mlflow(tmp_path)).returncode == 0
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{blocked}/mlflow.db"}
    done = subprocess.run([sys.executable, "stages/format.py"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert f"format: cannot record the run in the MLflow store sqlite:///{blocked}/mlflow.db" in done.stderr
    assert "Traceback" not in done.stderr


# --- killed outright, a full disk ----------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_at_a_random_point_leaves_no_partial_output_and_the_rerun_equals_an_uninterrupted_run(run_stage, checkout, tmp_path,
                                                                                                    left_running):
    """SIGKILL runs none of the stage's code: what must hold then is what the kernel and the file
    system guarantee. The compiler the stage started dies with it (lifetime.tied), every output
    file that exists is whole, and the rerun removes the dead writer's temporary files."""
    assert run_stage(checkout, "validate", env=_mlflow(tmp_path)).returncode == 0
    uninterrupted = _outputs(checkout)
    shutil.rmtree(checkout / "data/validated")
    (checkout / "metrics/validate.json").unlink()

    after = random.uniform(0.5, 6.0)  # validate takes ~10 s here: the compiler, then the writes
    stopped = _interrupt(run_stage, checkout, "validate", signal.SIGKILL, after=after, mlflow_dir=tmp_path)
    assert stopped.returncode == -signal.SIGKILL, f"killed after {after:.2f} s"
    assert left_running(checkout) == [], f"a child outlived the stage killed after {after:.2f} s"
    for name, data in _outputs_present(checkout).items():  # whatever exists is whole
        assert data == uninterrupted[name], f"{name} half-written (killed after {after:.2f} s)"

    assert run_stage(checkout, "validate", env=_mlflow(tmp_path)).returncode == 0
    assert _outputs(checkout) == uninterrupted, f"killed after {after:.2f} s"
    leftovers = [p.name for p in (checkout / "data/validated").iterdir() if p.name.endswith(".tmp")]
    leftovers += [p.name for p in (checkout / "metrics").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def _outputs_present(root: Path) -> dict[str, bytes]:
    folder, metrics = root / "data/validated", root / "metrics/validate.json"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith(".tmp")} if folder.is_dir() else {}
    return files | ({"metrics/validate.json": metrics.read_bytes()} if metrics.is_file() else {})


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs user and mount namespaces (unshare -rm) for a small tmpfs")
@pytest.mark.slow
def test_a_full_disk_fails_the_stage_with_one_line_and_leaves_nothing_half_written(run_stage, checkout, tmp_path):
    """data/validated on a 64 KiB tmpfs (in a private mount namespace): the first large output
    fills it. The stage exits 1 naming the file and the cause, without a traceback, leaves no
    temporary file and no metrics; once there is space the rerun equals an uninterrupted run."""
    assert run_stage(checkout, "validate", env=_mlflow(tmp_path)).returncode == 0
    uninterrupted = _outputs(checkout)
    shutil.rmtree(checkout / "data/validated")
    (checkout / "data/validated").mkdir()
    (checkout / "metrics/validate.json").unlink()
    # (bubblewrap cannot nest in this namespace: the variants' test runs and the corpus benchmark's
    # checks are off for this run, whose outputs are never compared.)
    script = ("mount -t tmpfs -o size=64k tmpfs data/validated && "
              f"{sys.executable} stages/validate.py augment.run_tests=false corpus_bench.enabled=false; rc=$?; "
              "ls -A data/validated; exit $rc")
    full = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=checkout, env=stage_env(checkout, **_mlflow(tmp_path)),
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 1, full.stderr[-2000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("validate: cannot write ") and "data/validated/" in last and "No space left on device" in last
    assert "Traceback" not in full.stderr
    left_in_tmpfs = full.stdout.split()
    assert not [n for n in left_in_tmpfs if n.endswith(".tmp")], left_in_tmpfs
    assert not (checkout / "metrics/validate.json").exists()

    assert run_stage(checkout, "validate", env=_mlflow(tmp_path)).returncode == 0
    assert _outputs(checkout) == uninterrupted


def test_a_run_left_open_by_a_killed_stage_is_closed_killed_by_the_next_run():
    """A stage killed outright leaves its MLflow run RUNNING; the next run of the stage on this host
    finds its process gone (host, pid and start time) and ends it KILLED. A live process's run
    and another stage's are left alone."""
    import mlflow

    cfg = compose_conf()
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    experiment = mlflow.set_experiment(str(cfg.mlflow.experiment))
    client = mlflow.MlflowClient()
    gone = subprocess.Popen(["sleep", "60"])
    dead_ident = lifetime.identity(gone.pid)
    gone.kill()
    gone.wait()
    assert lifetime.is_dead(dead_ident) and not lifetime.is_dead(lifetime.identity())
    dead = client.create_run(experiment.experiment_id, tags={"stage": "validate", tracking.PROCESS_TAG: dead_ident})
    alive = client.create_run(experiment.experiment_id, tags={"stage": "validate", tracking.PROCESS_TAG: lifetime.identity()})
    other = client.create_run(experiment.experiment_id, tags={"stage": "format", tracking.PROCESS_TAG: dead_ident})

    with tracking.stage_run(cfg, "validate"):
        pass
    status = [client.get_run(r.info.run_id).info.status for r in (dead, alive, other)]
    assert status == ["KILLED", "RUNNING", "RUNNING"]
    assert "died with the run open" in client.get_run(dead.info.run_id).data.tags["ended_by"]
