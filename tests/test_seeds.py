"""scripts/seeds.py: the seed-to-seed spread of the headline figures, from `dvc exp show --json`."""

import importlib.util
import json

from qi_expert.core.config import ROOT

spec = importlib.util.spec_from_file_location("seeds", ROOT / "scripts/seeds.py")
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)


def _eval(compile_rate: float, loss: float) -> dict:
    arm = {"compile_rate": compile_rate, "compliance_rate": 0.0, "pass@1": 0.0, "completions": 54,
           "graded": {"reference_loss": loss}}
    delta = {"compile_rate": -0.5}  # tuned minus base: not an arm
    # As `dvc exp show` gives them: numbers only (no `models` list).
    return {"benchmark_tasks": 54, "tuned": arm, "delta": delta, "corpus_benchmark": {"benchmark_tasks": 12, "tuned": arm}}


def _entry(name: str, seed: int, lora_r: int, compile_rate: float, loss: float, arms: list) -> dict:
    return {"rev": name, "name": name, "data": {
        "rev": name,
        "params": {"params.yaml": {"data": {"seed": seed, "lora_r": lora_r, "eval": {"arms": arms, "limit": None}}}},
        "metrics": {"metrics/eval.json": {"data": _eval(compile_rate, loss)}}}}


def test_runs_that_differ_only_by_seed_are_grouped_and_summarised(tmp_path, capsys):
    baseline = _entry("workspace", 42, 16, 0.10, 1.0, ["base", "tuned", "tuned+verify"])
    done = {"executor": {"state": "success"}}
    baseline["experiments"] = [{**done, "revs": [_entry("exp-a", 1, 16, 0.20, 1.2, ["tuned"])]},
                               {**done, "revs": [_entry("exp-b", 2, 16, 0.30, 1.4, ["tuned"])]},
                               {**done, "revs": [_entry("exp-c", 3, 32, 0.90, 0.1, ["tuned"])]},  # another setting
                               # still running: its figures are its baseline's
                               {"executor": {"state": "running"}, "revs": [_entry("exp-d", 4, 16, 0.10, 1.0, ["tuned"])]}]
    commit = _entry("main", 42, 16, 0.10, 1.0, ["base", "tuned", "tuned+verify"])  # the workspace's own commit
    found = seeds.groups(seeds.runs([baseline, commit]))
    assert len(found) == 1 and [r["params"]["seed"] for r in found[0]] == [1, 2, 42]
    rows = {(r["benchmark"], r["figure"]): r for r in seeds.spread(found[0])}
    compile_ = rows[("hand-written", "compile_rate")]
    assert round(compile_["mean"], 6) == 0.2 and round(compile_["sd"], 6) == 0.1 and compile_["seeds"] == 3
    assert (compile_["min"], compile_["max"]) == (0.1, 0.3) and compile_["tasks"] == 54
    low, high = compile_["task_ci95"]  # Wilson at p=0.2, n=54: about [0.118, 0.320]
    assert 0.11 < low < 0.13 and 0.31 < high < 0.33
    assert rows[("corpus", "compile_rate")]["tasks"] == 12 and rows[("corpus", "reference_loss")]["task_ci95"] is None
    source = tmp_path / "show.json"
    source.write_text(json.dumps([baseline, commit]))
    assert seeds.main(["--from", str(source)]) == 0
    assert "seeds 1, 2, 42" in capsys.readouterr().out


def test_no_seed_group_says_how_to_make_one(tmp_path, capsys):
    source = tmp_path / "show.json"
    source.write_text(json.dumps([_entry("workspace", 42, 16, 0.1, 1.0, ["tuned"])]))
    assert seeds.main(["--from", str(source)]) == 0
    assert "dvc exp run --queue -S seed=1,2,3" in capsys.readouterr().out
