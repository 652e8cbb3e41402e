"""Which retrieval serves the +retrieval arms: BM25 (SQLite FTS5) vs the base model's own hidden states.

    python benchmarks/retrieval_quality.py [--k 6]      # after `dvc repro index prepare`

For each benchmark task, the @qi names its reference solution imports are what a helpful context
must show. Recall@k: the share of those names among the k API entries retrieved for the task's
instruction + signature. Compared: BM25 over the store (what the eval uses), cosine similarity of
mean-pooled last hidden states of the base model (the only embedding model on the machine: no
download), and the expected recall of k entries drawn at random. Also the time per query.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import load_params, resolve_path  # noqa: E402
from qi_expert.data import bench, retrieval  # noqa: E402
from qi_expert.evaluation import graded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=6)
    args = ap.parse_args()
    cfg = load_params()
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))
    store = retrieval.Store(resolve_path(cfg.eval.retrieval.store))
    api = [(i, m, n, t) for i, m, n, t in store.con.execute("SELECT id, module, name, text FROM docs WHERE kind = 'api'")]
    needed = [{f"{m}:{n}" for m, n in graded.qi_names(t["reference"])} for t in tasks]
    queries = [f"{t['instruction']} {t['signature']}" for t in tasks]

    def recall(hits: list[set[str]]) -> float:
        return statistics.fmean(len(h & n) / len(n) for h, n in zip(hits, needed) if n)

    t0 = time.perf_counter()
    bm25 = [{f"{h['module']}:{h['name']}" for h in store.search(q, "api", args.k)} for q in queries]
    bm25_ms = (time.perf_counter() - t0) / len(queries) * 1000

    import torch
    from transformers import AutoModel, AutoTokenizer

    base = resolve_path(cfg.model.base_model)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for t in texts:
                ids = tok(t, return_tensors="pt", truncation=True, max_length=256)
                h = model(**ids).last_hidden_state[0].mean(0)
                out.append(torch.nn.functional.normalize(h, dim=0))
        return torch.stack(out)

    docs = embed([f"{n} {t}" for _, _, n, t in api])
    t0 = time.perf_counter()
    q = embed(queries)
    top = (q @ docs.T).topk(args.k, dim=1).indices.tolist()
    hidden_ms = (time.perf_counter() - t0) / len(queries) * 1000
    hidden = [{f"{api[j][1]}:{api[j][2]}" for j in row} for row in top]
    names = {f"{m}:{n}" for _, m, n, _ in api}
    rand = statistics.fmean(min(1.0, args.k / len(names)) for n in needed if n)

    print(f"| retrieval | recall@{args.k} of the reference's @qi names | ms per query |")
    print("|---|---|---|")
    print(f"| BM25, SQLite FTS5 (the eval's) | {recall(bm25):.3f} | {bm25_ms:.2f} |")
    print(f"| base-model hidden states, cosine | {recall(hidden):.3f} | {hidden_ms:.1f} |")
    print(f"| random {args.k} of {len(names)} entries (expected) | {rand:.3f} | - |")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
