"""Built-in LOCO-style benchmark: procedural categories written in the exact MVTec LOCO AD layout.

Why: every stage must be runnable and measurable offline on a CPU; this benchmark is the embedded
default, and its generator truth (part-label maps, rule checkers) lets later stages be scored exactly.
"""

from __future__ import annotations

from comgen.data.synth.categories import CATEGORY_SPECS
from comgen.data.synth.config import SynthConfig
from comgen.data.synth.writer import generate_benchmark, generate_category

CATEGORIES: tuple[str, ...] = tuple(CATEGORY_SPECS)

__all__ = ["CATEGORIES", "SynthConfig", "generate_benchmark", "generate_category"]
