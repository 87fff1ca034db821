"""A family category with the interface of the built-in ones (``comgen.data.synth.categories.Category``).

Why the same interface: the writer, the reader, the truth files, the palette check and every benchmark then treat
a family category like a built-in one; only ``truth/parts.json`` says more (the rule types, and which rule each
defect breaks), for the per-rule-type tables.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from comgen.data.family.damage import OBJECT_DAMAGE, TEXTURE_DAMAGE, damage
from comgen.data.family.rules import broken_rules
from comgen.data.family.scene import LayoutError, broken_plan, normal_plan, render_objects
from comgen.data.family.spec import FamilySpec, draw_spec, family_seed
from comgen.data.family.texture import render_texture
from comgen.data.synth import draw
from comgen.data.synth.base import Scene


class FamilyCategory:
    """Renders and checks one seed's category."""

    def __init__(self, spec: FamilySpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.parts = {p.label: p.name for p in spec.parts}
        self.rules = tuple(r.text for r in spec.rules)
        self.logical = tuple(d for r in spec.rules for d in r.defects)
        self.structural = TEXTURE_DAMAGE if spec.kind == "texture" else OBJECT_DAMAGE
        self.items = spec.items

    @cached_property
    def defect_rules(self) -> dict[str, str]:
        """Defect type -> the kind of rule it breaks (``"structural"`` for damage)."""
        out = {d: r.kind for r in self.spec.rules for d in r.defects}
        out.update({d: "structural" for d in self.structural})
        return out

    def truth_info(self) -> dict[str, Any]:
        return {"family_seed": self.spec.seed, "kind": self.spec.kind, "layout": self.spec.layout,
                "rule_types": sorted({r.kind for r in self.spec.rules}), "defect_rules": self.defect_rules}

    def palettes(self) -> dict[int, tuple[str, tuple]]:
        return {p.label: (p.name, p.colors) for p in self.spec.parts}

    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        for _ in range(200):  # a scene that does not fit is drawn again with the next random numbers (seeded)
            try:
                if self.spec.kind == "texture":
                    cv, regions = render_texture(self.spec, rng, size), []
                else:
                    plan = broken_plan(self.spec, rng, defect) if defect in self.logical else normal_plan(self.spec, rng)
                    cv, regions = render_objects(self.spec, rng, size, plan)
            except LayoutError:
                continue
            if defect in self.structural:
                regions = [damage(cv, defect, self.items)]
            return Scene(image=draw.finish(cv), labels=cv.labels, defect=defect, regions=regions)
        raise RuntimeError(f"{self.name}: could not lay out a scene at {size} px")

    def check(self, labels: np.ndarray, image: np.ndarray) -> list[str]:
        return [msg for _, msg in broken_rules(self.spec, labels, image)]

    def broken(self, labels: np.ndarray, image: np.ndarray) -> list[int]:
        """Indices of the rules the scene breaks."""
        return [i for i, _ in broken_rules(self.spec, labels, image)]


@lru_cache(maxsize=64)
def family_category(name: str) -> FamilyCategory:
    return FamilyCategory(draw_spec(family_seed(name)))
