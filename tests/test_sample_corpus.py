"""The embedded sample corpus type-checks as a whole with the pinned TypeScript compiler."""

import subprocess

from qi_expert.core.config import ROOT
from qi_expert.core.node import modules as node_modules


def test_sample_corpus_typechecks_with_tsc():
    tsc = node_modules() / "typescript" / "bin" / "tsc"
    proc = subprocess.run(["node", str(tsc), "-p", str(ROOT / "data/sample/typescript/tsconfig.json"), "--noEmit"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
