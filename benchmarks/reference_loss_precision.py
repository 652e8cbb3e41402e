"""What bf16 autocast changes in the reference loss: fp32 vs bf16 on the real base and tuned models.

    python benchmarks/reference_loss_precision.py      # after `dvc repro train`

Per task, the teacher-forced loss of the reference (refloss.reference_nll) under both dtypes, for
the base model and base + adapter: the largest per-task difference, the difference of the means,
the tuned - base delta under each, and the seconds each took.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from qi_expert import bench, generate, refloss  # noqa: E402
from qi_expert.config import load_params, resolve_path  # noqa: E402


def main() -> int:
    import torch

    cfg = load_params()
    tasks = bench.load_tasks(resolve_path(cfg.eval.benchmark))
    model, tok = generate.load_model(resolve_path(cfg.model.base_model))
    messages = [generate.chat_messages(t, cfg.format.system_prompt) for t in tasks]
    prompts = [generate.render_prompt(tok, t, cfg.format.system_prompt) for t in tasks]
    answers = [refloss.answer_text(tok, m, p, t["reference"]) for m, p, t in zip(messages, prompts, tasks)]
    out = {}
    for name in ("base", "tuned"):
        if name == "tuned":
            model = generate.apply_adapter(model, resolve_path(cfg.eval.adapter))
        for dtype in (None, torch.bfloat16):
            t0 = time.perf_counter()
            out[(name, dtype)] = (refloss.reference_nll(model, tok, prompts, answers, dtype=dtype), time.perf_counter() - t0)
    print("| model | fp32 mean | bf16 mean | max per-task difference | fp32 s | bf16 s |")
    print("|---|---|---|---|---|---|")
    for name in ("base", "tuned"):
        (a, ta), (b, tb) = out[(name, None)], out[(name, torch.bfloat16)]
        print(f"| {name} | {sum(a) / len(a):.4f} | {sum(b) / len(b):.4f} | {max(abs(x - y) for x, y in zip(a, b)):.4f} "
              f"| {ta:.1f} | {tb:.1f} |")
    for dtype, label in ((None, "fp32"), (torch.bfloat16, "bf16")):
        base, tuned = out[("base", dtype)][0], out[("tuned", dtype)][0]
        print(f"tuned - base ({label}): {sum(tuned) / len(tuned) - sum(base) / len(base):+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
