"""Time of a no-op `dvc repro` (everything up to date): best of N.

    python benchmarks/noop_repro.py [--repeat 3] [targets...]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("targets", nargs="*")
    args = ap.parse_args()
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "repro", *args.targets], cwd=ROOT, check=True, capture_output=True)  # bring up to date
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        out = subprocess.run([dvc, "repro", *args.targets], cwd=ROOT, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        assert "Running stage" not in out.stdout, out.stdout
    print(f"no-op dvc repro {' '.join(args.targets)}: best {min(times):.2f}s over {args.repeat} runs")


if __name__ == "__main__":
    main()
