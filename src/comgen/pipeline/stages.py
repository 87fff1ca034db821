"""Resumable stage bookkeeping for ``comgen run``.

Why: a run is learn -> generate -> mask -> train -> evaluate; each stage is expensive. A stage is skipped when it
already finished with the same *chained* hash: its own config hash combined with the chained hash of the stage before
it. Changing an early stage's config therefore redoes it and everything after it, and nothing else.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comgen.rundir import RunDir


def chain_hash(previous: str, own: str) -> str:
    return hashlib.sha256(f"{previous}:{own}".encode()).hexdigest()[:16]


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageRunner:
    """Runs named stages in order inside one run directory, skipping the ones already done."""

    run: RunDir
    force: bool = False
    log: Callable[[str], None] = print
    _chain: str = "root"
    results: list[StageResult] = field(default_factory=list)

    def stage(self, name: str, config_hash: str, fn: Callable[[], dict[str, Any] | None]) -> StageResult:
        self._chain = chain_hash(self._chain, config_hash)
        if not self.force and self.run.stage_done(name, self._chain):
            outputs = self.run._stages().get(name, {}).get("outputs", {})
            self.log(f"[{name}] up to date, skipped")
            result = StageResult(name, True, 0.0, outputs)
        else:
            self.log(f"[{name}] running")
            start = time.perf_counter()
            outputs = fn() or {}
            seconds = time.perf_counter() - start
            self.run.mark_done(name, self._chain, {**outputs, "seconds": round(seconds, 2)})
            self.log(f"[{name}] done in {seconds:.1f} s")
            result = StageResult(name, False, seconds, outputs)
        self.results.append(result)
        return result
