"""`python -m qi_expert.train.axolotl_main axolotl.cli.<command> <config>`: an Axolotl CLI module run under
a multi-process launcher (torchrun / accelerate launch, conf/launcher/), which start a module by
name. runtime.setup() first, as the single-process stub in training.py does: the same process
set-up (OpenMP, quiet third-party messages) in every process.
"""

import runpy
import sys

from qi_expert.core import runtime


def _distributed_cpu() -> None:
    """Several processes without CUDA (launcher=ddp on CPU): accelerate makes them one data-parallel
    group (gloo) only when its state is created with cpu=True. Axolotl creates it without, and
    resets it before the Trainer's Accelerator, which then reads ACCELERATE_USE_CPU (as
    TrainingArguments does): both set here. Without them each process trains alone on the same
    batches (measured: identical batch digests on both ranks)."""
    import os

    import torch

    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_CPU"] = "true"
        PartialState(cpu=True)


if __name__ == "__main__":
    runtime.setup()
    _distributed_cpu()
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=False)
