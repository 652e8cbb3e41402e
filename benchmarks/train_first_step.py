"""The first training step vs the ones after it: what a fresh process pays before it runs at speed.

    python benchmarks/train_first_step.py [--steps 5] [--precision bf16|fp32]
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/train_first_step.py   # transparent huge pages

The default's model with its LoRA, packed attention and output layer at the trained positions
(as benchmarks/train_logits.py builds them), forward + backward on `--steps` packed batches of the
default's shape, each a different shuffle of the chat training rows. Prints each step's forward
and backward seconds, then the same for a 4 GiB buffer written twice: the first write is the
kernel handing the process fresh pages (on this VM 1.1-16.8 s for 4 GiB, the second 0.1-0.3 s), which
is most of what the first step pays on top of the others when it pays much.

Measured on the 2-core machine, 2026-12-02 (bf16; seven runs): step 1's forward 4.1-15.1 s (10.1-15.1 in five, 4.1 and 4.7 in the
last two), the next ones' 2.0-3.4 s (backward 4.3-6.9 s vs 2.4-5.1 s). A torch.profiler of step 1 against step 2:
copy_, mul, add and fill_ (writes into new memory) 9.2 s vs 0.8 s, the products 5.7 vs 3.0 s. With
glibc's transparent huge pages (the second command) step 1's forward took 17.6-21.7 s: the
kernel's compaction costs more than the faults it saves, so the stages do not set it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_logits import load_default, packed_batch, timed_step, with_lora  # noqa: E402

from qi_expert.core.config import load_params  # noqa: E402


def first_touch(gib: int = 4) -> tuple[float, float]:
    """Seconds to write a fresh `gib` GiB buffer, then to write it again."""
    import torch

    t0 = time.perf_counter()
    x = torch.empty(gib << 28, dtype=torch.float32)
    x.fill_(1.0)
    t1 = time.perf_counter()
    x.fill_(2.0)
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = ap.parse_args()

    cfg = load_params()
    bf16 = args.precision == "bf16"
    tok, base, rows = load_default(cfg, bf16)
    batches = []
    for k in range(args.steps):
        random.Random(int(cfg.seed) + k).shuffle(rows)
        batches.append(packed_batch(tok, rows, int(cfg.micro_batch_size), int(cfg.sequence_len)))
    model = with_lora(cfg, base, labeled=True)
    print(f"{args.precision}, batch {tuple(batches[0][0].shape)}, forward / backward seconds:")
    for k, batch in enumerate(batches, 1):
        forward, backward, _ = timed_step(model, *batch, bf16)
        print(f"  step {k}: {forward:6.2f} / {backward:6.2f}", flush=True)
    first, second = first_touch()
    print(f"4 GiB written into fresh memory: {first:.2f} s; written again: {second:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
