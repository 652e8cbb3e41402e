"""Batched type check (one TypeScript program) vs one tsc process per record (goal: 20x).

    python benchmarks/typecheck_batching.py [corpus_root] [--n 100]

Takes the first N non-method records that extract finds in the corpus, checks them both ways,
checks that both give the same verdicts, and prints the wall times and the speed-up.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import ROOT, compose_conf  # noqa: E402
from qi_expert.data import extract, validate  # noqa: E402
from qi_expert.typescript import typecheck


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=str(ROOT / "data/sample/typescript"))
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    root = Path(args.root)
    records, _ = extract.extract_corpus(root, compose_conf().extract)
    sample = [r for r in records if r["unit"] != "method"][: args.n]
    sources = {r["id"]: validate.check_source(r, True) for r in sample}

    t = time.perf_counter()
    batched = typecheck.check(sources, root)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    single = typecheck.check_one_process_each(sources, root)
    t_single = time.perf_counter() - t

    same = sum(1 for k in sources if bool(batched[k]) == bool(single[k]))
    print(f"{len(sources)} records from {root}")
    print(f"  one program:          {t_batched:7.2f}s  ({sum(not d for d in batched.values())} compile)")
    print(f"  one process each:     {t_single:7.2f}s  ({sum(not d for d in single.values())} compile)")
    print(f"  speed-up: {t_single / t_batched:.1f}x; same verdict for {same}/{len(sources)}")


if __name__ == "__main__":
    main()
