"""Run one benchmark stage in a fresh spawned process, so its peak RSS (VmHWM) and thread settings are its own."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def run_in_child(target: Callable[..., None], *args: Any) -> dict[str, Any]:
    """Call ``target(*args, queue)`` in a child; it must put one dict (with "error" on failure) on the queue."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(out["error"])
    return out
