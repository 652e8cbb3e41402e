"""Stage `extract`: cut @qi code units out of the corpus with tree-sitter.

    python stages/extract.py [corpus.root=/path/to/qi-v2-qicore/typescript]

Writes data/extracted/records.jsonl and metrics/extract.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

import time

from qi_expert.core import files, tracking
from qi_expert.core.config import resolve_path, stage_entry
from qi_expert.data import extract
from qi_expert.data.corpus import CorpusError

RECORDS = resolve_path("data/extracted/records.jsonl")
METRICS = resolve_path("metrics/extract.json")


def run(cfg):
    root = resolve_path(cfg.corpus.root)
    started = time.perf_counter()
    try:
        records, report = extract.extract_corpus(root, cfg.extract, str(cfg.corpus.tsconfig))
    except CorpusError as e:
        sys.exit(f"extract: {e}")
    seconds = time.perf_counter() - started
    files.write_jsonl(RECORDS, records)
    metrics = extract.summarize(records, report)
    files.write_json(METRICS, metrics)
    for problem in report.parse_errors + report.blocks_parse_error:
        print(f"extract: skipped, tree-sitter cannot parse cleanly: {problem}", file=sys.stderr)
    for path, why in report.unclassified.items():
        print(f"extract: no kind for {path}: {why}", file=sys.stderr)
    for path in report.not_utf8:
        print(f"extract: skipped, not UTF-8: {path}", file=sys.stderr)
    print(f"extract: @qi packages from {report.layout.found_by}: "
          + ", ".join(f"{k} ({v})" for k, v in report.layout.packages.items()) if report.layout.packages else
          f"extract: @qi packages: {report.layout.found_by}: {', '.join(report.layout.package_dirs)}")
    print(f"extract: {len(records)} records from {sum(report.files_by_kind.values())} files "
          f"under {root} in {seconds:.2f}s")
    with tracking.stage_run(cfg, "extract", {"corpus": cfg.corpus, "extract": cfg.extract}) as mlflow:
        tracking.log_counts(mlflow, {**metrics, "seconds": seconds})


if __name__ == "__main__":
    stage_entry(run)()
