"""RNA memory bank: retrieval sanity, exclusion, alignment correctness, coreset, save/load and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comgen.errors import ArtifactError, ConfigError, InputError
from comgen.features.coreset import greedy_k_center
from comgen.features.memory import MemoryBank, MemoryBankConfig, align_features, build_index
from comgen.masks.residual import calibrate_bank

from .conftest import SIZE, layout_image, normal_set


@pytest.fixture(scope="module")
def two_layout_bank(pretrained_backbone):
    imgs, ids, lay = normal_set(12, seed=0, layouts=(0, 1))
    bank = MemoryBank.build(imgs, ids, pretrained_backbone, MemoryBankConfig(image_size=SIZE, k=2))
    return bank, imgs, ids, lay


def test_augmented_copy_retrieves_its_source(two_layout_bank) -> None:
    bank, imgs, ids, _ = two_layout_bank
    rng = np.random.default_rng(5)
    for i in (0, 3, 7):
        aug = np.roll(imgs[i], 1, axis=0).astype(np.int16) + rng.integers(-4, 5, imgs[i].shape)
        aug = np.clip(aug * 1.05, 0, 255).astype(np.uint8)  # shift + noise + brightness
        idx, dist = bank.query(aug[None], k=1)
        assert bank.ids[int(idx[0, 0])] == ids[i]


def test_same_layout_is_nearest_and_self_is_excluded(two_layout_bank) -> None:
    bank, imgs, ids, lay = two_layout_bank
    test_imgs, _, test_lay = normal_set(4, seed=9, layouts=(0, 1))
    idx, dist = bank.query(test_imgs, k=2)
    assert idx.shape == (4, 2) and dist.shape == (4, 2)
    assert bool((dist[:, 0] <= dist[:, 1]).all())
    for b in range(4):
        assert all(lay[int(i)] == test_lay[b] for i in idx[b])
    # leave-one-out: a bank image never retrieves itself when excluded, and does when not
    own, _ = bank.query(imgs[:3], k=1)
    assert own[:, 0].tolist() == [0, 1, 2]
    excl, _ = bank.query(imgs[:3], k=3, exclude_ids=[ids[0], ids[1], {ids[2], ids[4]}])
    for b in range(3):
        assert b not in excl[b].tolist()
    assert 4 not in excl[2].tolist()
    # batched query equals one-by-one
    single = torch.cat([bank.query(test_imgs[b:b + 1], k=2)[0] for b in range(4)])
    assert torch.equal(single, idx)


def test_compressed_indexes_agree_with_flat() -> None:
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(600, 64)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    flat, k1 = build_index(desc, "flat")
    sq8, k2 = build_index(desc, "sq8")
    ivf, k3 = build_index(desc, "ivfpq", nlist=8, pq_m=16, nprobe=8)
    assert (k1, k2) == ("flat", "sq8") and k3.startswith("ivfpq")
    q = desc[:50] + rng.normal(scale=0.02, size=(50, 64)).astype(np.float32)
    truth = flat.search(q, 1)[1][:, 0]
    assert (truth == np.arange(50)).all()
    assert (sq8.search(q, 1)[1][:, 0] == truth).mean() >= 0.95
    assert (ivf.search(q, 1)[1][:, 0] == truth).mean() >= 0.8
    _, small = build_index(desc[:20], "ivfpq")
    assert small == "sq8"  # too few points to train IVF-PQ: says so


def test_align_recovers_shifted_features() -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 8, 10, 12)
    shifted = torch.roll(q, shifts=(1, -2), dims=(2, 3))
    noise = torch.randn(2, 8, 10, 12)
    refs = torch.stack([noise, shifted], dim=1)  # [B,k=2,...]
    out = align_features(q, refs, window=2)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert torch.allclose(out[:, 1][inner], q[inner])  # reference 1 holds every query patch within the window
    assert not torch.allclose(out[:, 0][inner], q[inner])  # reference 0 is noise: best noise patch, not the query
    # each aligned vector is a real reference vector from within the window
    cand = torch.stack([noise[0, :, 5 + dy, 5 + dx] for dy in range(-2, 3) for dx in range(-2, 3)])
    assert any(torch.allclose(out[0, 0, :, 5, 5], c) for c in cand)
    assert out.shape == refs.shape
    # window 0: the references unchanged; window too small: shifted by 2 columns is not recovered
    assert torch.equal(align_features(q, refs, window=0), refs)
    assert not torch.allclose(align_features(q, refs, window=1)[:, 1][inner], q[inner])
    with pytest.raises(InputError):
        align_features(q, refs[:, :, :4], window=1)


def test_bank_align_on_images(two_layout_bank) -> None:
    bank, imgs, ids, _ = two_layout_bank
    feats = bank.extract(imgs[:2])
    idx, _ = bank.query(feats, k=2)
    aligned = bank.align(feats, idx)
    assert [tuple(a.shape) for a in aligned] == [(2, 2, c, SIZE // s, SIZE // s)
                                                  for c, s in zip(bank.backbone.channels, bank.backbone.strides)]
    # the query itself is its own first reference: aligned features equal the query's (fp16 storage)
    assert torch.allclose(aligned[0][:, 0], feats[0], atol=2e-2, rtol=1e-2)


def test_greedy_k_center_covers_all_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10], [5, 5]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    sel = greedy_k_center(pts, 5, proj_dim=None)
    assert len(set(sel.tolist())) == 5
    assert sorted({int(i) // 50 for i in sel}) == [0, 1, 2, 3, 4]  # one per cluster; random picks would not
    assert torch.equal(greedy_k_center(pts, 1000), torch.arange(250))
    with pytest.raises(InputError):
        greedy_k_center(torch.zeros(0, 3), 2)


def test_coreset_bank(pretrained_backbone) -> None:
    imgs, ids, _ = normal_set(10, seed=1, layouts=(0, 1))
    bank = MemoryBank.build(imgs, ids, pretrained_backbone, MemoryBankConfig(image_size=SIZE, k=2, coreset=0.5))
    assert len(bank) == 5 and set(bank.ids) <= set(ids)
    assert all(p.shape[0] == 5 for p in bank.patches) and bank.index.ntotal == 5


def test_save_load_round_trip_and_refusals(tmp_path, two_layout_bank, random_backbone, pretrained_backbone) -> None:
    bank, imgs, ids, _ = two_layout_bank
    calibrate_bank(bank, max_images=6)
    d = bank.save(tmp_path / "bank")
    loaded = MemoryBank.load(d, pretrained_backbone, expect=bank.cfg)
    assert loaded.ids == bank.ids and loaded.stats == bank.stats
    assert all(torch.equal(a, b) for a, b in zip(loaded.patches, bank.patches))
    q = imgs[5:8]
    assert torch.equal(loaded.query(q)[0], bank.query(q)[0])
    # another backbone (random weights): refused, naming the field
    with pytest.raises(ArtifactError, match="fingerprint"):
        MemoryBank.load(d, random_backbone)
    # another config
    with pytest.raises(ArtifactError, match="k=5"):
        MemoryBank.load(d, pretrained_backbone, expect=bank.cfg.replace(k=5))
    # images of another size than the bank
    with pytest.raises(InputError, match="built at 64x64"):
        loaded.query(np.zeros((1, 32, 32, 3), np.uint8))
    # corrupt file
    p = d / "patches.safetensors"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupt"):
        MemoryBank.load(d, pretrained_backbone)
    # corrupt metadata, missing bank
    (d / "bank.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt bank metadata"):
        MemoryBank.load(d, pretrained_backbone)
    with pytest.raises(ArtifactError, match="no memory bank"):
        MemoryBank.load(tmp_path / "nowhere", pretrained_backbone)


def test_empty_bank_and_bad_requests(tmp_path, random_backbone) -> None:
    with pytest.raises(InputError, match="empty bank"):
        MemoryBank.build(np.zeros((0, SIZE, SIZE, 3), np.uint8), [], random_backbone, MemoryBankConfig(image_size=SIZE))
    imgs, ids, _ = normal_set(3, seed=2)
    bank = MemoryBank.build(imgs, ids, random_backbone, MemoryBankConfig(image_size=SIZE, k=2))
    with pytest.raises(InputError, match="only 3 images"):
        bank.query(imgs[:1], k=3, exclude_ids=[ids[0]])
    bank.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bank.json").read_text())
    meta["ids"], meta["n"] = [], 0
    (tmp_path / "b" / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="empty memory bank"):
        MemoryBank.load(tmp_path / "b", random_backbone)
    with pytest.raises(ConfigError):
        MemoryBankConfig(index="hnsw")


def test_build_resizes_to_working_size(random_backbone) -> None:
    rng = np.random.default_rng(0)
    big = np.stack([layout_image(rng, 0, size=96) for _ in range(3)])
    bank = MemoryBank.build(big, ["a", "b", "c"], random_backbone, MemoryBankConfig(image_size=SIZE, k=1))
    assert bank.patches[0].shape[-1] == SIZE // 4


def test_long_descriptors_are_projected(pretrained_backbone) -> None:
    """Wide backbones: the descriptor is randomly projected to global_dim and retrieval still works."""
    imgs, ids, _ = normal_set(8, seed=4, layouts=(0, 1))
    cfg = MemoryBankConfig(image_size=SIZE, k=1, global_layer=-1, global_dim=96)
    bank = MemoryBank.build(imgs, ids, pretrained_backbone, cfg)
    assert bank.desc.shape == (8, 96) and np.allclose(np.linalg.norm(bank.desc, axis=1), 1.0, atol=1e-5)
    idx, _ = bank.query(imgs)
    assert idx[:, 0].tolist() == list(range(8))
    with pytest.raises(ConfigError, match="global_layer"):
        MemoryBank.build(imgs, ids, pretrained_backbone, cfg.replace(global_layer=5))
