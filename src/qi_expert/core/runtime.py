"""The process set-up every entry point calls first: `runtime.setup()`, before torch or llama_cpp load.

Importing qi_expert changes nothing; a stage script, the `qi-expert` command, the Axolotl
processes the train stage starts and the benchmarks call setup() explicitly, as their first
step. What it does (each part a process-wide choice that only changes speed or noise, never a
result): OpenMP's wait policy from how busy the cores are, glibc malloc keeping freed memory,
and third-party messages that say nothing here silenced (quiet.py).
"""

from __future__ import annotations

import os as _os
import time as _time

_DONE = False


def setup() -> None:
    """Idempotent; a value the user set in the environment wins over each choice."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    _openmp_wait_policy()
    _keep_freed_memory()
    from qi_expert.core import quiet

    quiet.silence()



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
    setup() runs (every stage, the CLI and the Axolotl processes call it before torch or llama_cpp load).
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



def _keep_freed_memory() -> None:
    """glibc malloc: serve big blocks from the heap and keep freed memory, instead of a fresh mmap
    per large tensor whose pages fault in again on every first touch (logits of [rows, tokens,
    49,152] are hundreds of MB). The Axolotl processes get the same through their environment
    (axolotl_config.AXOLOTL_ENV); this is the in-process equivalent for the stages themselves.
    Results do not depend on it, only speed. Measured here: the base arm's reference loss (54
    tasks, bf16 autocast) 64.6 s with glibc's defaults vs 46.3 s with this, the same losses to the
    last digit; eval generation 79.3 vs 81.7 tokens/s (32 prompts).
    """
    import ctypes
    import ctypes.util

    if "MALLOC_MMAP_MAX_" in _os.environ or "MALLOC_TRIM_THRESHOLD_" in _os.environ:
        return  # the user's (or the Axolotl environment's) choice
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)
