"""Baselines (CutPaste, DRAEM-style, NSA-style), Perlin noise and the GIMP .pat parser."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from comgen.errors import ConfigError, DatasetError, InputError
from comgen.generate.baselines import (CutPasteConfig, CutPasteGenerator, DraemConfig, DraemGenerator, NsaConfig,
                                       NsaGenerator)
from comgen.generate.baselines.perlin import perlin_mask, perlin_noise
from comgen.generate.baselines.textures import load_textures, parse_pat, read_pat, texture_crop
from comgen.generate.protocol import AnomalyGenerator

SIZE = 48


def _images(n: int = 4, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Smooth, textured normal images with a coloured disc: distinct enough that pasting changes pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.uint8), (5, 5), 1.5)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        cv2.circle(img, (int(cx), int(cy)), size // 6, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
        out.append(img)
    return np.stack(out)


def _fitted(cls, cfg=None):
    gen = cls(cfg, image_size=SIZE)
    gen.fit_images(_images(), [f"img{i}.png" for i in range(4)])
    return gen


GENERATORS = [CutPasteGenerator, DraemGenerator, NsaGenerator]


@pytest.mark.parametrize("cls", GENERATORS)
def test_baseline_masks_are_non_empty_and_cover_the_changes(cls) -> None:
    gen = _fitted(cls, DraemConfig(textures="skimage") if cls is DraemGenerator else None)
    assert isinstance(gen, AnomalyGenerator)
    images = _images()
    anomalies = list(gen.generate(12, np.random.default_rng(3)))
    assert len(anomalies) == 12
    for a in anomalies:
        src = images[int(a.source[3])]
        assert a.image.shape == src.shape and a.image.dtype == np.uint8
        assert a.mask.shape == (SIZE, SIZE) and a.mask.dtype == bool
        assert 0 < a.mask.sum() < SIZE * SIZE
        assert a.kind == "structural" and a.backend == gen.name and a.density is None
        changed = np.any(a.image != src, axis=2)
        if cls is NsaGenerator:
            (dy, dx), (dh, dw) = a.edit.params["dst"], a.edit.params["size"]
            rect = np.zeros_like(a.mask)
            rect[dy:dy + dh, dx:dx + dw] = True
            assert not (changed & ~rect).any(), "Poisson blending leaked outside the pasted rectangle"
            strong = np.abs(a.image.astype(int) - src.astype(int)).max(axis=2) > gen.cfg.tau * 255
            assert not (strong & ~a.mask).any()
            assert a.mask.sum() > 0 and (a.mask & rect).sum() == a.mask.sum()
        else:
            assert not (changed & ~a.mask).any(), "pixels changed outside the mask"
            assert changed.sum() > 0.3 * a.mask.sum()


@pytest.mark.parametrize("cls", GENERATORS)
def test_baselines_are_deterministic_given_the_rng(cls) -> None:
    cfg = DraemConfig(textures="skimage") if cls is DraemGenerator else None
    a = [x.image for x in _fitted(cls, cfg).generate(3, np.random.default_rng(7))]
    b = [x.image for x in _fitted(cls, cfg).generate(3, np.random.default_rng(7))]
    c = [x.image for x in _fitted(cls, cfg).generate(3, np.random.default_rng(8))]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_cutpaste_variants_and_params() -> None:
    gen = _fitted(CutPasteGenerator)
    kinds = {a.edit.kind: a for a in gen.generate(20, np.random.default_rng(0))}
    assert set(kinds) == {"patch", "scar"}
    assert kinds["scar"].edit.params["variant"] == "scar" and "angle" in kinds["scar"].edit.params
    patch = kinds["patch"]
    ph, pw = patch.edit.params["size"]
    assert patch.mask.sum() == ph * pw
    only_scar = _fitted(CutPasteGenerator, CutPasteConfig(variants=("scar",)))
    assert {a.edit.kind for a in only_scar.generate(5, np.random.default_rng(0))} == {"scar"}
    with pytest.raises(ConfigError, match="variants"):
        CutPasteConfig(variants=("blob",))
    with pytest.raises(ConfigError, match="patch_area"):
        CutPasteConfig.from_dict({"patch_area": [0.2, 0.9]})


def test_nsa_uses_another_image_and_validates_config() -> None:
    gen = _fitted(NsaGenerator, NsaConfig(clone="normal"))
    for a in gen.generate(5, np.random.default_rng(1)):
        assert a.edit.params["other"] != a.source
        assert a.edit.params["clone"] in ("normal", "paste")
    with pytest.raises(ConfigError, match="clone"):
        NsaConfig(clone="weird")


def test_generators_refuse_bad_input() -> None:
    gen = CutPasteGenerator(image_size=SIZE)
    with pytest.raises(InputError, match="not fitted"):
        next(gen.generate(1, np.random.default_rng(0)))
    with pytest.raises(InputError, match="uint8"):
        gen.fit_images(np.zeros((2, SIZE, SIZE, 3), np.float32))
    with pytest.raises(InputError, match="square"):
        gen.fit_images(np.zeros((2, SIZE, SIZE + 2, 3), np.uint8))
    with pytest.raises(InputError):
        gen.fit_images(np.zeros((0, SIZE, SIZE, 3), np.uint8))


def test_perlin_noise_any_shape_and_mask() -> None:
    rng = np.random.default_rng(0)
    noise = perlin_noise((37, 53), (3, 5), rng)
    assert noise.shape == (37, 53) and noise.dtype == np.float32
    assert np.abs(noise).max() <= 1.5 and noise.std() > 0.05
    # gradient noise is zero on lattice points and smooth in between
    assert abs(float(noise[0, 0])) < 1e-6
    assert np.abs(np.diff(noise, axis=1)).max() < 0.5
    mask, params = perlin_mask(64, rng, threshold=0.3)
    assert mask.dtype == bool and mask.shape == (64, 64)
    assert {"perlin_res_y", "perlin_res_x", "perlin_angle"} <= set(params)
    assert params["perlin_res_y"] <= 16  # capped so cells stay >= 4 px at 64 px


def _pat_bytes(pixels: np.ndarray, name: str = "Test pattern") -> bytes:
    h, w = pixels.shape[:2]
    depth = 1 if pixels.ndim == 2 else pixels.shape[2]
    name_b = name.encode() + b"\0"
    header = struct.pack(">5I4s", 24 + len(name_b), 1, w, h, depth, b"GPAT") + name_b
    return header + pixels.astype(np.uint8).tobytes()


def test_pat_parser_reads_rgb_gray_and_rgba(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    name, arr = parse_pat(_pat_bytes(rgb, "Burlap"))
    assert name == "Burlap" and np.array_equal(arr, rgb)
    gray = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    assert np.array_equal(parse_pat(_pat_bytes(gray))[1], np.repeat(gray[..., None], 3, axis=2))
    rgba = rng.integers(0, 256, (3, 3, 4), dtype=np.uint8)
    assert np.array_equal(parse_pat(_pat_bytes(rgba))[1], rgba[..., :3])
    path = tmp_path / "p.pat"
    path.write_bytes(_pat_bytes(rgb))
    assert np.array_equal(read_pat(path), rgb)


def test_pat_parser_refuses_bad_files(tmp_path: Path) -> None:
    good = _pat_bytes(np.zeros((4, 4, 3), np.uint8))
    bad = tmp_path / "bad.pat"
    bad.write_bytes(good[:20] + b"XXXX" + good[24:])
    with pytest.raises(DatasetError, match="magic") as err:
        read_pat(bad)
    assert str(bad) in str(err.value)
    bad.write_bytes(good[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        read_pat(bad)
    bad.write_bytes(b"GPAT")
    with pytest.raises(DatasetError, match="header"):
        read_pat(bad)


def test_texture_sources(tmp_path: Path) -> None:
    folder = tmp_path / "dtd" / "images" / "banded"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (folder / "a.pat").write_bytes(_pat_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    cv2.imwrite(str(folder / "b.png"), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    textures, label = load_textures(str(tmp_path / "dtd"))
    assert len(textures) == 2 and label.startswith("folder:")
    crop, _ = texture_crop(textures[0], 32, rng)  # an 8 px tile is tiled up to 32 px
    assert crop.shape == (32, 32, 3)
    sk, label = load_textures("skimage")
    assert label == "skimage" and len(sk) == 3 and sk[0].shape[2] == 3
    with pytest.raises(ConfigError, match="not found"):
        load_textures(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        load_textures(str(tmp_path / "empty"))
    gen = _fitted(DraemGenerator, DraemConfig(textures=str(tmp_path / "dtd")))
    a = next(gen.generate(1, np.random.default_rng(0)))
    assert a.edit.params["texture_source"].startswith("folder:") and a.mask.any()


def test_fit_from_samples(tmp_path: Path) -> None:
    pytest.importorskip("comgen.data.imageio")
    from comgen.records import Sample

    samples = []
    for i, img in enumerate(_images(3, size=40)):
        path = tmp_path / f"{i:03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        samples.append(Sample(path=path, category="toy", split="train", label="good", kind="good",
                              image_id=f"{i:03d}"))
    gen = CutPasteGenerator(image_size=32)
    gen.fit(samples)
    a = next(gen.generate(1, np.random.default_rng(0)))
    assert a.image.shape == (32, 32, 3) and a.source in {str(s.path) for s in samples}


def test_nsa_on_uniform_images_still_returns_a_mask() -> None:
    gen = NsaGenerator(image_size=32)
    gen.fit_images(np.full((2, 32, 32, 3), 128, np.uint8))
    a = next(gen.generate(1, np.random.default_rng(0)))
    assert a.edit.params["clone"] == "paste" and a.mask.any()
