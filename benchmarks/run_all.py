"""Every benchmark, one after the other, and one table of what each printed last (`make bench`).

    python benchmarks/run_all.py                 # all of them (after `make repro`: several need the
                                                 # trained models; an hour or more on 2 cores)
    python benchmarks/run_all.py extract_speed typecheck_batching    # some of them

Each runs as its own process with its default arguments (see each file's docstring for more),
one at a time: two CPU-heavy measurements at once on 2 cores would measure each other. The
table gives each one's wall time, exit status and the last lines it printed (its headline
figures); the full output of each goes to benchmarks/out/<name>.txt (git-ignored).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
HEADLINE_LINES = 3


def benchmarks(names: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    if not names:
        return found
    by_name = {p.stem: p for p in found}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def main(argv: list[str]) -> int:
    OUT.mkdir(exist_ok=True)
    rows = []
    for path in benchmarks(argv):
        print(f"bench: {path.stem} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=HERE.parent)
        seconds = time.perf_counter() - start
        (OUT / f"{path.stem}.txt").write_text(done.stdout + ("\n--- stderr ---\n" + done.stderr if done.stderr else ""))
        lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()][-1:] or ["(no output)"]
        rows.append((path.stem, seconds, done.returncode, " / ".join(lines[-HEADLINE_LINES:]).replace("|", "\\|")))
    print("| benchmark | seconds | exit | last lines printed |")
    print("|---|---|---|---|")
    for name, seconds, rc, headline in rows:
        print(f"| {name} | {seconds:.0f} | {rc} | {headline} |")
    return max((rc != 0 for _, _, rc, _ in rows), default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
