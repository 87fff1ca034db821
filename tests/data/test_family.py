"""The procedural family: coverage of the report seeds, the rule checker's one-rule guarantee, the writer, the CLI."""

from __future__ import annotations

import collections
import json
import zlib

import numpy as np
import pytest

from comgen.cli import main
from comgen.data.family import DEV_SEEDS, REPORT_SEEDS, RULE_TYPES, draw_spec, family_name, parse_seeds
from comgen.data.family.category import family_category
from comgen.data.family.rules import broken_rules, holes
from comgen.data.readers import open_dataset
from comgen.data.synth import SynthConfig, generate_benchmark
from comgen.data.synth.truth import load_parts, load_truth, violates
from comgen.data.synth.writer import read_defect_names
from comgen.errors import ConfigError

SIZE = 256  # the family's default size: connectors' slots need it


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(repr(key).encode())])


def test_report_seeds_cover_the_rule_library():
    specs = [draw_spec(s) for s in REPORT_SEEDS]
    assert len(specs) >= 12 and not set(REPORT_SEEDS) & set(DEV_SEEDS)
    per_type = collections.Counter(k for s in specs for k in {r.kind for r in s.rules})
    assert len([k for k in RULE_TYPES if per_type[k] >= 3]) >= 6, per_type
    textures = [s for s in specs if s.kind == "texture"]
    assert len(textures) >= 2 and all(not s.rules for s in textures)
    for s in specs:
        if s.kind == "objects":
            assert 2 <= len(s.rules) <= 5 and 2 <= len(s.parts) <= 6, (s.seed, s.rules)
            assert len({p.name for p in s.parts}) == len(s.parts)
    assert {s.layout for s in specs} >= {"grid", "tray", "free", "row", "grain", "weave"}


def test_spec_is_a_pure_function_of_the_seed():
    assert draw_spec(1003) == draw_spec(1003)
    assert draw_spec(1003) != draw_spec(1004)


@pytest.mark.parametrize("seed", REPORT_SEEDS)
def test_every_logical_anomaly_breaks_exactly_one_rule(seed):
    """Normal scenes break no rule (nor the palette); each logical anomaly breaks exactly the rule that lists its
    defect; structural damage breaks none; every anomaly has a non-empty ground-truth region."""
    cat = family_category(family_name(seed))
    for i in range(3):
        scene = cat.render(_rng(seed, "good", i), SIZE, None)
        assert violates(cat.name, scene.labels, scene.image) == [], (seed, i)
    for defect in cat.logical:
        rule = next(k for k, r in enumerate(cat.spec.rules) if defect in r.defects)
        for i in range(2):
            scene = cat.render(_rng(seed, defect, i), SIZE, defect)
            assert [k for k, _ in broken_rules(cat.spec, scene.labels, scene.image)] == [rule], (seed, defect, i)
            assert any(r.any() for r in scene.regions), (seed, defect)
    for defect in cat.structural:
        scene = cat.render(_rng(seed, defect), SIZE, defect)
        assert cat.check(scene.labels, scene.image) == [], (seed, defect)
        assert scene.regions and scene.regions[0].any(), (seed, defect)


def test_checker_reads_connector_slots_and_sizes():
    mask = np.zeros((40, 60), bool)
    mask[10:30, 5:55] = True
    for x in (12, 24, 36):
        mask[16:24, x:x + 4] = False
    assert holes(mask) == 3


@pytest.fixture(scope="module")
def family_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("family")
    cfg = SynthConfig(size=128, n_train=3, n_validation=2, n_test=9, categories=[family_name(1001), family_name(1003)])
    generate_benchmark(out, cfg)
    return out


def test_writer_layout_and_truth(family_bench):
    ds = open_dataset(family_bench)
    assert ds.layout == "loco"
    texture, objects = family_name(1001), family_name(1003)
    assert {s.kind for s in ds.samples(texture, "test")} == {"good", "structural"}
    assert {s.kind for s in ds.samples(objects, "test")} == {"good", "logical", "structural"}
    parts = load_parts(family_bench / objects)
    assert set(parts["rule_types"]) <= set(RULE_TYPES) and parts["rule_types"]
    defects = read_defect_names(family_bench / objects)
    assert set(defects.values()) <= set(parts["defect_rules"])
    config = json.loads((family_bench / objects / "defects_config.json").read_text())
    assert {d["defect_name"] for d in config} == set(parts["logical"]) | set(parts["structural"])
    for s in ds.samples(objects, "test"):
        if s.is_anomalous:
            assert s.mask_paths, s.path
    assert load_truth(ds.samples(objects, "train")[0]).max() == len(parts["parts"])


def test_cli_family_and_bad_seeds(tmp_path, capsys):
    assert parse_seeds("report") == list(REPORT_SEEDS) and parse_seeds("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(ValueError):
        parse_seeds("a-b")
    main(["synth", str(tmp_path / "f"), "--family", "--seeds", "1001", "--size", "64", "--train", "2",
          "--validation", "1", "--test", "3", "--workers", "1"])
    assert (tmp_path / "f" / family_name(1001) / "truth" / "parts.json").is_file()
    assert main(["synth", str(tmp_path / "g"), "--family", "--seeds", "x"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds: 'x' is not a seed or a seed range like 1000-1011"
    with pytest.raises(ConfigError):
        SynthConfig(categories=["family_x"])


def test_outline_names_the_drawn_figure():
    """A four-sided polygon and a square of matching size cover the same pixels; other outlines differ."""
    from comgen.data.family.scene import shape_mask
    from comgen.data.family.spec import PartType
    from comgen.data.synth.draw import Canvas

    cv = Canvas(SIZE, _rng("outline"), (0.5, 0.5, 0.5))
    four = PartType(2, "a_polygon", "polygon", 0.05, ((1.0, 0.0, 0.0),), sides=4)
    square = PartType(3, "a_square", "square", 0.05, ((1.0, 0.0, 0.0),))
    hexagon = PartType(4, "a_hexagon", "polygon", 0.05, ((1.0, 0.0, 0.0),), sides=6)
    # the polygon's circumradius is 1.1 r and the square's side 1.5 r: scale the square to the polygon's side
    side_ratio = 1.1 * np.sqrt(2) / 1.5
    a = shape_mask(cv, four, 0.5, 0.5, 0.05, 45.0, 0)  # the polygon's vertices at 45 degrees: axis-aligned
    b = shape_mask(cv, square, 0.5, 0.5, 0.05 * side_ratio, 0.0, 0)
    c = shape_mask(cv, hexagon, 0.5, 0.5, 0.05, 45.0, 0)
    assert (a ^ b).sum() <= 0.02 * a.sum() < 0.2 * a.sum() < (c ^ b).sum()
    assert four.outline == square.outline != hexagon.outline
    assert PartType(5, "a_disc", "disc", 0.05, ((0.0, 0.0, 1.0),)).outline == "disc"
