"""Stage `format`: instruction rows in three formats, split by source file.

    python stages/format.py

Writes data/formatted/{train,val}.{instruct.jsonl,alpaca.json,chat.jsonl}, the corpus benchmark's
held-out tasks (corpus_bench.tasks: data/corpus-bench/tasks.yaml) and metrics/format.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

import json
from collections import Counter

import yaml

from qi_expert.core import files, tracking
from qi_expert.core.config import resolve_path, stage_entry
from qi_expert.data import bench, corpus_tasks, formatting

VALIDATED = resolve_path("data/validated")
OUT = resolve_path("data/formatted")
METRICS = resolve_path("metrics/format.json")


def run(cfg):
    fc = cfg.format
    accepted = list(files.read_jsonl(VALIDATED / "accepted.jsonl"))
    augmented = list(files.read_jsonl(VALIDATED / "augmented.jsonl"))  # [] with augment off
    rows = formatting.rows_from_records(accepted)
    rows += formatting.rows_from_pairs(files.read_jsonl(VALIDATED / "pairs.jsonl"))
    rows += formatting.rows_from_records(augmented)
    if cfg.feedback.include and (VALIDATED / "feedback.jsonl").is_file():  # served answers, judged (feedback.py)
        rows += formatting.rows_from_feedback(files.read_jsonl(VALIDATED / "feedback.jsonl"))

    # The second benchmark: a seeded share of the corpus's tested units (by file) held out, with
    # every row derived from them (the unit's record, its test cases, its rewritten variants).
    candidates = list(files.read_jsonl(VALIDATED / "corpus_tasks.jsonl"))
    held = corpus_tasks.hold_out(candidates, float(cfg.corpus_bench.holdout_fraction), int(cfg.seed))
    left_out = corpus_tasks.derived_ids(held, accepted + augmented)
    derived = [r for r in rows if r["id"] in left_out]
    rows = [r for r in rows if r["id"] not in left_out]
    files.write_text(resolve_path(cfg.corpus_bench.tasks),
                     yaml.safe_dump([corpus_tasks.benchmark_task(t) for t in held], sort_keys=False, allow_unicode=True))

    # Decontamination: no training row may copy a benchmark task's reference or test (either benchmark).
    tasks = bench.load_tasks(resolve_path(fc.benchmark))
    rows, dropped = formatting.decontaminate(rows, bench.contamination_sources(tasks),
                                             fc.decontaminate_threshold, cfg.validate.shingle_size)
    rows, dropped_corpus = formatting.decontaminate(rows, bench.contamination_sources(held),
                                                    fc.decontaminate_threshold, cfg.validate.shingle_size)
    train, val = formatting.split_by_file(rows, fc.val_fraction, cfg.seed)
    for name, split in (("train", train), ("val", val)):
        files.write_jsonl(OUT / f"{name}.instruct.jsonl",
                       ({k: r[k] for k in ("instruction", "input", "output")} for r in split))
        files.write_text(OUT / f"{name}.alpaca.json",
                      json.dumps([formatting.alpaca(r) for r in split], ensure_ascii=False, indent=1) + "\n")
        files.write_jsonl(OUT / f"{name}.chat.jsonl", (formatting.chat(r, fc.system_prompt) for r in split))
    instructions = [r["instruction"] for r in rows]
    by_origin = lambda split: dict(sorted(Counter(r["origin"] for r in split).items()))
    metrics = {
        "rows": len(rows),
        "train_rows": len(train),
        "val_rows": len(val),
        "train_files": len({r["source_file"] for r in train}),
        "val_files": len({r["source_file"] for r in val}),
        "pair_rows": sum(1 for r in rows if r["instruction"].startswith("Rewrite this code")),
        "unique_instruction_share": round(len(set(instructions)) / len(instructions), 4) if instructions else 0.0,
        "train_rows_by_origin": by_origin(train),
        "val_rows_by_origin": by_origin(val),
        # Variants of validation-side records: in neither split (they would leak it into training).
        "variants_left_out_with_val_files": len(rows) - len(train) - len(val),
        # What the eval's signatures need: answers that import from @qi/base, and that import QiError.
        "train_rows_importing_qi_base": sum(1 for r in train if formatting.imports_from(r["output"], "@qi/base")),
        "train_rows_importing_qierror": sum(1 for r in train if "QiError" in formatting.imports_from(r["output"], "@qi/base")),
        "decontaminated_rows": len(dropped),
        "decontaminated_by_origin": by_origin(dropped),
        "benchmark_tasks": len(tasks),
        # The corpus benchmark (corpus_bench): candidates from validate, the held-out ones, and the
        # rows kept out of training for them (derived from a held-out unit, or a near copy of one).
        "corpus_bench": {
            "candidates": len(candidates),
            "candidate_files": len({t["source_file"] for t in candidates}),
            "tasks": len(held),
            "files": len({t["source_file"] for t in held}),
            "derived_rows_left_out": len(derived),
            "derived_rows_left_out_by_origin": by_origin(derived),
            "decontaminated_rows": len(dropped_corpus),
            "decontaminated_by_origin": by_origin(dropped_corpus),
        },
    }
    files.write_json(METRICS, metrics)
    print(f"format: {metrics['train_rows']} train / {metrics['val_rows']} val rows, "
          f"{metrics['unique_instruction_share']:.0%} unique instructions, {len(dropped)} dropped as benchmark matches")
    with tracking.stage_run(cfg, "format", {"format": fc, "seed": cfg.seed, "feedback.include": cfg.feedback.include,
                                            "corpus_bench.holdout_fraction": cfg.corpus_bench.holdout_fraction}) as mlflow:
        tracking.log_counts(mlflow, metrics)


if __name__ == "__main__":
    stage_entry(run)()
