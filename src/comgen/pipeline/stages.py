"""Resumable stage bookkeeping for ``comgen run``.

Why: a run is learn -> generate -> mask -> train -> evaluate; each stage is expensive. A stage is skipped when it
already finished with the same *chained* hash: its own config hash combined with the chained hash of the stage before
it. Changing an early stage's config therefore redoes it and everything after it, and nothing else. A stage may also
name its ``inputs`` (a fingerprint of the files it reads), so a changed dataset redoes it like a changed config.
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


def stage_key(config_hash: str, inputs: str = "") -> str:
    """A stage's own key: its config hash, plus the fingerprint of its input files when it has one."""
    return f"{config_hash}|inputs={inputs}" if inputs else config_hash


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

    @property
    def current(self) -> str:
        """The chained key of the stage being run (or last run): a stage records it beside its outputs."""
        return self._chain

    def stage(self, name: str, config_hash: str, fn: Callable[[], dict[str, Any] | None],
              inputs: str = "") -> StageResult:
        """Run ``fn`` unless ``name`` already finished with the same chained key (config and ``inputs``)."""
        self._chain = chain_hash(self._chain, stage_key(config_hash, inputs))
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
