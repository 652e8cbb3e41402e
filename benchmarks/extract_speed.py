"""Extraction wall time on a corpus (goal: 3 s or less for qi-v2-qicore's typescript/ tree).

    python benchmarks/extract_speed.py [/path/to/qi-v2-qicore/typescript] [--repeat 3]

Times `extract.extract_corpus` (parsing with tree-sitter, units, labels), best of N runs,
excluding interpreter start-up and library imports.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core.config import ROOT, compose_conf  # noqa: E402
from qi_expert.data import extract  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=str(ROOT / "data/sample/typescript"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = compose_conf().extract
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        records, report = extract.extract_corpus(Path(args.root), cfg)
        times.append(time.perf_counter() - t)
    files = sum(report.files_by_kind.values())
    print(f"extract {args.root}: {files} files, {len(records)} records; "
          f"best {min(times):.2f}s, median {statistics.median(times):.2f}s over {args.repeat} runs")


if __name__ == "__main__":
    main()
