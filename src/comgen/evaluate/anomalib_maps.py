"""anomalib's predictions as input of ``comgen evaluate``: sPRO and LOCO's grouping for an anomalib model.

Why: anomalib computes image and pixel AUROC and PRO, but not MVTec LOCO's sPRO, and its ``Engine.predict`` returns
batches (``ImageBatch`` / ``NumpyImageBatch``: ``anomaly_map`` at the model's input size, ``pred_score`` and
``image_path``) rather than files. ``write_anomalib_predictions`` turns those batches into a folder of per-image
maps; ``convert_anomalib_maps`` turns such a folder (written by it or by hand) into comgen's exchange layout.

The folder: one map per test image, named by the image's path relative to the dataset root with the suffix
``.npy`` (float array, never a pickle) or ``.tiff``, e.g. ``DIR/screw_bag/test/logical_anomalies/000.npy``;
optionally ``DIR/scores.csv`` (columns ``image``, ``score``; ``image`` the same relative path with its suffix).
Maps of another size than their image are resized (bilinear) to the image's original size, as MVTec's
evaluation expects. Without ``scores.csv`` an image's score is its map maximum.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from comgen.errors import InputError
from comgen.evaluate.maps import check_map, image_size, parse_score, score_row, write_map, write_scores_csv
from comgen.io import atomic_path, atomic_write_text
from comgen.records import Sample

MAP_SUFFIXES = (".npy", ".tiff", ".tif")
SCORES_FILE = "scores.csv"


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (anomalib's ``Mask`` included) or array-like as a NumPy array on the CPU."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


def _relative(path: str | Path, root: Path) -> Path:
    p = Path(path).resolve()
    if not p.is_relative_to(root):
        raise InputError(path, f"prediction's image_path lies outside the dataset root {root}")
    return p.relative_to(root)


def _batch_items(batch: Any) -> list[tuple[str, np.ndarray, float | None]]:
    """(image path, map HxW, score or None) of each image of an anomalib batch or item."""
    paths = getattr(batch, "image_path", None)
    amaps = getattr(batch, "anomaly_map", None)
    if paths is None or amaps is None:
        raise InputError(type(batch).__name__, "prediction lacks image_path or anomaly_map (pass Engine.predict's "
                                               "batches)")
    single = isinstance(paths, (str, Path))
    paths = [paths] if single else list(paths)
    amaps = _numpy(amaps)
    amaps = amaps[None] if single or amaps.ndim == 2 else amaps
    if amaps.ndim == 4 and amaps.shape[1] == 1:
        amaps = amaps[:, 0]
    if amaps.ndim != 3 or len(amaps) != len(paths):
        raise InputError(paths[0] if paths else type(batch).__name__,
                         f"anomaly_map of shape {amaps.shape} does not hold one HxW map per image ({len(paths)})")
    scores = getattr(batch, "pred_score", None)
    values: list[float | None] = [None] * len(paths)
    if scores is not None:
        flat = _numpy(scores).reshape(-1)
        if len(flat) != len(paths):
            raise InputError(paths[0], f"{len(flat)} pred_score values for {len(paths)} images")
        values = [float(v) for v in flat]
    return [(str(p), m, s) for p, m, s in zip(paths, amaps, values)]


def write_anomalib_predictions(batches: Iterable[Any], dataset_root: str | Path, out: str | Path) -> Path:
    """Write anomalib's predict batches as ``out/<image path relative to dataset_root>.npy`` + ``out/scores.csv``.

    ``batches``: what ``anomalib.engine.Engine.predict`` returns (``ImageBatch``, ``NumpyImageBatch`` or single
    items), each with ``image_path``, ``anomaly_map`` and, optionally, ``pred_score``. Returns ``out``.
    """
    root = Path(dataset_root).resolve()
    out = Path(out)
    if out.resolve().is_relative_to(root):
        raise InputError(out, f"lies inside the dataset {root}; write predictions elsewhere (datasets are only read)")
    rows: list[tuple[str, float]] = []
    seen: set[Path] = set()
    for batch in batches:
        for path, amap, score in _batch_items(batch):
            rel = _relative(path, root)
            if rel in seen:
                raise InputError(path, "predicted twice in the given batches")
            seen.add(rel)
            amap = check_map(amap, path)
            with atomic_path(out / rel.with_suffix(".npy")) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, amap, allow_pickle=False)
            if score is not None:
                if not math.isfinite(score):
                    raise InputError(path, f"pred_score {score} is not finite")
                rows.append((rel.as_posix(), score))
    if not seen:
        raise InputError(out, "no predictions in the given batches")
    if rows and len(rows) != len(seen):
        raise InputError(out, f"pred_score given for {len(rows)} of {len(seen)} images; give it for all or none")
    if rows:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "score"])
        writer.writerows((image, repr(score)) for image, score in rows)
        atomic_write_text(out / SCORES_FILE, buf.getvalue())
    return out


def _read_scores(path: Path) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"image", "score"} <= set(reader.fieldnames or []):
            raise InputError(path, f"needs columns image, score (has {', '.join(reader.fieldnames or [])})")
        out = {}
        for line, row in enumerate(reader, start=2):
            out[Path(row["image"]).as_posix()] = parse_score(row["score"], path, line)
    return out


def _read_map(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        return tifffile.imread(path)
    except Exception as exc:  # numpy and tifffile raise several types for corrupt or pickled files
        raise InputError(path, f"not a readable map ({exc.__class__.__name__}: {str(exc)[:120]})") from None


def find_anomalib_map(src: Path, rel: Path) -> Path | None:
    """The map of the image at ``rel`` (relative to the dataset root) in an anomalib maps folder, or None."""
    for suffix in MAP_SUFFIXES:
        cand = src / rel.with_suffix(suffix)
        if cand.is_file():
            return cand
    return None


def convert_anomalib_maps(dataset_root: str | Path, samples: Sequence[Sample], src: str | Path,
                          maps_out: str | Path) -> Path | None:
    """Write the maps of ``samples`` from anomalib folder ``src`` into comgen's layout under ``maps_out``.

    Each map is checked (2-D, finite) and resized to its image's size; returns the scores CSV written from
    ``src/scores.csv`` (None when there is none, so the map maximum scores each image).
    """
    src, maps_out, root = Path(src), Path(maps_out), Path(dataset_root).resolve()
    if not src.is_dir():
        raise InputError(src, "anomalib maps folder not found")
    rels = [_relative(s.path, root) for s in samples]
    missing = [src / r.with_suffix(".npy") for r in rels if find_anomalib_map(src, r) is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(missing[0], f"missing anomaly map (.npy or .tiff) for a test image{more}")
    for sample, rel in zip(samples, rels):
        path = find_anomalib_map(src, rel)
        assert path is not None
        amap = check_map(_read_map(path), path)
        h, w = image_size(sample.path)
        if amap.shape != (h, w):
            amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
        write_map(maps_out, sample, amap)
    if not (src / SCORES_FILE).is_file():
        (maps_out / "scores.csv").unlink(missing_ok=True)  # a former conversion's scores must not be used
        return None
    scores = _read_scores(src / SCORES_FILE)
    rows = []
    for sample, rel in zip(samples, rels):
        if rel.as_posix() not in scores:
            raise InputError(src / SCORES_FILE, f"no score for test image {rel.as_posix()}")
        rows.append(score_row(sample, scores[rel.as_posix()]))
    return write_scores_csv(maps_out / "scores.csv", rows)
