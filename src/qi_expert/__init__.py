"""qi-expert: teach local code LLMs the @qi TypeScript ecosystem, and measure it."""

import os as _os
import time as _time

__version__ = "0.1.0"


def _other_runnable_threads(samples: int = 5, interval: float = 0.005) -> float:
    """Threads of OTHER processes ready to run right now (median of a few /proc/stat reads).

    Instantaneous on purpose: the 1-minute load average still counts the previous pipeline
    stage for a minute after it ended, and would call an idle machine busy.
    """
    counts = []
    for i in range(samples):
        with open("/proc/stat", encoding="ascii") as f:
            line = next(x for x in f if x.startswith("procs_running"))
        counts.append(int(line.split()[1]) - 1)  # minus this process, which is running the read
        if i + 1 < samples:
            _time.sleep(interval)
    return sorted(counts)[len(counts) // 2]


def _openmp_wait_policy() -> None:
    """Pick how OpenMP threads (torch's and llama.cpp's) wait at barriers, before either loads.

    libgomp reads OMP_WAIT_POLICY once, when the first library using it loads, so this runs when
    qi_expert is imported (every stage and benchmark imports it before torch or llama_cpp).
    Measured on this 2-core machine:
    - idle: the default (spin briefly, then sleep) is fastest: llama.cpp q8_0 decoding 59.8
      tokens/s vs 39.9 with PASSIVE; a LoRA step 12.6 s vs 13.7-16.2 s;
    - busy (another process on the cores): spinning threads hold the core the others need;
      PASSIVE measured 4x faster LoRA training (87 vs 22 tokens/s) and 5x faster decoding.
    So PASSIVE only when another process is running on the cores as we start. Results do not
    depend on it, only speed. A value the user set wins.
    """
    if "OMP_WAIT_POLICY" in _os.environ:
        return
    try:
        busy = _other_runnable_threads() >= 1
    except (OSError, StopIteration, ValueError):
        return
    if busy:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_openmp_wait_policy()
