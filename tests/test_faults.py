"""Interruptions: a stage stopped by SIGTERM or Ctrl+C fails loudly, leaves no output that looks whole,
and a rerun ends with the outputs of an uninterrupted run (issue 19).

The stage runs for real as DVC runs it (`python stages/validate.py` in a checkout: a copy of this
one's code, config and sample corpus in a temporary folder).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qi_expert import io, tracking
from qi_expert.config import ROOT, compose_conf


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """This project's code, config and sample corpus, extracted once (validate reads data/extracted)."""
    root = tmp_path_factory.mktemp("checkout")
    for rel in ("src", "stages", "conf", "data/sample", "data/qi-bench"):
        shutil.copytree(ROOT / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    for rel in ("dvc.yaml", "params.yaml", "package.json"):
        shutil.copy(ROOT / rel, root / rel)
    (root / "node_modules").symlink_to(ROOT / "node_modules")  # the pinned TypeScript
    done = _stage(root, "extract", tmp_path_factory.mktemp("mlflow"))
    assert done.returncode == 0, done.stderr
    return root


def _env(mlflow_dir: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_dir}/mlflow.db"}


def _stage(root: Path, stage: str, mlflow_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=root, env=_env(mlflow_dir),
                          capture_output=True, text=True, timeout=600)


def _interrupt(root: Path, stage: str, sig: int, after: float, mlflow_dir: Path) -> subprocess.CompletedProcess:
    """Start the stage, send `sig` once it is `after` seconds into its work, wait for it to end."""
    proc = subprocess.Popen([sys.executable, f"stages/{stage}.py"], cwd=root, env=_env(mlflow_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    assert proc.poll() is None, "the stage ended before the signal: interrupt it earlier"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _running_in(root: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == root.resolve():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def _outputs(root: Path) -> dict[str, bytes]:
    folder = root / "data/validated"
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}
    return files | {"metrics/validate.json": (root / "metrics/validate.json").read_bytes()}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_stage_fails_and_its_rerun_equals_an_uninterrupted_run(checkout, sig, tmp_path):
    shutil.rmtree(checkout / "data/validated", ignore_errors=True)
    (checkout / "metrics/validate.json").unlink(missing_ok=True)
    # Validate spends seconds in the TypeScript compiler before it writes anything.
    stopped = _interrupt(checkout, "validate", sig, after=3.0, mlflow_dir=tmp_path)
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl+C (SIGINT)"
    assert stopped.returncode == 130, stopped.stderr
    assert f"validate: interrupted by {name}" in stopped.stderr and "dvc repro" in stopped.stderr
    assert not (checkout / "data/validated").exists() and not (checkout / "metrics/validate.json").exists()
    # The compiler process it had started is gone with it: nothing runs in this checkout any more.
    assert _running_in(checkout) == []

    rerun = _stage(checkout, "validate", tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    first = _outputs(checkout)
    again = _stage(checkout, "validate", tmp_path)
    assert again.returncode == 0 and _outputs(checkout) == first  # byte-identical to an uninterrupted run
    assert {"accepted.jsonl", "augmented.jsonl"} <= set(first) and not [n for n in first if n.endswith(".tmp")]


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "rows.jsonl"
    io.write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.write_jsonl(path, rows())
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
    runs = mlflow.search_runs(experiment_names=[str(cfg.mlflow.experiment)], output_format="list")
    status = {r.data.tags["stage"]: r.info.status for r in runs}
    assert status == {"validate": "KILLED", "format": "FAILED"}


def test_an_unwritable_mlflow_store_fails_the_stage_with_one_clear_message(checkout, tmp_path):
    if not (checkout / "data/validated/accepted.jsonl").is_file():
        assert _stage(checkout, "validate", tmp_path).returncode == 0
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{blocked}/mlflow.db"}
    done = subprocess.run([sys.executable, "stages/format.py"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert f"format: cannot record the run in the MLflow store sqlite:///{blocked}/mlflow.db" in done.stderr
    assert "Traceback" not in done.stderr
