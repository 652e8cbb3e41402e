"""The data half of the pipeline through DVC, on the sample corpus, in a throwaway copy."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import params_unread, stage_env

from qi_expert.core.config import ROOT
from qi_expert.core.node import modules as node_modules

pytestmark = pytest.mark.slow


def _project_files() -> list[str]:
    """What a clone would hold: tracked files plus new, not ignored ones."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dst = tmp_path_factory.mktemp("qi") / "repo"
    for rel in _project_files():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    for rel in ("data/extracted", "data/validated", "data/formatted"):
        shutil.rmtree(dst / rel, ignore_errors=True)
    (dst / "node_modules").symlink_to(node_modules())  # what `npm ci` installs in a clone
    env = stage_env(dst)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dst, check=True, env=env)
    return dst


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=stage_env(repo),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def reproduced(repo) -> str:
    """`dvc repro format` once in the fresh repository; its output. Each test below asks for it,
    so they hold in any order (or alone)."""
    return dvc(repo, "repro", "format")


def test_data_stages_through_dvc(repo, reproduced):
    out = reproduced
    for stage in ("extract", "validate", "format"):
        assert f"Running stage '{stage}'" in out
    formatted = repo / "data/formatted"
    assert (formatted / "train.chat.jsonl").stat().st_size > 0 and (formatted / "val.alpaca.json").stat().st_size > 0
    extract_metrics = json.loads((repo / "metrics/extract.json").read_text())
    validate_metrics = json.loads((repo / "metrics/validate.json").read_text())
    format_metrics = json.loads((repo / "metrics/format.json").read_text())
    assert extract_metrics["records"] > 100
    assert validate_metrics["compile_rate"] > 0.8
    assert format_metrics["train_rows"] > format_metrics["val_rows"] > 0
    assert format_metrics["unique_instruction_share"] > 0.9
    # Outputs are DVC outs: git ignores them.
    ignored = subprocess.run(["git", "check-ignore", "data/formatted", "data/extracted"], cwd=repo,
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["data/formatted", "data/extracted"]
    for stage in ("extract", "validate", "format"):  # every param dvc.yaml lists for them, read
        assert params_unread(repo, stage) == [], stage


def test_index_stage_through_dvc_builds_the_store_and_reads_its_params(repo, reproduced):
    out = dvc(repo, "repro", "index")
    assert "Running stage 'index'" in out and (repo / "data/index/store.sqlite").stat().st_size > 0
    assert json.loads((repo / "metrics/index.json").read_text())["api_entries"] > 20
    assert params_unread(repo, "index") == []


def test_data_stages_are_deterministic(repo, reproduced):
    before = {p.name: p.read_bytes() for p in sorted((repo / "data/formatted").iterdir())}
    records = (repo / "data/extracted/records.jsonl").read_bytes()
    dvc(repo, "repro", "--force", "format", "--single-item")
    dvc(repo, "repro", "--force", "extract", "--single-item")
    assert (repo / "data/extracted/records.jsonl").read_bytes() == records
    assert {p.name: p.read_bytes() for p in sorted((repo / "data/formatted").iterdir())} == before


def test_noop_repro_and_param_change_reruns_only_what_follows(repo, reproduced):
    out = dvc(repo, "repro", "format")
    assert "Running stage" not in out
    # `dvc exp run -S` composes conf/ with Hydra into params.yaml, then runs what changed.
    out = dvc(repo, "exp", "run", "format", "-S", "format.val_fraction=0.3")
    assert "Running stage 'format'" in out
    assert "Running stage 'extract'" not in out and "Running stage 'validate'" not in out
    assert "val_fraction: 0.3" in (repo / "params.yaml").read_text()


def test_no_held_out_corpus_unit_reaches_the_training_rows(repo, reproduced):
    """The corpus benchmark's held-out units: neither the unit, nor a near copy of it by validate's own
    duplicate measure, nor its test cases, in any training or validation row."""
    import yaml

    from qi_expert.core.config import compose_conf
    from qi_expert.data import dedup

    tasks = yaml.safe_load((repo / "data/corpus-bench/tasks.yaml").read_text())
    metrics = json.loads((repo / "metrics/format.json").read_text())["corpus_bench"]
    assert len(tasks) == metrics["tasks"] >= 5 and metrics["derived_rows_left_out"] >= len(tasks)
    vc = compose_conf().validate
    near_copy = dedup.copy_detector([t["reference"] for t in tasks], vc.near_duplicate_threshold, vc.shingle_size)
    outputs = [json.loads(line)["output"] for split in ("train", "val")
               for line in (repo / f"data/formatted/{split}.instruct.jsonl").read_text().splitlines()]
    assert [o for o in outputs if near_copy(o)] == []
    # The check can fail: the held-out units' own validated records are near copies.
    held = {t["source_file"] + ":" + t["entry"] for t in tasks}
    own = [r["module"] for r in map(json.loads, (repo / "data/validated/accepted.jsonl").read_text().splitlines())
           if f"{r['source_file']}:{r.get('name')}" in held and r["unit"] != "test_case"]
    assert own and all(near_copy(m) for m in own)
    tests = {i for t in tasks for i in t["test_ids"]}
    test_modules = [r["module"].strip() + "\n" for r in map(json.loads, (repo / "data/validated/accepted.jsonl").read_text().splitlines())
                    if r["id"] in tests]
    assert test_modules and not set(test_modules) & set(outputs)
