import numpy as np
import pytest

from comgen.components.features import LearnerConfig
from comgen.errors import ConfigError, InputError
from comgen.generate.component_bank import dilate
from comgen.generate.compositional import CompositionalGenerator, render
from comgen.generate.config import CompositionalConfig, GenerateConfig
from comgen.generate.edits import plan_edit
from comgen.generate.protocol import AnomalyGenerator
from comgen.generate.writer import write_generated
from comgen.records import LOGICAL_EDITS, STRUCTURAL_EDITS
from comgen.rundir import RunDir
from tests.components.toy import toy_samples
from tests.generate.test_edits import make_bank

LEARN = LearnerConfig(use_backbone=False, k_min=2, k_max=4, select_pixels=3000)


def cfg(**kw):
    return CompositionalConfig(image_size=64, learner=LEARN, **kw)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return toy_samples(tmp_path_factory.mktemp("toy"), 10, 64)


@pytest.fixture(scope="module")
def gen(samples):
    g = CompositionalGenerator(cfg())
    g.fit(samples)
    return g


@pytest.fixture(scope="module")
def anomalies(gen):
    return list(gen.generate(40, np.random.default_rng(0)))


def test_protocol_and_records(gen, anomalies):
    assert isinstance(gen, AnomalyGenerator) and gen.name == "compositional"
    assert len(anomalies) == 40
    kinds = {a.edit.kind for a in anomalies}
    assert len(kinds & set(LOGICAL_EDITS)) >= 4 and kinds & set(STRUCTURAL_EDITS)
    for a in anomalies:
        assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
        assert a.mask.shape == (64, 64) and a.mask.dtype == bool and a.mask.sum() >= 2
        assert a.kind == ("logical" if a.edit.is_logical else "structural")
        g = a.extra["gate"]
        assert g.shape == (64, 64) and 0 <= g.min() and g.max() == pytest.approx(1.0)
        assert a.extra["prompt"].startswith("a photo of") and a.source.endswith(".png")
        assert "truth_labels" not in a.extra  # toy samples have no synth truth


def test_logical_anomalies_are_low_density(gen, anomalies):
    logical = [a for a in anomalies if a.kind == "logical"]
    assert logical and all(a.density < gen.density.threshold for a in logical)
    share = sum(a.kind == "logical" for a in anomalies) / len(anomalies)
    assert abs(share - gen.cfg.logical_ratio) <= 0.2  # 40 draws: binomial sd ~0.08


def test_pixels_change_only_near_the_mask(gen, anomalies):
    srcs = {p: im for p, im in zip(gen.bank.paths, gen.bank.images)}
    for a in anomalies:
        diff = np.abs(a.image.astype(int) - srcs[a.source].astype(int)).sum(-1) > 0
        assert not (diff & ~dilate(a.mask, 3)).any(), a.edit.kind
        assert diff[a.mask].mean() > 0.2, a.edit.kind


def test_unique_and_deterministic(samples, gen, anomalies):
    keys = {(a.source, a.edit.kind, tuple(a.edit.target), str(sorted(a.edit.params.items()))) for a in anomalies}
    assert len(keys) == len(anomalies)
    g2 = CompositionalGenerator(cfg())
    g2.fit(samples)
    again = list(g2.generate(40, np.random.default_rng(0)))
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(anomalies, again))


def test_ablation_switches(samples):
    g = CompositionalGenerator(cfg(edit_kinds=["remove", "add"], low_density=False))
    g.fit(samples)
    out = list(g.generate(12, np.random.default_rng(1)))
    assert {a.edit.kind for a in out} <= {"remove", "add"} and len(out) == 12


def test_more_unique_than_exist(samples):
    g = CompositionalGenerator(cfg(edit_kinds=["remove"], low_density=False))
    g.fit(samples)
    assert g.capacity() == 30  # 10 images x 3 parts
    with pytest.raises(InputError, match="only 30 distinct"):
        g.generate(31, np.random.default_rng(0))
    out = list(g.generate(30, np.random.default_rng(0)))
    assert len(out) == 30
    with pytest.raises(InputError, match="only 0 distinct"):
        g.generate(1, np.random.default_rng(0))
    g.resume_state([{"source": a.source, "kind": a.edit.kind, "target": a.edit.target, "classes": a.edit.classes,
                     "params": a.edit.params, "backend": "compositional"} for a in out[:10]])
    assert g.capacity() == 20


def test_impossible_kinds_and_bad_input(samples, tmp_path):
    with pytest.raises(InputError, match="at least 8"):
        CompositionalGenerator(cfg()).fit(samples[:5])
    with pytest.raises(InputError, match="no training samples"):
        CompositionalGenerator(cfg()).fit([])
    with pytest.raises(InputError, match="not fitted"):
        CompositionalGenerator(cfg()).generate(1, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        cfg(edit_kinds=["explode"])
    from comgen.io import write_png
    from comgen.records import Sample

    flat = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        write_png(p, np.full((64, 64, 3), 90, np.uint8))
        flat.append(Sample(path=p, category="u", split="train", label="good", kind="good", image_id=str(i)))
    with pytest.raises(InputError, match="uniform"):
        CompositionalGenerator(cfg()).fit(flat)


def test_swap_impossible_with_one_class(samples, tmp_path):
    g = CompositionalGenerator(cfg(edit_kinds=["swap", "replace"]))
    lc = LEARN.replace(k=2, k_min=2, k_max=2, instances=False)  # background + one merged part class
    g.cfg = g.cfg.replace(learner=lc)
    with pytest.raises(InputError, match="no requested edit kind is possible"):
        g.fit(samples)


def test_truth_labels_follow_the_edit():
    bank = make_bank()
    rng = np.random.default_rng(3)
    for kind in ("remove", "add", "move", "replace"):
        for _ in range(30):
            i = int(rng.integers(len(bank)))
            p = plan_edit(kind, bank, i, bank.composition(i), rng)
            if p is not None:
                break
        img, mask, truth, ref = render(p, bank, feather=0.0)
        counts = [len(np.unique(__import__("cv2").connectedComponents((truth == k).astype(np.uint8))[1])) - 1
                  for k in (1, 2)]
        want = np.bincount([c.class_id for c in p.components], minlength=3)[1:]
        assert counts == want.tolist(), kind
        assert ref != i


def test_components_reused_from_run(samples, tmp_path):
    run = RunDir.create(tmp_path / "run", tmp_path, "toy")
    g = CompositionalGenerator(cfg())
    g.fit(samples, run)
    assert (run.components / "model.safetensors").is_file()
    g2 = CompositionalGenerator(cfg())
    g2.fit(samples, run)
    assert np.array_equal(g2.model.centroids, g.model.centroids)


def test_poisson_blend_renders_inside_mask():
    bank = make_bank()
    rng = np.random.default_rng(5)
    for _ in range(30):
        i = int(rng.integers(len(bank)))
        p = plan_edit("add", bank, i, bank.composition(i), rng)
        if p is not None and p.pastes[0].mask.sum() > 16:
            break
    img, mask, _, _ = render(p, bank, blend="poisson")
    diff = np.abs(img.astype(int) - bank.images[i].astype(int)).sum(-1) > 0
    assert mask.any() and diff[mask].mean() > 0.5
    assert not (diff & ~dilate(mask, 4)).any()


def test_lighting_gain_maps_one_exposure_onto_another():
    from comgen.generate.compositional import lighting_gain

    rng = np.random.default_rng(0)
    src = rng.integers(60, 160, (32, 32, 3)).astype(np.uint8)
    dst = np.clip(src.astype(np.float32) * np.array([1.2, 1.0, 0.9]), 0, 255).astype(np.uint8)
    everywhere = np.ones((32, 32), bool)
    assert np.allclose(lighting_gain(dst, everywhere, src, everywhere), [1.2, 1.0, 0.9], atol=0.02)
    assert np.allclose(lighting_gain(dst, np.zeros((32, 32), bool), src, everywhere), 1.0)  # too few pixels
    assert lighting_gain(dst * 0 + 255, everywhere, src // 4, everywhere).max() <= 1.35  # clipped


def test_default_structural_edit_is_transplant_and_the_others_stay_available(samples):
    """The five hand-made structural edits taught their own cues (generator benchmark: fused structural AUROC
    0.841 with all six, 0.870 with transplant alone), so by default only transplant is made."""
    from comgen.records import ALL_EDITS, DEFAULT_STRUCTURAL_EDITS

    assert DEFAULT_STRUCTURAL_EDITS == ("transplant",)
    assert cfg().edit_kinds == [*LOGICAL_EDITS, "transplant"]
    assert cfg(edit_kinds=list(ALL_EDITS)).edit_kinds == list(ALL_EDITS)
    g = CompositionalGenerator(cfg(logical_ratio=0.0))
    g.fit(samples)
    assert {a.edit.kind for a in g.generate(6, np.random.default_rng(0))} == {"transplant"}


def test_surfaces_are_frozen_only_with_the_instance_stage(samples, monkeypatch):
    import comgen.generate.compositional as compositional

    seen = []

    class Spy(compositional.ComponentBank):
        def __init__(self, *args, **kw):
            seen.append(kw.get("part_classes", False))
            super().__init__(*args, **kw)

    monkeypatch.setattr(compositional, "ComponentBank", Spy)
    for instances in (False, True):
        g = CompositionalGenerator(CompositionalConfig(image_size=64, learner=LEARN.replace(instances=instances)))
        g.fit(samples)
        assert (g.model.instance_stage is not None) == instances
    assert seen == [False, True]


def test_kept_logical_reads_the_low_density_bar(samples):
    g = CompositionalGenerator(cfg())
    g.fit(samples)
    assert g._kept_logical() > 0 and g.classes_of != "instance stage"
    assert g._kept_logical() == g._kept_logical()  # a fixed probe: a resumed run weighs alike
    g.density.threshold = -np.inf  # no composition is rare enough
    assert g._kept_logical() == 0
    with pytest.raises(ConfigError, match="instance_fallback_share"):
        cfg(instance_fallback_share=1.5)


def _weighed(monkeypatch, colour: int, instance: int, **kw) -> tuple[CompositionalGenerator, list[bool]]:
    """A generator fitted while the probe counts ``colour`` kept edits for the colour classes and ``instance``
    for the instance stage's; also which models were probed."""
    asked = []

    def kept(self):
        asked.append(self.model.instance_stage is not None)
        return instance if asked[-1] else colour

    monkeypatch.setattr(CompositionalGenerator, "_kept_logical", kept)
    g = CompositionalGenerator(cfg(**{"carriers_stay": True, **kw}))
    return g, asked


def test_edits_act_on_the_instance_stage_where_the_colour_classes_keep_far_fewer(samples, monkeypatch, tmp_path):
    """A fixture of the parts' colour takes them into its colour class, so few logical edits of the colour classes
    pass Low-Density Sampling: the edits act on the instance stage's classes, and say so in their records."""
    g, asked = _weighed(monkeypatch, 3, 100)
    g.fit(samples)
    assert asked == [False, True] and g.classes_of == "instance stage" and g.model.instance_stage is not None
    assert "3 logical edits" in g.fit_note and "100" in g.fit_note
    out = list(g.generate(6, np.random.default_rng(0)))
    assert out and all(a.edit.params["classes_of"] == "instance stage" for a in out)
    said = []
    write_generated(g, tmp_path / "generated", GenerateConfig(backend="compositional", n=2, image_size=64),
                    log=said.append)
    assert any("instance stage's classes" in line for line in said)


@pytest.mark.parametrize("colour, instance, probed", [(30, 100, [False, True]),  # not far fewer
                                                      (0, 0, [False, True]),  # neither keeps one
                                                      (200, 0, [False])])  # no count could outweigh 200
def test_the_colour_classes_stay_unless_they_keep_far_fewer(samples, monkeypatch, colour, instance, probed):
    g, asked = _weighed(monkeypatch, colour, instance)
    g.fit(samples)
    assert asked == probed and g.model.instance_stage is None and g.classes_of != "instance stage"
    assert not g.fit_note and all("classes_of" not in a.edit.params for a in g.generate(4, np.random.default_rng(0)))


def test_without_carriers_stay_nothing_is_weighed(samples, monkeypatch):
    g, asked = _weighed(monkeypatch, 0, 100, carriers_stay=False)
    g.fit(samples)
    assert asked == [] and g.model.instance_stage is None and not g.bank.carriers_stay
