"""The one protocol every anomaly generator satisfies (compositional, diffusion, and the baselines).

Why: the rest of the pipeline (writer, masks, detector, benchmark) never needs to know which back-end ran.
A generator is fitted on the normal training samples of one category, then yields ``Anomaly`` records
(image + exact or estimated mask + EditSpec + provenance) on demand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np

from comgen.records import Anomaly, Sample
from comgen.rundir import RunDir


@runtime_checkable
class AnomalyGenerator(Protocol):
    """Fit on normal images, then generate anomalies with masks."""

    name: str

    def fit(self, train: list[Sample], run: RunDir | None = None) -> None:
        """Learn whatever the generator needs from normal training samples (may read/write ``run``)."""

    def generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        """Yield up to ``n`` anomalies; raise ``InputError`` when none can be made at all."""
        ...
