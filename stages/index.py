"""Stage `index`: the pattern store the eval's +retrieval arms (and `qi-expert generate --retrieve`) read.

    python stages/index.py

Reads the formatted training rows (index.examples) and the corpus's @qi packages (their export
list from the TypeScript compiler, signatures and doc comments from tree-sitter). Writes
data/index/{store.sqlite,manifest.json} (SQLite FTS5, BM25) and metrics/index.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core import files, tracking
from qi_expert.core.config import resolve_path, stage_entry
from qi_expert.data import bench, dedup, retrieval
from qi_expert.typescript import typecheck

OUT = resolve_path("data/index")
METRICS = resolve_path("metrics/index.json")


def run(cfg):
    ic = cfg.index
    project = resolve_path(cfg.corpus.root)
    exports = typecheck.module_exports(project, str(cfg.corpus.tsconfig))
    api = retrieval.api_surface(project, exports)
    rows = retrieval.load_examples([resolve_path(p) for p in ic.examples])
    # format already dropped rows that copy a benchmark task; checked again so that nothing a
    # retrieval arm shows the model can be a task's answer, whatever produced the rows.
    is_copy = dedup.copy_detector(bench.contamination_sources(bench.load_tasks(resolve_path(cfg.eval.benchmark))),
                                  float(cfg.format.decontaminate_threshold), int(cfg.validate.shingle_size))
    examples = [r for r in rows if not is_copy(r["output"])]
    manifest = retrieval.build(OUT, api, examples, source={"corpus_name": str(cfg.corpus.name),
                                                           "corpus_root": str(cfg.corpus.root)})
    metrics = {"api_entries": len(api), "exported_names": sum(len(v) for v in exports.values()),
               "examples": len(examples), "decontaminated_examples": len(rows) - len(examples),
               "by_module": {m: sum(e["module"] == m for e in api) for m in exports}}
    files.write_json(METRICS, metrics)
    print(f"index: {len(api)} @qi API entries ({', '.join(f'{m} {n}' for m, n in metrics['by_module'].items())}), "
          f"{len(examples)} examples ({metrics['decontaminated_examples']} dropped as benchmark copies) "
          f"-> {OUT / retrieval.STORE}")
    with tracking.stage_run(cfg, "index", {"index": ic, "corpus": cfg.corpus}) as mlflow:
        tracking.log_counts(mlflow, metrics)
        mlflow.set_tag("store_sha256", manifest["store_sha256"])


if __name__ == "__main__":
    stage_entry(run)()
