"""Typed config of the synthetic benchmark (saved as ``config.yaml`` at the benchmark root)."""

from __future__ import annotations

from dataclasses import dataclass, field

from comgen.config import ConfigBase
from comgen.errors import ConfigError


@dataclass
class SynthConfig(ConfigBase):
    """Image size, per-split counts, seed, and which categories (empty list = all)."""

    size: int = 256
    n_train: int = 200
    n_validation: int = 40
    n_test: int = 150
    seed: int = 0
    categories: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.categories, str):  # "all" or "a,b" from a CLI or YAML
            self.categories = [] if self.categories == "all" else [c for c in self.categories.split(",") if c]
        self.categories = list(self.categories)
        from comgen.data.synth.categories import CATEGORY_SPECS, known_category

        unknown = [c for c in self.categories if not known_category(c)]
        if unknown:
            raise ConfigError("synth.categories", f"unknown category {unknown[0]!r} (have: {', '.join(CATEGORY_SPECS)}, "
                                                  "or family_<seed>)")
        if self.size < 32:
            raise ConfigError("synth.size", f"image size must be at least 32 px, got {self.size}")
        if self.n_train < 1 or self.n_validation < 1 or self.n_test < 0:
            raise ConfigError("synth", "need n_train >= 1, n_validation >= 1 (the LOCO layout has a validation split) and n_test >= 0")

    def selected(self) -> list[str]:
        from comgen.data.synth.categories import CATEGORY_SPECS

        return list(self.categories) or list(CATEGORY_SPECS)
