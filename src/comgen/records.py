"""Records that flow between the stages (docs/design.md, "Records that flow between the stages").

They are plain dataclasses holding numpy arrays, so every stage (and every back-end) speaks the same
language and nothing downstream needs to know which generator or detector produced a record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

SampleKind = Literal["good", "logical", "structural", "defect"]
EditKind = Literal[
    "remove", "add", "replace", "recolor", "move", "swap", "resize",  # logical
    "texture", "deform", "cut", "contamination", "stain", "transplant",  # structural (one component)
]
LOGICAL_EDITS: tuple[str, ...] = ("remove", "add", "replace", "recolor", "move", "swap", "resize")
STRUCTURAL_EDITS: tuple[str, ...] = ("texture", "deform", "cut", "contamination", "stain", "transplant")
# The structural edits a generator makes unless told otherwise. Only transplant: trained with the five hand-made
# edits beside it, the detector learnt their own cues (stripes, a warp, a flat cut) and found real scratches, stains
# and contamination less well (docs/experiments.md). The others stay available.
DEFAULT_STRUCTURAL_EDITS: tuple[str, ...] = ("transplant",)
ALL_EDITS: tuple[str, ...] = LOGICAL_EDITS + STRUCTURAL_EDITS
DEFAULT_EDITS: tuple[str, ...] = LOGICAL_EDITS + DEFAULT_STRUCTURAL_EDITS  # CompositionalConfig.edit_kinds


@dataclass(frozen=True)
class DefectSpec:
    """One entry of MVTec LOCO's ``defects_config.json``."""

    name: str
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool


@dataclass
class Sample:
    """One image of a dataset split, with lazily loaded pixels and ground truth.

    ``label`` is the folder name (``good``, ``logical_anomalies``, ``broken_large`` ...); ``kind`` is the
    coarse class used for reporting. ``mask_paths`` may hold several masks (MVTec LOCO), each a separate
    region set whose pixel value names its defect.
    """

    path: Path
    category: str
    split: str
    label: str
    kind: SampleKind
    image_id: str
    mask_paths: list[Path] = field(default_factory=list)

    @property
    def is_anomalous(self) -> bool:
        return self.kind != "good"

    def load_image(self) -> np.ndarray:
        from comgen.data.imageio import read_rgb

        return read_rgb(self.path)

    def load_masks(self) -> list[np.ndarray]:
        from comgen.data.imageio import read_mask

        return [read_mask(p) for p in self.mask_paths]


@dataclass
class Component:
    """One instance of a learned component class in one image (bound to token ``<c{class_id}>``)."""

    class_id: int
    mask: np.ndarray  # HxW bool
    centroid: tuple[float, float]  # (y, x) in pixels
    area: int
    color_lab: tuple[float, float, float]
    bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1), exclusive end
    orientation: float  # radians, principal axis

    @property
    def token(self) -> str:
        return f"<c{self.class_id}>"


@dataclass
class Composition:
    """All components of one image; ``vector`` is what Low-Density Sampling scores."""

    image_id: str
    image_shape: tuple[int, int]
    components: list[Component]

    def by_class(self, class_id: int) -> list[Component]:
        return [c for c in self.components if c.class_id == class_id]

    def prompt(self) -> str:
        tokens = " ".join(c.token for c in sorted(self.components, key=lambda c: c.class_id))
        return f"a photo of {tokens}".strip()


@dataclass
class EditSpec:
    """One Prompt Modification: what to change in a composition, renderable as an edited prompt."""

    kind: str  # one of EditKind
    target: list[int]  # indices into Composition.components that are edited
    classes: list[int]  # component class ids involved (target class first; replace/swap: the other class second)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_logical(self) -> bool:
        return self.kind in LOGICAL_EDITS

    def tokens(self) -> list[str]:
        return [f"<c{c}>" for c in self.classes]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditSpec:
        return cls(kind=data["kind"], target=list(data["target"]), classes=list(data["classes"]),
                   params=dict(data.get("params", {})))


@dataclass
class Anomaly:
    """A generated anomalous image with its exact mask and provenance (one manifest line)."""

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW bool
    edit: EditSpec
    source: str  # path or id of the normal image it was made from
    density: float | None = None  # log-density of the edited composition (None for baselines)
    backend: str = "compositional"
    kind: Literal["logical", "structural"] = "logical"
    extra: dict[str, Any] = field(default_factory=dict)
