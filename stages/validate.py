"""Stage `validate`: type-check records against the corpus's @qi packages, reject
anti-patterns and duplicates, pair counter-examples with their corrections.

    python stages/validate.py

Writes data/validated/{accepted,rejected,pairs}.jsonl and metrics/validate.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert

import time

from qi_expert import io, tracking, validate
from qi_expert.config import resolve_path, stage_entry
from qi_expert.typecheck import TypeCheckError

RECORDS = resolve_path("data/extracted/records.jsonl")
OUT = resolve_path("data/validated")
METRICS = resolve_path("metrics/validate.json")


def run(cfg):
    records = list(io.read_jsonl(RECORDS))
    started = time.perf_counter()
    try:
        accepted, rejected, pairs, metrics = validate.validate(
            records, resolve_path(cfg.corpus.root), cfg.corpus.tsconfig, cfg.validate)
    except TypeCheckError as e:
        sys.exit(f"validate: {e}")
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    io.write_jsonl(OUT / "accepted.jsonl", accepted)
    io.write_jsonl(OUT / "rejected.jsonl", rejected)
    io.write_jsonl(OUT / "pairs.jsonl", pairs)
    io.write_json(METRICS, {k: v for k, v in metrics.items() if k != "seconds"})
    print(f"validate: {len(accepted)} accepted, {len(rejected)} rejected "
          f"({metrics['rejected_by_reason']}), compile rate {metrics['compile_rate']:.1%}, "
          f"{len(pairs)} counter-example pairs, {metrics['seconds']}s")
    with tracking.stage_run(cfg, "validate", {"validate": cfg.validate}) as mlflow:
        tracking.log_counts(mlflow, metrics)


if __name__ == "__main__":
    stage_entry(run)()
