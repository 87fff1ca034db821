"""Anomaly-map exchange format: one float32 TIFF per test image + a scores CSV.

Why files: any detector (ours or a peer's) is evaluated by the same command, and the layout is the one of
MVTec's official LOCO evaluation (``<maps>/<category>/test/<label>/<id>.tiff`` at the image's original
resolution), so their published scripts read our maps unchanged and ours read theirs.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from comgen.errors import InputError
from comgen.io import atomic_path, atomic_write_text
from comgen.records import Sample

TIFF_SUFFIXES = (".tiff", ".tif", ".TIFF", ".TIF")
SCORE_COLUMNS = ("category", "split", "label", "image_id", "path", "score")
#: optional columns: the detector's per-branch calibrated scores (network, composition prior) behind "score"
BRANCH_COLUMNS = ("network_score", "prior_score", "composition_score", "memory_score", "global_score",
                  "counts_score")
OPTIONAL_COLUMNS = ("decision",)


def map_path(maps_root: str | Path, sample: Sample) -> Path:
    """Where the anomaly map of ``sample`` lives: ``<maps>/<category>/<split>/<label>/<id>.tiff``."""
    return Path(maps_root) / sample.category / sample.split / sample.label / f"{sample.image_id}.tiff"


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only (cheap for 1700x1000 LOCO images)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read image size ({exc.__class__.__name__})") from None
    return h, w


def check_map(amap: np.ndarray, where: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Validate one anomaly map (2-D, finite, expected size) and return it as float32."""
    amap = np.asarray(amap)
    if amap.ndim == 3 and 1 in (amap.shape[0], amap.shape[-1]):
        amap = amap.reshape(amap.shape[1:] if amap.shape[0] == 1 else amap.shape[:-1])
    if amap.ndim != 2:
        raise InputError(where, f"anomaly map must be 2-D (HxW), got shape {amap.shape}")
    if not (np.issubdtype(amap.dtype, np.floating) or np.issubdtype(amap.dtype, np.integer)):
        raise InputError(where, f"anomaly map has unsupported dtype {amap.dtype}")
    amap = amap.astype(np.float32, copy=False)
    if not np.isfinite(amap).all():
        bad = int((~np.isfinite(amap)).sum())
        raise InputError(where, f"anomaly map contains {bad} NaN/infinite value(s)")
    if shape is not None and amap.shape != tuple(shape):
        raise InputError(where, f"anomaly map is {amap.shape[1]}x{amap.shape[0]} but its image is "
                                f"{shape[1]}x{shape[0]}; write maps at the image's original size")
    return amap


def write_map(maps_root: str | Path, sample: Sample, amap: np.ndarray, check_size: bool = True) -> Path:
    """Write ``amap`` (float32, the image's original size) as ``map_path(...)``, atomically."""
    path = map_path(maps_root, sample)
    shape = image_size(sample.path) if check_size else None
    amap = check_map(amap, path, shape)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, amap, photometric="minisblack")
    return path


def find_map(maps_root: str | Path, sample: Sample) -> Path | None:
    """The map file of ``sample`` (``.tiff`` or ``.tif``, as MVTec's scripts accept), or None."""
    base = map_path(maps_root, sample)
    for suffix in TIFF_SUFFIXES:
        cand = base.with_suffix(suffix)
        if cand.is_file():
            return cand
    return None


def read_map(maps_root: str | Path, sample: Sample, check_size: bool = True) -> np.ndarray:
    """Read and validate the map of ``sample``: present, 2-D, finite, the image's size -> float32 HxW."""
    path = find_map(maps_root, sample)
    if path is None:
        raise InputError(map_path(maps_root, sample), f"missing anomaly map for test image {sample.path}")
    try:
        amap = tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise InputError(path, f"not a readable TIFF ({exc.__class__.__name__}: {exc})") from None
    return check_map(amap, path, image_size(sample.path) if check_size else None)


def score_row(sample: Sample, score: float, decision: bool | int | None = None, path: str | Path | None = None) -> dict[str, Any]:
    """One scores-CSV row for ``sample`` (``path`` defaults to the image path)."""
    row: dict[str, Any] = {"category": sample.category, "split": sample.split, "label": sample.label,
                           "image_id": sample.image_id, "path": str(path if path is not None else sample.path),
                           "score": float(score)}
    if decision is not None:
        row["decision"] = int(bool(decision))
    return row


def write_scores_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write image scores (columns category, split, label, image_id, path, score[, decision]) atomically."""
    rows = list(rows)
    with_decision = any(r.get("decision") is not None for r in rows)
    columns = list(SCORE_COLUMNS) + (["decision"] if with_decision else [])
    columns += [c for c in BRANCH_COLUMNS if any(c in r for r in rows)]  # optional per-branch scores
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for i, r in enumerate(rows):
        missing = [c for c in SCORE_COLUMNS if c not in r]
        if missing:
            raise InputError(path, f"score row {i} lacks column(s) {', '.join(missing)}")
        score = float(r["score"])
        if not math.isfinite(score):
            raise InputError(path, f"score row {i} ({r['image_id']}) has a NaN/infinite score")
        out = dict(r)
        out["score"] = repr(score)
        if with_decision:
            out["decision"] = "" if r.get("decision") is None else int(bool(r["decision"]))
        for c in BRANCH_COLUMNS:
            if c in r:
                out[c] = "" if r[c] is None or not math.isfinite(float(r[c])) else repr(float(r[c]))
        writer.writerow(out)
    return atomic_write_text(path, buf.getvalue())


def parse_score(value: Any, path: str | Path, line: int) -> float:
    """One image score read from a CSV cell: a finite number, or one InputError naming the file and the line."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise InputError(path, f"line {line}: score {value!r} is not a number") from None
    if not math.isfinite(score):
        raise InputError(path, f"line {line}: NaN/infinite score")
    return score


def read_scores_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a scores CSV; ``score`` becomes float and ``decision`` int or None. Bad rows name their line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "scores CSV not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in SCORE_COLUMNS if c not in header]
        if missing:
            raise InputError(path, f"scores CSV lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
        rows = []
        for line, r in enumerate(reader, start=2):
            out: dict[str, Any] = {c: r[c] for c in SCORE_COLUMNS}
            out["score"] = parse_score(r["score"], path, line)
            dec = (r.get("decision") or "").strip()
            if dec:
                if dec.lower() not in ("0", "1", "true", "false"):
                    raise InputError(path, f"line {line}: decision {dec!r} is not 0/1")
                out["decision"] = int(dec.lower() in ("1", "true"))
            else:
                out["decision"] = None
            for c in BRANCH_COLUMNS:
                if c in header:
                    try:
                        v = float(r[c]) if (r[c] or "").strip() else None
                    except ValueError:
                        raise InputError(path, f"line {line}: {c} {r[c]!r} is not a number") from None
                    out[c] = v if v is not None and math.isfinite(v) else None
            rows.append(out)
    return rows


def scores_by_key(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Index score rows by (category, split, label, image_id)."""
    return {(str(r["category"]), str(r["split"]), str(r["label"]), str(r["image_id"])): dict(r) for r in rows}
