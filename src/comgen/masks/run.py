"""Stage II over a run directory: build/load the bank, compute residual masks of a generated set, report IoU.

Why a library module (not only the CLI): the pipeline and Stage III call ``ensure_bank`` / ``compute_masks``
with the same configs, so everything that depends on the bank agrees on one bank per run.

Outputs, beside the generator's ``masks/`` in ``RUN/generated/<backend>/``: ``residual_masks/<id>.png`` (0/255),
``soft_maps/<id>.png`` (uint8; 128 = the normal-residual quantile, 255 = twice it or more), ``mask_iou.json``,
``mask_config.yaml``. The bank lives in ``RUN/bank/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comgen.config import ConfigBase
from comgen.data.generated import load_gate, load_item, read_generated
from comgen.data.imageio import resize_rgb
from comgen.data.readers import open_dataset
from comgen.errors import ArtifactError, DatasetError
from comgen.features.backbone import BackboneConfig, build_backbone
from comgen.features.memory import MemoryBank, MemoryBankConfig, resize_all
from comgen.io import atomic_write_json, write_png
from comgen.masks.residual import (
    ResidualConfig,
    _norm_kw,
    calibrate_bank,
    mask_iou,
    residual_kwargs,
    residual_mask,
    soft_residual,
)
from comgen.progress import progress
from comgen.records import LOGICAL_EDITS
from comgen.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class MaskConfig(ConfigBase):
    """Everything ``comgen mask`` depends on (saved as ``mask_config.yaml``; its hash marks the stage done).

    ``exclude_source``: never use an anomaly's own source image as its reference, so the residual must come from
    *other* normal images. Off by default, as in the design: the query (the generated image) is not in the bank,
    and its source is a legitimate nearest normal neighbour. On, it measures RNA without that help.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    bank: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    exclude_source: bool = False
    gate: bool = True  # False: ungated residual masks (measures RNA alone)
    calib_images: int = 64
    batch_size: int = 8


def _key(path: str | Path) -> str:
    """Bank id of an image: its resolved path, so a manifest's ``source`` can be excluded exactly."""
    return str(Path(path).resolve())


def load_train_images(run: RunDir, size: int) -> tuple[np.ndarray, list[str]]:
    """The run's normal training images at ``size`` and their ids (resolved paths)."""
    info = run.info
    ds = open_dataset(info.dataset)
    samples = [s for s in ds.samples(info.category, "train") if s.kind == "good"]
    if not samples:
        raise DatasetError(info.dataset, f"category {info.category!r} has no normal training images for the bank")
    imgs = [resize_rgb(s.load_image(), size) for s in progress(samples, desc="bank images")]
    return np.stack(imgs), [_key(s.path) for s in samples]


def ensure_bank(run: RunDir, cfg: MaskConfig, backbone: Any | None = None, rebuild: bool = False,
                echo: Callable[[str], Any] = log.info) -> MemoryBank:
    """Load ``RUN/bank`` when it matches ``cfg`` and the backbone; else build (and calibrate) it.

    An existing bank built with another backbone or config is refused (ArtifactError naming the difference)
    unless ``rebuild`` is set, so two stages never silently use different banks.
    """
    backbone = backbone or build_backbone(cfg.backbone)
    kw = residual_kwargs(cfg.residual)
    if (run.bank / "bank.json").exists() and not rebuild:
        try:
            bank = MemoryBank.load(run.bank, backbone, expect=cfg.bank)
        except ArtifactError as exc:
            raise ArtifactError(exc.where, f"{exc.problem} (or pass --rebuild)") from None
        if not bank.stats or _norm_kw(bank.stats.get("residual_kwargs", {})) != _norm_kw(kw):
            calibrate_bank(bank, max_images=cfg.calib_images, residual_kwargs=kw)
            bank.save(run.bank)
        echo(f"bank: loaded {len(bank)} images from {run.bank} (backbone {backbone.name}, {backbone.source})")
        return bank
    images, ids = load_train_images(run, cfg.bank.image_size)
    bank = MemoryBank.build(images, ids, backbone, cfg.bank)
    calibrate_bank(bank, max_images=cfg.calib_images, residual_kwargs=kw)
    bank.save(run.bank)
    echo(f"bank: built from {len(bank)} training images (backbone {backbone.name}, {backbone.source}, "
         f"index {bank.index_kind})")
    return bank


def _to_size(img: np.ndarray, size: int) -> np.ndarray:
    return resize_all(img[None], size)[0]


def compute_masks(run: RunDir, backend: str = "compositional", cfg: MaskConfig | None = None,
                  rebuild: bool = False, echo: Callable[[str], Any] = log.info) -> dict[str, Any]:
    """Residual masks + soft maps for every generated anomaly of ``backend``; returns (and writes) the IoU report."""
    cfg = cfg or MaskConfig()
    out = run.generated(backend)
    lines = read_generated(out)
    if not lines:
        raise ArtifactError(out, "manifest lists no anomalies; run `comgen generate` first")
    backbone = build_backbone(cfg.backbone)
    bank = ensure_bank(run, cfg, backbone, rebuild=rebuild, echo=echo)
    S = cfg.bank.image_size
    rc = cfg.residual
    rows: list[dict[str, Any]] = []
    for start in progress(range(0, len(lines), cfg.batch_size), desc="residual masks",
                          total=(len(lines) + cfg.batch_size - 1) // cfg.batch_size):
        batch = lines[start:start + cfg.batch_size]
        items = [load_item(out, ln) for ln in batch]
        work = np.stack([_to_size(img, S) for img, _ in items])
        exclude = [_key(ln["source"]) if cfg.exclude_source and ln.get("source") else None for ln in batch]
        soft = soft_residual(bank, work, rc, exclude_ids=exclude, batch_size=cfg.batch_size).numpy()
        for ln, (img, edit), sm in zip(batch, items, soft):
            gate = load_gate(out, ln) if cfg.gate else None
            if gate is None and cfg.gate:
                gate = edit.astype(np.float32)  # exact edit mask; residual_mask dilates it by gate_dilate
            gate_only = gate is not None and mask_iou(cv2.resize(gate, (edit.shape[1], edit.shape[0])) > 0.5, edit)
            m = residual_mask(sm, gate, rc.scale, relative=rc.relative, gate_dilate=rc.gate_dilate,
                              open_radius=rc.open_radius, close_radius=rc.close_radius, min_area=rc.min_area,
                              fill_holes=rc.fill_holes, gate_saturation=rc.gate_saturation)
            H, W = edit.shape
            m_full = cv2.resize(m.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0
            s_full = cv2.resize(sm, (W, H), interpolation=cv2.INTER_LINEAR)
            write_png(out / "residual_masks" / f"{ln['id']}.png", m_full)
            write_png(out / "soft_maps" / f"{ln['id']}.png", soft_to_png(s_full))
            rows.append({"id": ln["id"], "kind": ln.get("kind", "?"), "category": ln.get("category", "?"),
                         "iou": mask_iou(m_full, edit), "area_edit": int(edit.sum()),
                         "area_residual": int(m_full.sum()),
                         "gate_iou": float(gate_only) if gate is not None else None})
    report = iou_report(rows)
    gate_ious = [r["gate_iou"] for r in rows if r["gate_iou"] is not None and r["kind"] in LOGICAL_EDITS]
    report.update({"backend": backend, "n": len(rows), "backbone": backbone.identity(),
                   "gate_only_logical_mean": float(np.mean(gate_ious)) if gate_ious else None,
                   "bank": {"n": len(bank), "index": bank.index_kind, "dir": str(run.bank)},
                   "exclude_source": cfg.exclude_source, "gated": cfg.gate, "items": rows})
    cfg.save(out / "mask_config.yaml")
    atomic_write_json(out / "mask_iou.json", report)
    run.mark_done(f"mask:{backend}", cfg.hash(), {"report": str(out / "mask_iou.json")})
    return report


def soft_to_png(soft: np.ndarray) -> np.ndarray:
    """Soft map (normal-threshold units) -> uint8: 128 = threshold 1.0, saturating at 2.0."""
    return (np.clip(soft / 2.0, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def iou_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """IoU per edit kind, the mean over logical edits (per item and per kind), structural and overall."""
    kinds: dict[str, list[float]] = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r["iou"])
    per_kind = {k: {"n": len(v), "mean_iou": float(np.mean(v))} for k, v in sorted(kinds.items())}
    logical = [r["iou"] for r in rows if r["category"] == "logical" or r["kind"] in LOGICAL_EDITS]
    structural = [r["iou"] for r in rows if r["category"] == "structural" and r["kind"] not in LOGICAL_EDITS]
    logical_kinds = [v["mean_iou"] for k, v in per_kind.items() if k in LOGICAL_EDITS]
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    return {"per_kind": per_kind, "logical_mean": mean(logical), "logical_kind_mean": mean(logical_kinds),
            "structural_mean": mean(structural), "all_mean": mean([r["iou"] for r in rows])}


def format_table(report: dict[str, Any]) -> str:
    """Plain-text IoU table (one row per edit kind, then the means)."""
    lines = [f"{'edit kind':<18}{'n':>6}{'IoU':>8}"]
    for k, v in report["per_kind"].items():
        lines.append(f"{k:<18}{v['n']:>6}{v['mean_iou']:>8.3f}")
    for name in ("logical_mean", "logical_kind_mean", "structural_mean", "all_mean"):
        if report.get(name) is not None:
            lines.append(f"{name:<18}{'':>6}{report[name]:>8.3f}")
    return "\n".join(lines)
