"""Progress bars for long work (tqdm), quiet when stderr is not a terminal or COMGEN_QUIET is set."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterator[T]:
    disable = bool(os.environ.get("COMGEN_QUIET")) or not sys.stderr.isatty()
    yield from tqdm(iterable, desc=desc, total=total, leave=leave, disable=disable, dynamic_ncols=True)
