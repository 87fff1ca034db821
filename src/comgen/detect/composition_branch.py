"""Composition branch: a small network that reads the component model's class map and says what is out of place.

Why (the design of SALAD, ICCV 2025): the density prior scores a composition by hand-made statistics (counts, areas,
positions, colours), and the aligned network compares pixels with references; neither learns what a *wrong
composition* looks like. This branch is trained on the class maps of the training normals against the same maps
after ComGEN's logical edits (``components/map_edits.py``: thousands of cheap perturbations) and against the class
maps of ComGEN's generated anomalies. Its input is the class map as one-hot area fractions on a coarse grid, with
coordinate channels (so position is visible) and the per-class instance counts and areas (so counts are visible);
it outputs an anomaly map on the grid and an image logit from a global head.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from comgen.components.map_edits import class_stats, perturb, small_maps
from comgen.config import ConfigBase
from comgen.detect.artifacts import RETRAIN, check_finite, finite_number, read_json_object
from comgen.errors import ArtifactError, ConfigError
from comgen.io import atomic_path, atomic_write_json

BRANCH_DIR = "composition_branch"  # inside the detector directory


@dataclass
class CompositionBranchConfig(ConfigBase):
    """Size and schedule of the composition branch."""

    # Off by default: on the family's development seeds it ranked real logical anomalies at about chance
    # (docs/experiments.md); it stays available for categories where it helps.
    enabled: bool = False
    grid: int = 32  # class maps enter as one-hot area fractions on a grid x grid raster
    edit_size: int = 64  # resolution at which the class maps are edited
    width: int = 32
    epochs: int = 24
    batch_size: int = 64
    lr: float = 3e-3
    edits_per_normal: int = 2  # edited copies of each training normal per epoch
    use_generated: bool = True  # also learn from the class maps of the generated anomalies
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("grid", 8), ("edit_size", 8), ("width", 4), ("epochs", 1), ("batch_size", 1),
                          ("edits_per_normal", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"detector.composition.{name}", f"must be an integer >= {low}, got {v!r}")
        if self.grid % 8 or self.edit_size % self.grid:
            raise ConfigError("detector.composition.grid", "must be a multiple of 8 that divides edit_size, got "
                                                           f"{self.grid} and {self.edit_size}")
        finite_number(self.lr, "detector.composition.lr", error=ConfigError, gt=0.0)


# --- inputs ---------------------------------------------------------------------------------------------------
def encode(maps: np.ndarray, num_classes: int, grid: int, min_area: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs of class maps [N,E,E]: one-hot area fractions with coordinates [N,K+2,G,G], and per-class
    instance counts (log1p) and areas [N,2(K-1)]."""
    n, e, _ = maps.shape
    onehot = torch.from_numpy(maps.astype(np.int64))
    onehot = F.one_hot(onehot, num_classes).permute(0, 3, 1, 2).float()
    frac = F.avg_pool2d(onehot, e // grid)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
    coords = torch.stack([ys, xs]).expand(n, 2, grid, grid)
    return torch.cat([frac, coords], 1), torch.from_numpy(class_stats(maps, num_classes, min_area))


class CompositionNet(nn.Module):
    """Encoder over the class-map raster; a map head at half the grid and a global head with the counts."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        w = width

        def block(a: int, b: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1), nn.ReLU(inplace=True))

        self.enc1 = block(num_classes + 2, w)
        self.enc2 = block(w, 2 * w, 2)
        self.enc3 = block(2 * w, 2 * w, 2)
        self.enc4 = block(2 * w, 4 * w, 2)
        self.map_head = nn.Sequential(block(4 * w, w), nn.Conv2d(w, 1, 1))
        self.global_head = nn.Sequential(nn.Linear(8 * w + 2 * (num_classes - 1), 4 * w), nn.ReLU(inplace=True),
                                         nn.Linear(4 * w, 1))

    def forward(self, x: torch.Tensor, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e2 = self.enc2(self.enc1(x))
        e3 = self.enc3(e2)
        e4 = self.enc4(e3)
        up = F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        m = self.map_head(torch.cat([e2, up], 1))
        pooled = torch.cat([e4.mean((2, 3)), e4.amax((2, 3)), stats], 1)
        return m, self.global_head(pooled)[:, 0]


# --- training -------------------------------------------------------------------------------------------------
def _edited(normals: np.ndarray, rng: np.random.Generator, num_classes: int, copies: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` logical edits of every normal class map: (maps, changed masks); maps without parts are skipped."""
    maps, masks = [], []
    for m in normals:
        for _ in range(copies):
            got = perturb(m, rng, num_classes)
            if got is not None:
                maps.append(got[0])
                masks.append(got[1])
    if not maps:
        return np.zeros((0, *normals.shape[1:]), normals.dtype), np.zeros((0, *normals.shape[1:]), bool)
    return np.stack(maps), np.stack(masks)


def _loss(net: CompositionNet, x: torch.Tensor, st: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor
          ) -> torch.Tensor:
    m, g = net(x, st)
    tgt = F.adaptive_max_pool2d(tgt[:, None], m.shape[-2:])
    return F.binary_cross_entropy_with_logits(g, y) + F.binary_cross_entropy_with_logits(m, tgt)


def train_branch(normal_maps: np.ndarray, num_classes: int, cfg: CompositionBranchConfig,
                 anomaly_maps: np.ndarray | None = None, anomaly_masks: np.ndarray | None = None,
                 log: Callable[[str], None] = print) -> CompositionNet:
    """Fit the branch on normal class maps against their edits (fresh each epoch) and the generated anomalies."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    e = cfg.edit_size
    normals = small_maps(normal_maps, e)
    fixed_x, fixed_st = encode(normals, num_classes, cfg.grid)
    fixed_y, fixed_t = torch.zeros(len(normals)), torch.zeros(len(normals), e, e)
    if cfg.use_generated and anomaly_maps is not None and len(anomaly_maps):
        ax, ast = encode(small_maps(anomaly_maps, e), num_classes, cfg.grid)
        at = torch.from_numpy(np.stack([cv2.resize(m.astype(np.float32), (e, e), interpolation=cv2.INTER_AREA)
                                        for m in anomaly_masks]) > 0).float()
        fixed_x, fixed_st = torch.cat([fixed_x, ax]), torch.cat([fixed_st, ast])
        fixed_y, fixed_t = torch.cat([fixed_y, torch.ones(len(ax))]), torch.cat([fixed_t, at])
    net = CompositionNet(num_classes, cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    for _ in range(cfg.epochs):
        maps, masks = _edited(normals, rng, num_classes, cfg.edits_per_normal)
        ex, est = encode(maps, num_classes, cfg.grid)
        x, st = torch.cat([fixed_x, ex]), torch.cat([fixed_st, est])
        y = torch.cat([fixed_y, torch.ones(len(ex))])
        t = torch.cat([fixed_t, torch.from_numpy(masks).float()])
        order = torch.from_numpy(rng.permutation(len(x)))
        net.train()
        for i in range(0, len(x), cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            loss = _loss(net, x[b], st[b], y[b], t[b])
            if not torch.isfinite(loss):
                raise ArtifactError(BRANCH_DIR, f"composition branch loss became {float(loss)}; lower its lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    log(f"composition branch trained in {time.perf_counter() - t0:.1f} s")
    return net.eval()


@torch.no_grad()
def branch_scores(net: CompositionNet, class_maps: np.ndarray, num_classes: int, cfg: CompositionBranchConfig,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw image logits [N] and map logits [N,size,size] of class maps [N,H,W]."""
    x, st = encode(small_maps(class_maps, cfg.edit_size), num_classes, cfg.grid)
    m, g = net(x, st)
    m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return g.numpy().astype(np.float32), m.numpy().astype(np.float32)


# --- persistence ----------------------------------------------------------------------------------------------
def save_branch(directory: Path, net: CompositionNet, cfg: CompositionBranchConfig, num_classes: int,
                calibration: dict[str, float]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "weights.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    cfg.save(directory / "config.yaml")
    atomic_write_json(directory / "calibration.json", {"num_classes": num_classes, **calibration})
    return directory


def load_branch(directory: Path) -> tuple[CompositionNet, CompositionBranchConfig, int, dict[str, float]]:
    """The trained branch, its config, its class count and calibration; one ArtifactError naming a bad file."""
    for name in ("weights.safetensors", "config.yaml", "calibration.json"):
        if not (directory / name).is_file():
            raise ArtifactError(directory / name, f"missing; {RETRAIN}")
    cfg = CompositionBranchConfig.load(directory / "config.yaml")
    raw: dict[str, Any] = read_json_object(directory / "calibration.json")
    where = directory / "calibration.json"
    k = raw.get("num_classes")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ArtifactError(where, f"num_classes must be an integer >= 2, got {k!r}; {RETRAIN}")
    cal = {n: finite_number(raw.get(n), where, n) for n in ("score_mean", "map_mean")}
    cal.update({n: finite_number(raw.get(n), where, n, gt=0.0) for n in ("score_std", "map_std")})
    try:
        weights = load_file(str(directory / "weights.safetensors"))
    except Exception as exc:
        raise ArtifactError(directory / "weights.safetensors", f"unreadable ({exc.__class__.__name__}); {RETRAIN}"
                            ) from None
    check_finite(weights, directory / "weights.safetensors")
    net = CompositionNet(k, cfg.width)
    try:
        net.load_state_dict(weights)
    except Exception as exc:
        why = str(exc).splitlines()[0][:80]
        raise ArtifactError(directory / "weights.safetensors", f"does not match config.yaml ({why}); {RETRAIN}"
                            ) from None
    return net.eval(), cfg, k, cal
