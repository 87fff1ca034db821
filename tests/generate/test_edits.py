import numpy as np
import pytest

from comgen.generate.component_bank import ComponentBank, dilate
from comgen.generate.edits import (
    discrete_capacity,
    free_positions,
    placed_mask,
    plan_edit,
    possible_kinds,
    render_prompt,
)
from comgen.generate.structural import NEEDS_DONOR
from comgen.records import STRUCTURAL_EDITS
from tests.components.toy import toy_images


def make_bank(n=8, size=64, seed=0, truth_as_classes=True):
    imgs, truth = toy_images(n, size, seed)
    return ComponentBank(imgs, truth, list(truth), [f"{i}" for i in range(n)], [f"/x/{i}.png" for i in range(n)],
                         background=0, min_area=4)


@pytest.fixture(scope="module")
def bank():
    return make_bank()


def _plan(bank, kind, seed=0, tries=50):
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        i = int(rng.integers(len(bank)))
        p = plan_edit(kind, bank, i, bank.composition(i), rng)
        if p is not None:
            return p, bank.composition(i)
    raise AssertionError(f"no {kind} plan")


def _counts(components):
    return np.bincount([c.class_id for c in components], minlength=3)


def test_remove(bank):
    p, comp = _plan(bank, "remove")
    t = comp.components[p.edit.target[0]]
    assert (_counts(p.components) == _counts(comp.components) - np.eye(3, dtype=int)[t.class_id]).all()
    assert p.erase[t.mask].all() and p.gate[t.mask].all()
    assert p.edit.params["source_prompt"] == "a photo of <c1> <c2> <c2>"
    assert p.edit.params["prompt"] == render_prompt(p.components)


def test_add_renders_extra_token(bank):
    for seed in range(20):
        p, comp = _plan(bank, "add", seed)
        if p.edit.classes == [2]:
            break
    assert p.edit.params["prompt"] == "a photo of <c1> <c2> <c2> <c2>"
    new = p.components[-1]
    # pasted on its host (background), away from the other parts
    assert (bank.class_maps[p.source][new.mask] == 0).mean() > 0.95
    assert len(p.edit.target) == 0 and "position" in p.edit.params


def test_replace_changes_class_at_same_place(bank):
    p, comp = _plan(bank, "replace")
    old = comp.components[p.edit.target[0]]
    new = p.components[-1]
    assert p.edit.classes == [old.class_id, new.class_id] and new.class_id != old.class_id
    assert np.hypot(new.centroid[0] - old.centroid[0], new.centroid[1] - old.centroid[1]) < 3


def test_recolor_moves_colour(bank):
    p, comp = _plan(bank, "recolor")
    old = comp.components[p.edit.target[0]]
    new = p.components[-1]
    assert np.linalg.norm(np.subtract(new.color_lab, old.color_lab)) >= 20
    assert p.recolor is not None and p.recolor[0].sum() == old.area


def test_move_shifts_without_overlap(bank):
    p, comp = _plan(bank, "move")
    old = comp.components[p.edit.target[0]]
    new = p.components[-1]
    assert np.hypot(new.centroid[0] - old.centroid[0], new.centroid[1] - old.centroid[1]) >= 0.12 * 64 - 2
    others = np.zeros((64, 64), bool)
    for j, c in enumerate(comp.components):
        if j != p.edit.target[0]:
            others |= c.mask
    assert not (new.mask & others).any()


def test_swap_exchanges_positions(bank):
    p, comp = _plan(bank, "swap")
    a, b = (comp.components[t] for t in p.edit.target)
    na, nb = p.components[-2], p.components[-1]
    assert na.class_id == a.class_id and nb.class_id == b.class_id
    assert np.hypot(na.centroid[0] - b.centroid[0], na.centroid[1] - b.centroid[1]) < 3


def test_resize_scales_area(bank):
    p, comp = _plan(bank, "resize")
    old = comp.components[p.edit.target[0]]
    s = p.edit.params["scale"]
    assert p.components[-1].area == pytest.approx(old.area * s * s, rel=0.35)


@pytest.mark.parametrize("kind", STRUCTURAL_EDITS)
def test_structural_keeps_composition(bank, kind):
    p, comp = _plan(bank, kind)
    assert _counts(p.components).tolist() == _counts(comp.components).tolist()
    assert p.structural["kind"] == kind and not p.edit.is_logical
    if kind in NEEDS_DONOR:  # the patch comes from another normal image
        assert p.structural["params"]["donor"] != p.source


def test_free_positions_exact():
    free = np.zeros((20, 20), bool)
    free[5:15, 5:15] = True
    pos = free_positions(free, np.ones((4, 4), bool), min_frac=1.0)
    assert len(pos) == 49 and pos.min() == 5 and pos.max() == 11


def test_placed_mask_clips():
    m = placed_mask(np.ones((4, 4), bool), (-2, 18), (20, 20))
    assert m.sum() == 4 and m[0:2, 18:20].all()


def test_possible_kinds_and_capacity():
    imgs, truth = toy_images(8, 64, 0)
    one = np.where(truth == 2, 0, truth).astype(np.uint8)  # only the disc class left
    b = ComponentBank(imgs, one, [None] * 8, [str(i) for i in range(8)], ["p"] * 8, 0, 4)
    reasons = possible_kinds(b)
    assert reasons["swap"] and reasons["replace"] and reasons["remove"] is None
    assert discrete_capacity(b, ["remove"]) == 8
    assert discrete_capacity(b, ["remove", "add"]) == float("inf")
    empty = ComponentBank(imgs, np.zeros_like(truth), [None] * 8, [str(i) for i in range(8)], ["p"] * 8, 0, 4)
    assert all(possible_kinds(empty).values())


def test_bank_references_and_items(bank):
    assert len(bank.items) == 8 * 3
    assert all(it.host == 0 for it in bank.items)
    assert all(bank.reference(i) != i for i in range(len(bank)))


def test_free_positions_coarse_path_is_verified():
    rng = np.random.default_rng(0)
    free = np.zeros((160, 160), bool)
    free[20:100, 30:140] = True
    free[50:60, 60:70] = False  # an obstacle
    mask = np.zeros((12, 16), bool)
    mask[2:10, 1:15] = True
    pos = free_positions(free, mask, min_frac=1.0, rng=rng)
    assert len(pos) > 10
    for y, x in pos:
        assert free[y:y + 12, x:x + 16][mask].all()
    far = free_positions(free, mask, min_frac=1.0, rng=rng, accept=lambda p: p[:, 0] >= 70)
    assert len(far) and (far[:, 0] >= 70).all()


def test_remove_add_recolor_act_only_on_reliable_parts():
    imgs, truth = toy_images(8, 64, 0)
    maps = truth.copy()
    maps[::2][maps[::2] == 2] = 0  # class 2 present in only half the images: its count is not a rule
    b = ComponentBank(imgs, maps, [None] * 8, [str(i) for i in range(8)], ["p"] * 8, 0, 4)
    assert b.stable(1) and not b.stable(2)
    assert discrete_capacity(b, ["remove"]) == sum(c.class_id == 1 for cs in b.components for c in cs)
    for kind in ("remove", "add", "recolor"):
        for seed in range(6):
            p, comp = _plan(b, kind, seed)
            changed = p.edit.classes if kind == "add" else [comp.components[p.edit.target[0]].class_id]
            assert changed == [1], (kind, seed)
    p, comp = _plan(b, "recolor")
    own = np.array([it.color_lab for it in b.items_of(1)])
    new = np.array(p.edit.params["color_lab"])
    assert np.sqrt(((own - new) ** 2).sum(1)).min() >= 30  # a colour no normal part of this class has


def _connector_bank(n: int = 8, size: int = 64) -> ComponentBank:
    """Each image: a white body (class 1) enclosing a purple lever (class 2), and a loose dot (class 3)."""
    rng = np.random.default_rng(0)
    imgs = np.zeros((n, size, size, 3), np.uint8)
    maps = np.zeros((n, size, size), np.uint8)
    imgs[:] = (40, 45, 50)
    for i in range(n):
        y, x = 8 + int(rng.integers(0, 6)), 8 + int(rng.integers(0, 6))
        maps[i, y:y + 16, x:x + 12] = 1
        maps[i, y + 5:y + 9, x + 3:x + 9] = 2  # enclosed by the body
        maps[i, 44:50, 44 + i % 4:50 + i % 4] = 3
    imgs[maps == 1] = (230, 230, 220)
    imgs[maps == 2] = (140, 60, 170)
    imgs[maps == 3] = (200, 120, 30)
    return ComponentBank(imgs, maps, [None] * n, [str(i) for i in range(n)], ["p"] * n, background=0, min_area=4)


def test_a_part_is_cut_by_its_own_pixels():
    from comgen.generate.component_bank import object_crop

    b = _connector_bank()
    comp = b.composition(0)
    j = next(k for k, c in enumerate(comp.components) if c.class_id == 1)
    _, mask, _, _ = object_crop(b.images[0], None, comp, j)
    assert mask.sum() == comp.components[j].area
    body = [it for it in b.items if it.class_id == 1][0]
    assert body.mask.sum() == body.area  # the enclosed lever is not part of the body's cut


def _frame_bank(n: int = 8, size: int = 64) -> ComponentBank:
    """Each image: a thin square frame (class 1, about 3x the area of a cell), a solid cell (class 2) and a
    small dot (class 3), as a pushpin grid's separators, one compartment and a pin."""
    maps = np.zeros((n, size, size), np.uint8)
    imgs = np.full((n, size, size, 3), (40, 45, 50), np.uint8)
    for i in range(n):
        maps[i, 4:58, 4:58] = 1
        maps[i, 6:56, 6:56] = 0  # a 2 px wide frame, 54 px across
        d = i % 3
        maps[i, 10 + d:24 + d, 10:24] = 2  # a 14 px cell
        maps[i, 36:43, 36 + d:43 + d] = 3  # a 7 px dot: half the cell's extent
    imgs[maps == 1] = (120, 120, 140)
    imgs[maps == 2] = (200, 200, 230)
    imgs[maps == 3] = (230, 180, 20)
    return ComponentBank(imgs, maps, [None] * n, [str(i) for i in range(n)], ["p"] * n, background=0, min_area=4)


def test_swap_pairs_parts_by_area_alone():
    b = _frame_bank()
    area = b.median_area
    assert area[1] <= 8 * area[2]  # the frame passes the area rule, whatever its extent
    assert any(1 in _plan(b, "swap", seed)[0].edit.classes for seed in range(8))


def _cells_bank(n: int = 8, size: int = 64) -> ComponentBank:
    """Each image: two compartments (class 1, 24 px) on the floor, each holding one pin (class 2, 5 px), as a
    pushpin grid's cells. The pins' host is a part class, not the background."""
    rng = np.random.default_rng(0)
    maps = np.zeros((n, size, size), np.uint8)
    imgs = np.full((n, size, size, 3), (40, 45, 50), np.uint8)
    for i in range(n):
        for x0 in (4, 34):
            maps[i, 20:44, x0:x0 + 24] = 1
            y, x = 22 + int(rng.integers(0, 16)), x0 + 2 + int(rng.integers(0, 16))
            maps[i, y:y + 5, x:x + 5] = 2
    imgs[maps == 1] = (170, 180, 200)
    imgs[maps == 2] = (230, 190, 30)
    return ComponentBank(imgs, maps, [None] * n, [str(i) for i in range(n)], ["p"] * n, background=0, min_area=4)


def test_a_pin_is_added_and_moved_on_a_host_that_is_itself_a_part_class():
    b = _cells_bank()
    assert all(it.host == 1 for it in b.items_of(2))
    for kind in ("add", "move"):
        seen = False
        for seed in range(20):
            p, comp = _plan(b, kind, seed)
            moved = p.edit.classes if kind == "add" else [comp.components[p.edit.target[0]].class_id]
            if moved != [2]:
                continue
            seen = True
            pin = p.components[-1].mask
            assert (b.class_maps[p.source][pin] == 1).all(), kind  # inside a compartment
            others = np.zeros_like(pin)
            for c in p.components[:-1]:
                if c.class_id == 2:
                    others |= c.mask
            assert not (dilate(others, 1) & pin).any(), kind  # not touching another pin: no merged blob
        assert seen, kind  # before, a pin's host was all taken by its own compartments, so neither ever ran


def test_a_sliver_of_a_class_is_not_counted_as_a_part():
    imgs, truth = toy_images(8, 64, 0)
    maps = truth.copy()
    maps[3, 0:2, 0:3] = 1  # a 6 px sliver of class 1 in one image, far below its parts' median area
    b = ComponentBank(imgs, maps, [None] * 8, [str(i) for i in range(8)], ["p"] * 8, 0, 4)
    class CountsSlivers(ComponentBank):
        fragment_share = 0.0

    with_sliver = CountsSlivers(imgs, maps, [None] * 8, [str(i) for i in range(8)], ["p"] * 8, 0, 4)
    plain = ComponentBank(imgs, truth, [None] * 8, [str(i) for i in range(8)], ["p"] * 8, 0, 4)
    assert len(with_sliver.components[3]) == len(plain.components[3]) + 1  # min_area alone keeps it
    assert [c.area for c in b.components[3]] == [c.area for c in plain.components[3]]
    assert (b.instance_maps[3][0:2, 0:3] == 0).all() and (b.class_maps[3][0:2, 0:3] == 1).all()
    assert len(b.items) == len(plain.items)
    comp = b.composition(3)
    assert all(c.mask.sum() == c.area for c in comp.components)  # the instance map was renumbered


def _placed_bank(n: int = 10, size: int = 64) -> ComponentBank:
    """Each image: two class-1 parts (6x6) at the same places up to 1 px, and two class-2 parts (6x6) anywhere;
    a class-3 part (6x6) at one place, in the first three images only (a rare class, not a loose one)."""
    rng = np.random.default_rng(0)
    maps = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for y, x in ((8, 8), (8, 44)):
            dy, dx = rng.integers(0, 2, 2)
            maps[i, y + dy:y + dy + 6, x + dx:x + dx + 6] = 1
        placed = 0
        while placed < 2:
            y, x = rng.integers(20, size - 8, 2)
            if not maps[i, y - 2:y + 8, x - 2:x + 8].any():
                maps[i, y:y + 6, x:x + 6] = 2
                placed += 1
        if i < 3:
            maps[i, 50:56, 4:10] = 3
    imgs = np.full((n, size, size, 3), (40, 45, 50), np.uint8)
    for k, col in ((1, (200, 60, 60)), (2, (60, 200, 60)), (3, (60, 60, 200))):
        imgs[maps == k] = col
    return ComponentBank(imgs, maps, [None] * n, [str(i) for i in range(n)], ["p"] * n, background=0, min_area=4)


def test_remove_acts_on_parts_wherever_they_lie():
    b = _placed_bank()
    assert any(2 in [comp.components[t].class_id for t in p.edit.target]
               for p, comp in (_plan(b, "remove", seed) for seed in range(25)))


def _twin_bank(n: int = 10, size: int = 64) -> ComponentBank:
    """Each image: four small class-2 parts (3x3, the levers) and one bar (4x24, the cable). The bar is class 2
    in the even images (clustered with the levers by colour) and class 3 in the odd ones."""
    maps = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for x in (4, 16, 28, 40):
            maps[i, 4:7, x:x + 3] = 2
        maps[i, 30:34, 10:34] = 2 if i % 2 == 0 else 3
    imgs = np.full((n, size, size, 3), (40, 45, 50), np.uint8)
    imgs[maps == 2] = (120, 70, 150)
    imgs[maps == 3] = (214, 40, 40)
    return ComponentBank(imgs, maps, [None] * n, [str(i) for i in range(n)], ["p"] * n, background=0, min_area=4)


def test_a_part_split_over_two_classes_by_colour_keeps_the_classes_it_was_given():
    plain = _twin_bank()
    assert plain.class_maps[0][31, 20] == 2  # the maps given to the bank are not changed
    assert not plain.stable(3) and plain.count_share[2] == 0.5


def _tray_bank(pins_per_image, n: int = 9, size: int = 64, washer: bool = True) -> ComponentBank:
    """Each image: a tray (class 1, a third of the image) carrying ``pins_per_image(i)`` pins (class 2, 5 px) and,
    with ``washer``, a loose washer (class 3, 5 px) on the floor. Surfaces are frozen as with the instance stage."""
    maps = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        maps[i, 8:44, 8:44] = 1
        for j in range(pins_per_image(i)):
            maps[i, 14 + 9 * j:19 + 9 * j, 14 + 3 * (i % 3):19 + 3 * (i % 3)] = 2
        if washer:
            maps[i, 52:57, 10 + 4 * (i % 4):15 + 4 * (i % 4)] = 3
    imgs = np.full((n, size, size, 3), (40, 45, 50), np.uint8)
    for k, col in ((1, (170, 180, 200)), (2, (230, 190, 30)), (3, (60, 160, 60))):
        imgs[maps == k] = col
    return ComponentBank(imgs, maps, [None] * n, [str(i) for i in range(n)], ["p"] * n, background=0, min_area=4,
                         part_classes=True)


def test_edits_stay_off_a_surface_while_another_part_has_a_steady_count():
    b = _tray_bank(lambda i: 3)
    assert b.frozen == {1}
    for kind in ("remove", "recolor", "replace", "move", "swap", "resize"):
        for seed in range(8):
            p, comp = _plan(b, kind, seed)
            touched = {comp.components[t].class_id for t in p.edit.target} | set(p.edit.classes)
            assert 1 not in touched, (kind, seed)
    maps, imgs = b.class_maps, b.images
    plain = ComponentBank(imgs, maps, [None] * len(maps), b.ids, b.paths, 0, 4)  # the colour classes' bank
    assert plain.frozen == set() and plain.stable(1)


def test_a_surface_stays_editable_when_no_other_part_has_a_steady_count():
    varying = _tray_bank(lambda i: i % 4)  # 0 to 3 pins: no steady count
    assert not varying.stable(2) and varying.frozen == {1}  # the washer (one per image) is a steady part
    alone = _tray_bank(lambda i: i % 4, washer=False)
    assert alone.frozen == set()
    assert any(comp.components[p.edit.target[0]].class_id == 1
               for p, comp in (_plan(alone, "recolor", seed) for seed in range(8)))


def test_a_carrier_is_never_removed_or_added_and_with_carriers_stay_only_recoloured():
    """The tray carries the pins: taking it away or pasting a second one leaves no scene a rule is about; nor, with
    ``carriers_stay``, does moving, resizing, swapping or pasting it in for a part, which buries pins under tray."""
    varying = _tray_bank(lambda i: i % 4, washer=False)  # the tray is the only class of steady count
    reasons = possible_kinds(varying)
    assert varying.carriers == {1} and "carrier" in reasons["remove"] and "carrier" in reasons["add"]
    steady = _tray_bank(lambda i: 3)
    args = (steady.images, steady.class_maps, [None] * len(steady), steady.ids, steady.paths, 0, 4)
    plain, still = ComponentBank(*args), ComponentBank(*args, carriers_stay=True)
    assert plain.carriers == still.carriers == {1} and plain.frozen == set()  # the colour classes
    tray = next(c for c in plain.components[0] if c.class_id == 1)
    assert plain.movable(tray) and not still.movable(tray)
    for bank, kinds in ((plain, ("remove", "add")), (still, ("remove", "add", "replace", "move", "swap", "resize"))):
        for kind in kinds:
            for seed in range(8):
                p, comp = _plan(bank, kind, seed)
                touched = {comp.components[t].class_id for t in p.edit.target} | set(p.edit.classes)
                assert 1 not in touched, (kind, seed)
        assert any(comp.components[p.edit.target[0]].class_id == 1  # the tray stays recolourable
                   for p, comp in (_plan(bank, "recolor", seed) for seed in range(8)))


def test_a_ring_carries_its_hole_but_is_no_surface():
    maps = np.zeros((8, 64, 64), np.uint8)
    for i in range(8):
        for x0 in (6, 36):
            maps[i, 20:32, x0 + i % 3:x0 + 12 + i % 3] = 1  # a 12 px ring ...
            maps[i, 24:28, x0 + 4 + i % 3:x0 + 8 + i % 3] = 2  # ... around a hole of another class
    imgs = np.full((8, 64, 64, 3), (40, 45, 50), np.uint8)
    imgs[maps == 1], imgs[maps == 2] = (220, 120, 160), (90, 90, 90)
    b = ComponentBank(imgs, maps, [None] * 8, [str(i) for i in range(8)], ["p"] * 8, 0, 4, part_classes=True)
    assert all(it.host == 1 for it in b.items_of(2)) and b.frozen == set()


def test_a_part_is_moved_only_where_its_class_rarely_lies():
    maps = _placed_bank().class_maps  # class 1 at two fixed places, class 2 anywhere, class 3 in three images
    imgs = _placed_bank().images
    b = ComponentBank(imgs, maps, [None] * len(maps), [str(i) for i in range(len(maps))], ["p"] * len(maps), 0, 4,
                      part_classes=True)
    assert list(b.rare_spots(1, [[11, 11], [11, 47], [40, 30]])) == [False, False, True]
    plain = ComponentBank(imgs, maps, [None] * len(maps), [str(i) for i in range(len(maps))], ["p"] * len(maps), 0, 4)
    assert plain.rare_spots(1, [[11, 11]]).all()  # the colour classes: no position evidence, moves as before
    moved = 0
    for seed in range(30):
        p, comp = _plan(b, "move", seed)
        c = comp.components[p.edit.target[0]]
        if c.class_id == 1:
            moved += 1
            assert b.rare_spots(1, [p.components[-1].centroid])[0]
    assert moved


def test_a_part_that_lies_anywhere_is_never_moved():
    maps = np.zeros((64, 64, 64), np.uint8)
    for i in range(64):  # one 8 px square per image; together the images tile the whole picture once
        y, x = 8 * (i // 8), 8 * (i % 8)
        maps[i, y:y + 8, x:x + 8] = 1
    imgs = np.full((64, 64, 64, 3), (40, 45, 50), np.uint8)
    imgs[maps == 1] = (230, 190, 30)
    ids = [str(i) for i in range(64)]
    b = ComponentBank(imgs, maps, [None] * 64, ids, ["p"] * 64, 0, 4, part_classes=True)
    assert not b.rare_spots(1, [[4, 4], [30, 50], [60, 12]]).any()
    rng = np.random.default_rng(0)
    assert all(plan_edit("move", b, i, b.composition(i), rng) is None for i in range(0, 64, 7))
    plain = ComponentBank(imgs, maps, [None] * 64, ids, ["p"] * 64, 0, 4)
    assert any(plan_edit("move", plain, i, plain.composition(i), rng) is not None for i in range(0, 64, 7))


def test_a_placed_part_never_touches_another_through_the_gap():
    """free_positions forgives a few pixels off the free area; none of them may lie in the gap around a part."""
    for b, neighbour_classes in ((make_bank(), None), (_cells_bank(), {2})):  # pins lie on cells, not off them
        gap = max(1, round(b.size / 64))
        for kind in ("add", "move"):
            for seed in range(40):
                p, _ = _plan(b, kind, seed)
                placed = p.components[-1].mask
                others = np.zeros_like(placed)
                for c in p.components[:-1]:
                    if neighbour_classes is None or c.class_id in neighbour_classes:
                        others |= c.mask
                assert not (dilate(others, gap) & placed).any(), (kind, seed)


def test_pick_clear_skips_a_draw_that_touches():
    from comgen.generate.edits import _pick_clear

    crowded = np.zeros((10, 10), bool)
    crowded[0, 0] = True
    mask = np.ones((2, 2), bool)
    for seed in range(10):
        assert _pick_clear(np.array([[0, 0], [5, 5]]), mask, crowded, np.random.default_rng(seed)) == (5, 5)
    assert _pick_clear(np.array([[0, 0]]), mask, crowded, np.random.default_rng(0)) is None
