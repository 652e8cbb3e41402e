"""Third-party messages that tell a user of this project nothing, silenced narrowly at the source.

Every stage that imports the training stack printed these before its own lines (and Axolotl's
process again): each is named here with why it carries no information on this project's machines.
Only these loggers, at WARNING and below, and one warning by its message: anything else, and any
ERROR from them, still shows.
"""

from __future__ import annotations

import logging
import warnings

QUIET_LOGGERS = {
    # torchao's optional CUDA / MX kernels (_C_mxfp8, _C_cutlass_90a): built for CUDA and another
    # Python; torchao runs without them, and nothing here uses them.
    "torchao": "optional CUDA kernels that cannot load on a CPU build",
    # torchao registers Enums with torch.compile the old way; a deprecation inside torchao.
    "torch.utils._pytree": "a deprecation inside torchao's registration",
    # bitsandbytes asks the Hub for a faster CPU 4-bit kernel; offline it falls back to its own.
    "bitsandbytes.backends.cpu.ops": "a Hub kernel it cannot fetch offline (it falls back)",
}


def silence() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Skipping publisher trust check", category=UserWarning)
