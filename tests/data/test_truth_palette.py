"""The palette rule of the synthetic benchmark's checker: a part outside its colour palette is a violation."""

from __future__ import annotations

import numpy as np

from comgen.data.synth import CATEGORIES
from comgen.data.synth.categories import CATEGORY_SPECS
from comgen.data.synth.truth import palette_violations, palettes, violates


def test_palette_flags_a_recoloured_part_that_no_listed_rule_mentions():
    assert set(palettes()) == set(CATEGORIES)
    rng = np.random.default_rng(0)
    scene = CATEGORY_SPECS["breakfast_tray"].render(rng, 64, None)
    assert violates("breakfast_tray", scene.labels, scene.image) == []
    img = scene.image.copy()
    img[scene.labels == 4] = (40, 160, 220)  # blue cereal: only the palette rule knows cereal's colour
    assert violates("breakfast_tray", scene.labels, img, palette=False) == []
    msgs = violates("breakfast_tray", scene.labels, img)
    assert msgs and any("cereal" in m and "palette" in m for m in msgs)


def test_palette_accepts_every_normal_scene_and_catches_grey_parts_turned_dark():
    rng = np.random.default_rng(1)
    for cat in CATEGORIES:
        for _ in range(3):
            scene = CATEGORY_SPECS[cat].render(rng, 64, None)
            assert palette_violations(cat, scene.labels, scene.image) == [], cat
    scene = CATEGORY_SPECS["screw_bag"].render(rng, 64, None)
    img = scene.image.copy()
    img[scene.labels == 2] = (40, 40, 44)  # screws painted washer-black
    assert any("screw" in m for m in palette_violations("screw_bag", scene.labels, img))
