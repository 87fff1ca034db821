"""Process-level tuning for CPU inference and training.

Why: glibc serves every allocation above a (dynamic) threshold with a fresh ``mmap`` and returns it to the
system on ``free``; PyTorch's CPU kernels allocate and free feature maps of several MB per layer, so every
forward pass page-faults its working memory in again. Keeping large blocks in the heap (the effect PyTorch's
performance guide gets from jemalloc/tcmalloc) makes the predict path markedly faster for a little more peak RSS
(``bench/detect_speed.py`` with and without ``--default-malloc``; docs/results.md). Applied by the ``comgen`` CLI;
library users may call ``tune_allocator()`` themselves. ``COMGEN_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from pathlib import Path

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks below 256 MB come from the heap and are reused
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GB of freed heap instead of returning it at once


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds; True when applied (Linux with glibc, not turned off)."""
    if os.environ.get("COMGEN_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user tuned glibc already
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it does not inherit a parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def is_main_process() -> bool:
    """Whether this is the main process of a multi-process launch (``accelerate launch``, ``torchrun``), or the only
    process.

    Why from the environment: the launchers set ``RANK`` before the program starts, so a command can decide who
    takes the run's lock and who prints before any process group exists.
    """
    return os.environ.get("RANK", "0").strip() in ("", "0")
