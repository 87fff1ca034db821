"""Optional ``torch.compile`` of the few hot loops of prediction and training.

Why: in eager PyTorch every step of the alignment's window search writes a full-size intermediate to memory;
inductor fuses the whole search into one pass over the references (on this 2-core CPU the search at the finest
scale took 13.5 ms eager and 1.2 ms compiled, batch 8, 256 px). Compiling costs time up front: the first compiled
predict call took 112 s with inductor's disk cache empty and 24 s with it warm (``bench/detect_speed.py``), since
every process traces the graphs again.

``COMGEN_COMPILE=0`` turns it off (the test suite does, except for the tests of this module); small jobs run eager
inside ``with eager():``. When compilation is not possible (no C++ compiler, an unsupported platform), the first
failure prints one notice and the eager function is used from then on: results agree up to float rounding either
way.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_failed: set[str] = set()
_eager_blocks = 0


def compile_enabled() -> bool:
    """True unless ``COMGEN_COMPILE=0`` (read at every call) or inside ``eager()``."""
    return _eager_blocks == 0 and os.environ.get("COMGEN_COMPILE", "1") != "0"


@contextmanager
def eager() -> Iterator[None]:
    """Run every ``maybe_compiled`` function eagerly in this block: for work too small to repay the tracing."""
    global _eager_blocks
    _eager_blocks += 1
    try:
        yield
    finally:
        _eager_blocks -= 1


def runs_compiled(fn: Callable[..., Any]) -> bool:
    """Whether a ``maybe_compiled`` function would run compiled now: enabled here and not failed before.

    Callers that prepare inputs differently for the two paths ask this, not ``compile_enabled()``, so the eager
    fallback after a compile failure gets the eager path's inputs too."""
    name = getattr(fn, "compile_name", None)
    return name is not None and name not in _failed and compile_enabled()


def maybe_compiled(fn: F, name: str | None = None, options: dict[str, Any] | None = None,
                   eager: Callable[..., Any] | None = None) -> F:
    """``fn`` run through ``torch.compile`` when enabled, falling back to eager for good on a failure.

    ``name`` (default: the function's qualified name) keys the failure memory and the notice; ``options`` go to
    inductor (e.g. ``{"freezing": True}``: weights become constants, for modules that no longer train);
    ``eager`` is an equivalent formulation that is faster than ``fn`` without the compiler (default ``fn``).
    """
    name = name or f"{fn.__module__}.{fn.__qualname__}"
    slow = eager or fn
    compiled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if name in _failed or not compile_enabled():
            return slow(*args, **kwargs)
        try:
            if not compiled:
                import logging

                import torch

                # inductor's CPU path warns "No CUDA runtime is found" on every CPU-only machine: not news
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
                # dynamic: one graph serves every batch size and feature-map size (a shorter first-run compile than
                # specialising per shape, the same steady speed)
                compiled.append(torch.compile(fn, dynamic=True, options=options))
            return compiled[0](*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure means: run eager
            _failed.add(name)
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            print(f"note: running {name} without torch.compile ({reason}); "
                  f"set COMGEN_COMPILE=0 to skip the attempt", file=sys.stderr)
            return slow(*args, **kwargs)

    run.compile_name = name  # type: ignore[attr-defined]  # read by runs_compiled
    return run  # type: ignore[return-value]
