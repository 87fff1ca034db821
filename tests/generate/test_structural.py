"""Structural edits inside one component: every changed pixel is labelled, and the label stays near the part."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comgen.generate.structural import STRUCTURAL, apply_structural, spill_px
from tests.components.toy import toy_images


@pytest.fixture(scope="module")
def scene():
    imgs, truth = toy_images(2, 64, 0)
    part = truth[0] == 1
    assert part.sum() > 20
    return imgs[0], part, imgs[1]


@pytest.mark.parametrize("kind", sorted(STRUCTURAL))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_structural_edit_changes_exactly_its_mask(scene, kind, seed):
    image, part, donor = scene
    out, mask = apply_structural(kind, image, part, seed, donor=donor)
    changed = np.any(out != image, axis=2)
    assert mask.any()
    assert np.array_equal(changed & ~mask, np.zeros_like(mask)), "changed pixels outside the anomaly mask"
    reach = 2 * spill_px(kind, image.shape) + 1
    near = cv2.dilate(part.astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
    assert not (mask & ~near).any(), "the edit left the component"
    assert (mask & part).any(), "the edit missed the component"


def test_transplant_takes_material_from_the_donor(scene):
    image, part, donor = scene
    out, mask = apply_structural("transplant", image, part, 0, donor=donor)
    assert mask.sum() >= 8 and np.abs(out.astype(int) - image.astype(int))[mask].max() > 12


def test_transplant_without_donor_is_refused(scene):
    image, part, _ = scene
    with pytest.raises(ValueError, match="donor"):
        apply_structural("transplant", image, part, 0)
    with pytest.raises(ValueError, match="donor"):
        apply_structural("transplant", image, part, 0, donor=image[:32])


def test_empty_component_changes_nothing(scene):
    image, part, donor = scene
    out, mask = apply_structural("transplant", image, np.zeros_like(part), 0, donor=donor)
    assert np.array_equal(out, image) and not mask.any()
