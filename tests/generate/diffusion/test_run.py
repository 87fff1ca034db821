"""``learn_tokens_into_run`` + ``write_generated``: the diffusion back-end through a real run directory."""

from __future__ import annotations

import json

import pytest

from comgen.generate.diffusion.config import DiffusionConfig, SampleConfig, TokenLearnConfig


@pytest.fixture(scope="module")
def synth_train(tmp_path_factory):
    synth = pytest.importorskip("comgen.data.synth")
    from comgen.data.readers import open_dataset

    root = tmp_path_factory.mktemp("synth")
    cat = synth.CATEGORIES[0]
    synth.generate_benchmark(root, synth.SynthConfig(size=64, n_train=8, n_validation=1, n_test=1, seed=0,
                                                     categories=[cat]))
    return root, cat, open_dataset(root).samples(cat, "train")


def test_learn_into_run_then_generate_writes_the_common_format(synth_train, tmp_path):
    from comgen.generate.config import GenerateConfig
    from comgen.generate.diffusion.generator import DiffusionGenerator
    from comgen.generate.diffusion.run import STAGE, learn_tokens_into_run
    from comgen.generate.diffusion.tiny import build_tiny_sd
    from comgen.data.generated import load_gate, load_item, read_generated
    from comgen.generate.writer import write_generated
    from comgen.rundir import RunDir

    root, cat, samples = synth_train
    sd = build_tiny_sd(tmp_path / "sd")
    cfg = DiffusionConfig(sd_model=str(sd), image_size=64, device="cpu",
                          learn=TokenLearnConfig(steps=3, batch_size=2, checkpoint_every=2),
                          sample=SampleConfig(steps=3, strength=0.5, guidance_scale=1.0, density_filter=False))
    run = RunDir.create(tmp_path / "run", root, cat)
    learn_tokens_into_run(run, samples, cfg)  # no component model: falls back to the synth truth maps
    meta = json.loads((run.root / "diffusion" / "learned.json").read_text())
    assert meta["steps"] == 3 and meta["tokens"][-1] == "<bg>"
    assert run.stage_done(STAGE, cfg.learn.hash())

    gen = DiffusionGenerator(cfg)
    gen.fit(samples, run)
    assert gen.history == {}  # tokens were reused, not relearned
    gcfg = GenerateConfig(backend="diffusion", n=2, image_size=64, chunk=2, preview=2, diffusion=cfg.to_dict())
    out = run.generated("diffusion")
    summary = write_generated(gen, out, gcfg)
    assert summary.written == 2
    lines = read_generated(out)
    assert len(lines) == 2 and all(ln["backend"] == "diffusion" and ln["gate"] for ln in lines)
    image, mask = load_item(out, lines[0])
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.any()
    gate = load_gate(out, lines[0])
    assert gate is not None and (mask == (gate >= 0.5)).mean() > 0.99  # mask = thresholded soft gate
    assert lines[0]["source"].endswith(".png") and "<" in lines[0]["prompt"]


def test_fit_uses_the_runs_component_model(synth_train, tmp_path):
    """With RUN/components (``comgen learn``), tokens bind the learned classes and the density filter is fitted."""
    from comgen.components.features import LearnerConfig
    from comgen.components.learner import learn_into_run
    from comgen.generate.diffusion.generator import DiffusionGenerator
    from comgen.generate.diffusion.tiny import build_tiny_sd
    from comgen.rundir import RunDir

    root, cat, samples = synth_train
    run = RunDir.create(tmp_path / "run", root, cat)
    model = learn_into_run(run, samples, LearnerConfig(image_size=64, k=3, use_backbone=False))
    cfg = DiffusionConfig(sd_model=str(build_tiny_sd(tmp_path / "sd")), image_size=64, device="cpu",
                          learn=TokenLearnConfig(steps=2, batch_size=2))
    gen = DiffusionGenerator(cfg)
    gen.fit(samples, run)
    assert gen.tokens == [f"<c{k}>" for k in range(1, model.num_classes)] + ["<bg>"]
    assert gen.density is not None and gen.component_model is not None
    assert (run.root / "diffusion" / "learned.json").is_file()


def test_cli_learn_and_generate_with_the_diffusion_backend(synth_train, tmp_path):
    """`comgen learn --backend diffusion --sd-model` then `comgen generate --backend diffusion --sd-model`."""
    from comgen.cli import main
    from comgen.generate.config import GenerateConfig
    from comgen.generate.diffusion.tiny import build_tiny_sd
    from comgen.data.generated import read_generated

    root, cat, _ = synth_train
    sd = build_tiny_sd(tmp_path / "sd")
    cfg = DiffusionConfig(device="cpu", learn=TokenLearnConfig(steps=2, batch_size=2),
                          sample=SampleConfig(steps=2, strength=0.5, guidance_scale=1.0, density_filter=False))
    cfg.save(tmp_path / "diffusion.yaml")
    GenerateConfig(backend="diffusion", n=2, chunk=2, preview=2, diffusion=cfg.to_dict()).save(tmp_path / "gen.yaml")
    run = tmp_path / "run"
    base = [str(root), "--category", cat, "--out", str(run), "--image-size", "64"]
    assert main(["learn", *base, "--k", "3", "--no-backbone", "--backend", "diffusion", "--sd-model", str(sd),
                 "--diffusion-config", str(tmp_path / "diffusion.yaml")]) == 0
    assert (run / "diffusion" / "learned.json").is_file()
    assert main(["generate", *base, "--backend", "diffusion", "--sd-model", str(sd),
                 "--config", str(tmp_path / "gen.yaml")]) == 0
    assert len(read_generated(run / "generated" / "diffusion")) == 2
    assert main(["learn", *base, "--backend", "diffusion"]) == 2  # no --sd-model: one-line error
