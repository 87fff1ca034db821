"""Text-to-Component Residual Mapping: turn query-vs-aligned-reference feature residuals into an anomaly mask.

Why: a generated anomaly's exact mask is not always known (the SD back-end only has a cross-attention map), and
even when it is, the pixels that actually *look* different from normal are what the detector should learn. The
residual between the query's features and its aligned normal references shows those pixels; gating it by the
edited component's (dilated) attention map keeps only the edit's surroundings, and thresholding against the
residuals of normal images (leave-one-out on the bank) makes the cut independent of the backbone's scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu

from comgen.config import ConfigBase
from comgen.errors import InputError
from comgen.features.memory import MemoryBank
from comgen.progress import progress
from comgen.tensor_ops import gaussian_blur, norm_along, unit_along


@dataclass
class ResidualConfig(ConfigBase):
    """Residual fusion, gating, threshold and clean-up settings (pixel sizes are at the working resolution).

    Each residual kind (backbone features; Lab colour when the bank stores it) is divided by its ``quantile`` of
    normal leave-one-out residuals and the kinds are fused by a geometric mean, so the soft map is in "normal
    threshold" units: 1.0 = as large as the ``quantile`` of normal residuals. The mask cut is ``scale`` in those
    units; inside the gate ``relative`` (0..1) also requires a pixel to reach that fraction of the gated maximum,
    so a strong edit does not bleed into its halo.
    """

    scale_weights: tuple[float, ...] = ()  # empty = equal weights
    blur_sigma: float = 1.0
    reduce: str = "min"  # feature residual over the k references: min | mean | first (nearest only)
    color_reduce: str = "first"  # colour residual: the nearest reference (sharp outline; often the source)
    quantile: float = 0.9
    scale: float = 0.35
    relative: float = 0.2
    gate_dilate: int = 5
    gate_saturation: float = 0.5
    open_radius: int = 1
    close_radius: int = 2
    min_area: int = 8
    fill_holes: bool = True


def residual_maps(query_feats: Sequence[torch.Tensor], aligned_feats: Sequence[torch.Tensor],
                  out_size: int | tuple[int, int], scale_weights: Sequence[float] = (),
                  blur_sigma: float = 0.0, reduce: str = "min") -> torch.Tensor:
    """Fused soft residual [B,H,W]: per-scale cosine-feature distance to the aligned references, upsampled, averaged.

    query_feats[s] [B,C,h,w], aligned_feats[s] [B,k,C,h,w]. Each scale's distance lies in [0, 2] whatever the
    backbone, so the scales fuse without per-backbone tuning. ``reduce="min"`` over the k references: a patch is
    normal when any reference explains it (robust to one bad reference); ``"mean"``: all references must agree
    (catches a part missing where most references have it, in categories whose layout varies).
    """
    _check_reduce(reduce)
    if len(query_feats) != len(aligned_feats) or not query_feats:
        raise InputError("residual", f"{len(query_feats)} query scales vs {len(aligned_feats)} aligned scales")
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    weights = list(scale_weights) or [1.0] * len(query_feats)
    if len(weights) != len(query_feats):
        raise InputError("residual", f"{len(weights)} scale weights for {len(query_feats)} scales")
    fused = None
    for w, q, a in zip(weights, query_feats, aligned_feats):
        if a.ndim != 5 or a.shape[0] != q.shape[0] or a.shape[2:] != q.shape[1:]:
            raise InputError("residual", f"aligned {tuple(a.shape)} does not match query {tuple(q.shape)}")
        qn = unit_along(q.float(), 1).unsqueeze(1)
        an = unit_along(a.float().to(q.device), 2)
        d = _reduce_k(norm_along(qn - an, 2), reduce)  # [B,h,w]
        up = F.interpolate(d.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        fused = up * w if fused is None else fused + up * w
    fused = fused / float(sum(weights))
    if blur_sigma > 0:
        fused = gaussian_blur(fused, blur_sigma)
    return fused


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def prepare_gate(gate: np.ndarray | torch.Tensor, size: tuple[int, int], dilate: int,
                 saturation: float = 1.0) -> np.ndarray:
    """Gate as float32 [H,W] in [0,1] at ``size``: bool / 0..255 / 0..1 input, resized, grey-dilated by ``dilate`` px.

    A soft attention map is peaky: values at ``saturation`` x its peak and above count fully, so the gate only
    fades the residual at the map's fringe instead of weakening the whole component.
    """
    g = gate.detach().cpu().numpy() if isinstance(gate, torch.Tensor) else np.asarray(gate)
    if g.ndim != 2:
        raise InputError("gate", f"expected an HxW gate map, got shape {g.shape}")
    g = g.astype(np.float32)
    if g.size and g.max() > 1.0:
        g = g / 255.0
    if g.shape != tuple(size):
        g = cv2.resize(g, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if dilate > 0:
        g = cv2.dilate(g, _disk(dilate))
    peak = float(g.max()) if g.size else 0.0
    if peak > 0 and saturation > 0:
        g = g / (saturation * peak)
    return np.clip(g, 0.0, 1.0)


def residual_mask(soft: np.ndarray | torch.Tensor, gate: np.ndarray | torch.Tensor | None, threshold: float,
                  relative: float = 0.0, gate_dilate: int = 5, open_radius: int = 1, close_radius: int = 2,
                  min_area: int = 8, fill_holes: bool = True, gate_saturation: float = 1.0,
                  otsu: bool = False) -> np.ndarray:
    """Binary HxW mask from a soft residual map [H,W]: gate, threshold, morphological clean-up.

    A pixel is on when ``soft * gate > max(threshold, relative * max(soft * gate))`` (and, with ``otsu``, above
    Otsu's threshold of the gated values); then opening removes specks,
    closing joins fragments, holes are filled and components under ``min_area`` pixels are dropped.
    """
    s = soft.detach().cpu().numpy() if isinstance(soft, torch.Tensor) else np.asarray(soft)
    if s.ndim != 2:
        raise InputError("residual_mask", f"expected an HxW soft map, got shape {s.shape}")
    s = s.astype(np.float32)
    if not np.isfinite(s).all():
        raise InputError("residual_mask", "soft map contains NaN or inf")
    if gate is not None:
        s = s * prepare_gate(gate, s.shape, gate_dilate, gate_saturation)
    peak = float(s.max()) if s.size else 0.0
    cut = max(float(threshold), relative * peak)
    if otsu and gate is not None:
        # inside the gate the residual is bimodal (edited pixels vs their unchanged surroundings): Otsu splits them
        inside = s[s > 0]
        if inside.size > 16 and float(inside.max()) > float(inside.min()):
            cut = max(cut, float(threshold_otsu(inside)))
    m = (s > cut).astype(np.uint8)
    if open_radius > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, _disk(open_radius))
    if close_radius > 0:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(close_radius))
    if fill_holes:
        m = _fill_holes(m)
    if min_area > 0 and m.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False
        m = keep[labels].astype(np.uint8)
    return m.astype(bool)


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """Fill enclosed holes: flood the background from outside (padded border); what stays unreached is a hole."""
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = m > 0
    cv2.floodFill(pad, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 2)
    return (pad[1:-1, 1:-1] != 2).astype(np.uint8)


def threshold_from_stats(stats: dict, quantile: float, scale: float = 1.0, kind: str = "feature") -> float:
    """The stored normal-residual quantile (of residual ``kind``) nearest to ``quantile``, times ``scale``."""
    per_kind = (stats or {}).get("quantiles", {})
    qs = {float(k): float(v) for k, v in per_kind.get(kind, {}).items()}
    if not qs:
        raise InputError("bank", f"no normal {kind} residual statistics; call MemoryBank.calibrate() first")
    nearest = min(qs, key=lambda q: abs(q - quantile))
    return qs[nearest] * scale


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError("mask_iou", f"masks of shape {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _check_reduce(reduce: str) -> None:
    if reduce not in ("min", "mean", "first"):
        raise InputError("residual.reduce", f"{reduce!r} is not min, mean or first")


def _reduce_k(d: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "first":  # the nearest retrieved reference only (idx is sorted by global distance)
        return d[:, 0]
    return d.min(dim=1).values if reduce == "min" else d.mean(dim=1)


def color_residual(query_lab: torch.Tensor, aligned_lab: torch.Tensor, out_size: int | tuple[int, int],
                   blur_sigma: float = 0.0, reduce: str = "min") -> torch.Tensor:
    """Lab distance [B,H,W] of each query pixel to its best aligned reference colour (min over k), upsampled.

    Backbone features blur an edit over their receptive field; colour gives the edit's sharp outline.
    """
    if aligned_lab.ndim != 5 or aligned_lab.shape[0] != query_lab.shape[0]:
        raise InputError("residual", f"aligned colours {tuple(aligned_lab.shape)} vs query {tuple(query_lab.shape)}")
    _check_reduce(reduce)
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    d = _reduce_k(norm_along(query_lab.float().unsqueeze(1) - aligned_lab.float(), 2), reduce)
    up = F.interpolate(d.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return gaussian_blur(up, blur_sigma) if blur_sigma > 0 else up


def raw_residuals(bank, feats: Sequence[torch.Tensor], colors: torch.Tensor | None, idx: torch.Tensor,
                  scale_weights: Sequence[float] = (), blur_sigma: float = 0.0, reduce: str = "min",
                  color_reduce: str = "first") -> dict[str, torch.Tensor]:
    """Un-normalised residual maps per kind at the bank's working size: {"feature": [B,S,S], "color": [B,S,S]}."""
    size = bank.cfg.image_size
    out = {"feature": residual_maps(feats, bank.align(feats, idx), size, scale_weights, blur_sigma, reduce)}
    if colors is not None:
        out["color"] = color_residual(colors, bank.align_colors(colors, idx), size, blur_sigma, color_reduce)
    return out


def fuse_normalised(maps: dict[str, torch.Tensor], stats: dict, quantile: float) -> torch.Tensor:
    """Geometric mean of each residual kind divided by its normal ``quantile``: 1.0 = the normal quantile."""
    fused = None
    for name, m in maps.items():
        r = (m / max(threshold_from_stats(stats, quantile, kind=name), 1e-6)).clamp(min=1e-6).log()
        fused = r if fused is None else fused + r
    return torch.exp(fused / len(maps))  # high only where every kind is: an AND of the residual evidence


def soft_residual(bank, images: np.ndarray, cfg: ResidualConfig | None = None,
                  exclude_ids: Sequence | None = None, batch_size: int = 8) -> torch.Tensor:
    """Soft residual maps [B,S,S] (normal-threshold units) of images (BxSxSx3 uint8 at the bank's size).

    RNA (retrieve top-k, align in a window) then fused residuals normalised by the bank's normal statistics
    (``bank.calibrate`` must have run with the same ``blur_sigma`` / ``scale_weights``).
    """
    cfg = cfg or ResidualConfig()
    kw = residual_kwargs(cfg)
    if not bank.stats:
        raise InputError("bank", "no normal residual statistics; call MemoryBank.calibrate() first")
    saved = bank.stats.get("residual_kwargs", {})
    if _norm_kw(saved) != _norm_kw(kw):
        raise InputError("bank", f"normal statistics were computed with {saved}, not {kw}; recalibrate the bank")
    arr = np.asarray(images)
    arr = arr[None] if arr.ndim == 3 else arr
    outs = []
    for s in range(0, arr.shape[0], batch_size):
        chunk = arr[s:s + batch_size]
        feats = bank.extract(chunk)
        colors = bank.extract_colors(chunk) if bank.colors is not None else None
        ex = None if exclude_ids is None else list(exclude_ids[s:s + batch_size])
        idx, _ = bank.query(feats, exclude_ids=ex)
        outs.append(fuse_normalised(raw_residuals(bank, feats, colors, idx, **kw), bank.stats, cfg.quantile))
    return torch.cat(outs)


def residual_kwargs(cfg: ResidualConfig) -> dict:
    """The settings that change raw residual values (and so must match the bank's normal statistics)."""
    return {"scale_weights": [float(w) for w in cfg.scale_weights], "blur_sigma": float(cfg.blur_sigma),
            "reduce": cfg.reduce, "color_reduce": cfg.color_reduce}


def _norm_kw(kw: dict) -> dict:
    return {"scale_weights": [float(w) for w in kw.get("scale_weights", ())],
            "blur_sigma": float(kw.get("blur_sigma", 0.0)), "reduce": kw.get("reduce", "min"),
            "color_reduce": kw.get("color_reduce", "first")}


STAT_QUANTILES = (0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)


def calibrate_bank(bank: MemoryBank, max_images: int = 64, residual_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Leave-one-out residual statistics of the banked normal images (thresholds for Residual Mapping).

    Each banked image is queried against the bank without itself, exactly as a generated anomaly is, so the
    quantiles say how large residuals of *normal* content get, per residual kind (feature, colour). Stored in
    ``bank.stats`` (and saved with the bank).
    """
    if len(bank) <= bank.cfg.k:
        raise InputError("bank", f"need more than k={bank.cfg.k} images to calibrate, have {len(bank)}")
    kw = dict(residual_kwargs or {})
    rng = np.random.default_rng(bank.cfg.seed)
    pos = np.sort(rng.choice(len(bank), size=min(max_images, len(bank)), replace=False))
    maps: dict[str, list[torch.Tensor]] = {}
    for s in progress(range(0, len(pos), bank.cfg.batch_size), desc="normal residuals"):
        p = torch.from_numpy(pos[s:s + bank.cfg.batch_size])
        feats = [t[p].float() for t in bank.patches]
        colors = bank.colors[p].float() if bank.colors is not None else None
        idx, _ = bank.query(feats, exclude_ids=[bank.ids[i] for i in p.tolist()])
        for name, m in raw_residuals(bank, feats, colors, idx, **kw).items():
            maps.setdefault(name, []).append(m)
    gen = torch.Generator().manual_seed(0)
    quantiles: dict[str, dict[str, float]] = {}
    for name, lst in maps.items():
        flat = torch.cat(lst).flatten()
        if flat.numel() > 4_000_000:
            flat = flat[torch.randperm(flat.numel(), generator=gen)[:4_000_000]]
        vals = torch.quantile(flat, torch.tensor(STAT_QUANTILES)).tolist()
        quantiles[name] = {str(q): float(v) for q, v in zip(STAT_QUANTILES, vals)}
    bank.stats = {"n_images": int(len(pos)), "quantiles": quantiles, "residual_kwargs": kw}
    return bank.stats
