"""Logical edits of a class map: each changes the composition and marks exactly what changed."""

from __future__ import annotations

import numpy as np

from comgen.components.map_edits import EDITS, instance_masks, perturb


def _scene() -> np.ndarray:
    """Two class-1 discs and one class-2 bar on background 0, at 64 px."""
    m = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    m[(yy - 16) ** 2 + (xx - 16) ** 2 < 36] = 1
    m[(yy - 16) ** 2 + (xx - 46) ** 2 < 36] = 1
    m[44:50, 10:40] = 2
    return m


def test_instances_are_found_per_class() -> None:
    parts = instance_masks(_scene())
    assert sorted(c for c, _ in parts) == [1, 1, 2]
    assert [c for c, _ in instance_masks(_scene(), min_area=150)] == [2]  # the discs (about 113 px) are dropped


def test_every_edit_kind_happens_and_its_mask_covers_the_change() -> None:
    rng = np.random.default_rng(0)
    scene = _scene()
    seen = set()
    for _ in range(200):
        out, mask, edit = perturb(scene, rng, num_classes=3)
        seen.add(edit)
        changed = out != scene
        assert changed.any(), edit
        assert not (changed & ~mask).any(), edit  # nothing changed outside the mask
    assert seen == set(EDITS)


def test_a_map_without_parts_has_no_edit() -> None:
    assert perturb(np.zeros((32, 32), np.uint8), np.random.default_rng(0), num_classes=3) is None
