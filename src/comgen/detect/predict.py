"""Inference with a trained CSDA detector: ``Detector.load(run_dir).predict(images) -> (scores, maps)``.

Why calibrated outputs: image scores and maps are z-scores relative to the validation normals (see
``train.calibrate``), so the pass/fail threshold (a normal-score quantile) means the same thing for every run,
and maps of different images are comparable. Maps are returned at each image's original resolution whatever
working size the network ran at, because evaluation and users look at the original images.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile
import torch
from safetensors.torch import load_file

from comgen.compiled import eager, maybe_compiled
from comgen.data.imageio import read_rgb
from comgen.data.readers import open_dataset
from comgen.detect.artifacts import BANK, BEST, CALIBRATION, RETRAIN, check_finite, finite_number, read_calibration
from comgen.detect.composition_branch import BRANCH_DIR, branch_scores, load_branch
from comgen.detect.composition_prior import PRIOR_DIR, CompositionPrior
from comgen.detect.config import DetectorConfig
from comgen.detect.csda import CSDA
from comgen.detect.fusion import BRANCHES, Fusion
from comgen.detect.global_branch import GLOBAL_DIR, GlobalBranch
from comgen.detect.patch_memory import MEMORY_DIR, PatchMemory
from comgen.detect.tiling import is_tiled, predict_tiled
from comgen.errors import ArtifactError, ComgenError, ConfigError, InputError
from comgen.evaluate.map_score import carry_score, read_peak_stats
from comgen.evaluate.maps import BRANCH_COLUMNS, map_path, write_map, write_scores_csv
from comgen.features.backbone import build_backbone, to_tensor
from comgen.features.memory import MemoryBank
from comgen.io import atomic_path, atomic_write_text, write_png
from comgen.progress import progress
from comgen.rundir import RunDir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def detector_dir(path: str | Path) -> Path:
    """Accept a run directory (uses its detector/) or a detector directory itself."""
    p = Path(path)
    if (p / "run.yaml").is_file() or (p / "detector" / "config.yaml").is_file():
        return RunDir(p).detector
    if (p / "config.yaml").is_file() and (p / CALIBRATION).is_file():
        return p
    if not p.exists():
        raise ArtifactError(p, "no such run directory")
    raise ArtifactError(p, "no trained detector here (no checkpoint); run `comgen train` first")


def to_rgb_uint8(img: np.ndarray, where: str = "image") -> tuple[np.ndarray, str | None]:
    """Convert gray / gray+alpha / RGBA / 16-bit / float [0,1] arrays to HxWx3 uint8; returns (image, what changed)."""
    a = np.asarray(img)
    note = None
    if a.ndim == 2:
        a, note = a[..., None], "gray"
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 2:
        raise InputError(where, f"not an image array (shape {a.shape})")
    if a.dtype == np.uint16:
        a, note = (a >> 8).astype(np.uint8), "16-bit"
    elif a.dtype == bool:
        a, note = a.astype(np.uint8) * 255, "binary"
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(where, "image contains NaN or inf")
        a, note = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "float"
    elif a.dtype != np.uint8:
        raise InputError(where, f"unsupported image dtype {a.dtype}")
    c = a.shape[2]
    if c in (1, 2):
        a, note = np.repeat(a[..., :1], 3, axis=2), "gray"
    elif c == 4:
        a, note = a[..., :3], "RGBA"
    return np.ascontiguousarray(a), note


# Jobs of fewer images run eagerly. Compiling pays only on long jobs: it saves a few ms per image but its first call
# costs tens of seconds (the head, whose weights are frozen into its graph, compiles anew for every detector), so
# the break-even is several thousand images (bench/detect_speed.py; docs/results.md).
COMPILE_MIN_IMAGES = 5000


def batch_size_of(batch_size: int | None, default: int) -> int:
    """``batch_size``, or ``default`` when None. Why checked: a negative one made the batch loop run zero times, so a
    job ended with nothing predicted and a misleading message."""
    if batch_size is None:
        return default
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The head's weights, readable and finite (NaN weights would give NaN scores and every image "pass")."""
    try:
        weights = load_file(str(path))
    except Exception as exc:
        raise ArtifactError(path, f"unreadable weights ({exc.__class__.__name__}); {RETRAIN}") from None
    check_finite(weights, path)
    return weights


class Detector:
    """A trained CSDA detector (backbone + head + reference bank + calibration), ready to predict."""

    def __init__(self, cfg: DetectorConfig, model: CSDA, bank: Any, calibration: dict[str, Any],
                 directory: Path, device: torch.device, prior: Any = None,
                 memory: tuple[PatchMemory, dict[str, float]] | None = None, composition: Any = None,
                 global_branch: tuple[GlobalBranch, dict[str, float]] | None = None) -> None:
        self.cfg = cfg
        self.prior = prior  # CompositionPrior or None (see composition_prior.py)
        self.memory = memory  # (PatchMemory, its calibration) or None (see patch_memory.py)
        self.composition = composition  # load_branch()'s tuple or None (see composition_branch.py)
        self.global_branch = global_branch  # (GlobalBranch, its calibration) or None (see global_branch.py)
        self.fusion = fusion_of(calibration, prior is not None, Path(directory) / CALIBRATION)
        # the validation normals' score and map-maximum scale (None: calibrated before it was stored)
        self.map_peak = read_peak_stats(calibration.get("map_peak"), Path(directory) / CALIBRATION)
        self.last_parts: dict[str, np.ndarray] = {}  # per-branch image scores of the last predict() call
        self.model = model.eval()
        # The head as predict runs it: through torch.compile where possible (comgen.compiled), with its weights
        # frozen into the graph, since a loaded detector never trains (head forward ~2x faster on CPU, measured).
        self._head = maybe_compiled(self.model.head.forward, "CSDAHead.forward", {"freezing": True})
        self.bank = bank
        self.calibration = calibration
        self.directory = directory
        self.device = device
        # which detector feature scale the prior can segment from (None: the prior runs its own backbone)
        self._prior_scale = None if prior is None or is_tiled(cfg) else \
            prior.model.shared_feature_index(model.backbone, cfg.image_size)

    def branch_scores(self, j: int) -> dict[str, float]:
        """Image ``j`` of the last ``predict`` call: each branch's calibrated score (the scores CSV's columns)."""
        nan = np.full(len(self.last_parts["network"]), np.nan, np.float32)
        return {f"{b}_score": float(self.last_parts.get(b, nan)[j]) for b in BRANCHES}

    @property
    def threshold(self) -> float:
        return float(self.calibration["threshold"])

    @classmethod
    def load(cls, run_dir: str | Path, device: str | None = None) -> Detector:
        """Load ``run_dir/detector`` (or a detector dir), refusing missing or mismatched checkpoints."""
        det = detector_dir(run_dir)
        if not (det / BEST).is_file():
            raise ArtifactError(det, "no checkpoint (best.safetensors); run `comgen train` first")
        cfg = DetectorConfig.load(det / "config.yaml")
        cal = read_calibration(det)
        weights = _read_weights(det / BEST)
        if cal.get("network") != cfg.network_dict():
            raise ConfigError(det / "config.yaml", "checkpoint was trained with another config (image size, "
                                                   "backbone or head differ); retrain or restore its config.yaml")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        backbone = build_backbone(cfg.backbone)
        ident = cal.get("backbone", {})
        if ident.get("fingerprint") != backbone.fingerprint():
            raise ArtifactError(det, f"detector was trained with other backbone weights ({ident.get('source')}); "
                                     f"now resolved {backbone.source}")
        model = CSDA(backbone, cfg.head)
        try:
            model.head.load_state_dict(weights)
        except Exception as exc:
            raise ConfigError(det / BEST, f"checkpoint does not match config.yaml ({str(exc).splitlines()[0][:100]})"
                              ) from None
        bank = MemoryBank.load(det / BANK, backbone)
        prior = None
        if (cal.get("prior") or {}).get("enabled"):
            prior = CompositionPrior.load(det / PRIOR_DIR)
        memory = PatchMemory.load(det / MEMORY_DIR) if (cal.get("memory") or {}).get("enabled") else None
        composition = None
        if prior is not None and (cal.get("composition") or {}).get("enabled"):
            composition = load_branch(det / BRANCH_DIR)
            if composition[2] != prior.model.num_classes:
                raise ArtifactError(det / BRANCH_DIR, "composition branch and composition prior disagree on the "
                                                      f"number of classes; {RETRAIN}")
        global_branch = GlobalBranch.load(det / GLOBAL_DIR) if (cal.get("global") or {}).get("enabled") else None
        return cls(cfg, model.to(dev), bank, cal, det, dev, prior, memory, composition, global_branch)

    # --- core ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Working-size uint8 batch [N,S,S,3] -> (image logits [N], map logits [N,S,S]), uncalibrated."""
        g, m, _ = self._forward(images)
        return g, m

    @torch.no_grad()
    def _forward(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[torch.Tensor]]:
        """``raw`` plus the backbone features (kept for the composition prior)."""
        x = to_tensor(images).to(self.device)
        feats = self.model.features(x)
        idx, _ = self.bank.query([f.cpu() for f in feats], self.cfg.head.k)
        aligned = [a.to(self.device) for a in self.bank.align([f.cpu() for f in feats], idx)]
        s = self.cfg.image_size
        m, g = self._head(feats, aligned, (s, s))
        return g.float().cpu().numpy(), m[:, 0].float().cpu().numpy(), feats

    def _composition_scores(self, images: np.ndarray, feats: list[torch.Tensor]
                            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Calibrated composition-prior scores of a working-size batch, its count patterns' scores, and the
        composition branch's scores and maps (each None where the detector has not got it), from one segmentation
        that reuses the detector's features where they match."""
        deep = None
        if self._prior_scale is not None:
            deep = feats[self._prior_scale].float().permute(0, 2, 3, 1).contiguous().cpu().numpy()
        maps, partner_maps = self.prior.segment(images, deep)
        prior, counts = self.prior.score_branches(images, deep=deep, maps=maps, partner_maps=partner_maps)
        if self.composition is None:
            return prior, counts, None, None
        net, ccfg, k, cal = self.composition
        return (prior, counts, *standardise(*branch_scores(net, maps, k, ccfg, self.cfg.image_size), cal))

    def _memory_scores(self, feats: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated patch-memory image scores [B] and maps [B,S,S] of a working-size batch's features (float32,
        on the CPU)."""
        memory, cal = self.memory
        return standardise(*memory.score(feats, self.cfg.image_size), cal)

    def _global_scores(self, feats: list[torch.Tensor]) -> np.ndarray:
        """Calibrated global-branch image scores [B] of a working-size batch's features (float32, on the CPU)."""
        branch, cal = self.global_branch
        return ((branch.score(feats) - cal["score_mean"]) / cal["score_std"]).astype(np.float32)

    def _map_weights(self) -> dict[str, float]:
        """How the map branches blend into the written map: the fusion's own weights, else equal."""
        if is_tiled(self.cfg):
            return {"network": 1.0}
        have = ["network"] + (["composition"] if self.composition is not None else []) + \
            (["memory"] if self.memory is not None else [])
        return self.fusion.map_weights() or {b: 1.0 / len(have) for b in have}

    def normalise(self, logits: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated (z-scored on the validation normals) image scores and maps, float32; the maps in place
        when they are float32 already (the largest arrays of predict: no extra copies)."""
        return standardise(logits, maps, self.calibration)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int | None = None,
                notice: Callable[[str], None] | None = _stderr, job_size: int | None = None
                ) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
        """Calibrated image scores [N] and anomaly maps at each image's original size.

        ``maps`` is one float32 array [N,H,W] when all images share a size, else a list of [H,W] arrays.
        Images of another size or mode are resized / converted, with one notice per call. ``job_size``: the
        number of images of the whole job when this call is one chunk of it (default: this call's); jobs of at
        least ``COMPILE_MIN_IMAGES`` run the compiled alignment and head.
        """
        if images is None or len(images) == 0:
            raise InputError("images", "empty image list; nothing to predict")
        bs = batch_size_of(batch_size, self.cfg.batch_size)
        tiled = is_tiled(self.cfg)
        s = self.cfg.image_size
        parts = {b: np.full(len(images), np.nan, np.float32) for b in BRANCHES}
        map_weights = self._map_weights()
        maps: list[np.ndarray] = []
        notes: set[str] = set()
        resized = 0
        for i in range(0, len(images), bs):
            chunk, shapes = [], []
            for j in range(i, min(i + bs, len(images))):
                img, note = to_rgb_uint8(images[j], f"image {j}")
                if note:
                    notes.add(note)
                shapes.append(img.shape[:2])
                if img.shape[:2] != (s, s) and not tiled:
                    resized += 1
                    img = cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
                chunk.append(img)
            sl = slice(i, i + len(chunk))
            with eager() if (job_size or len(images)) < COMPILE_MIN_IMAGES else nullcontext():
                if tiled:  # each image on the tile grid of its own size, maps blended back (tiling.py)
                    parts["network"][sl], parts["prior"][sl], parts["counts"][sl], tiled_maps = \
                        predict_tiled(self, chunk, bs)
                    maps += tiled_maps
                    continue
                logits, mlog, feats = self._forward(np.stack(chunk))
            sc, mp = self.normalise(logits, mlog)
            parts["network"][sl] = sc
            zmaps = {"network": mp}
            if self.prior is not None:
                parts["prior"][sl], counts, comp, comp_maps = self._composition_scores(np.stack(chunk), feats)
                if counts is not None:
                    parts["counts"][sl] = counts
                if comp is not None:
                    parts["composition"][sl], zmaps["composition"] = comp, comp_maps
            host = [f.float().cpu() for f in feats] \
                if self.memory is not None or self.global_branch is not None else []
            if self.memory is not None:
                parts["memory"][sl], zmaps["memory"] = self._memory_scores(host)
            if self.global_branch is not None:
                parts["global"][sl] = self._global_scores(host)
            if map_weights != {"network": 1.0}:
                mp = sum(w * zmaps[b] for b, w in map_weights.items())
            for m, (h, w) in zip(mp, shapes):
                maps.append(m if (h, w) == (s, s) else cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR))
        self.last_parts = {b: v for b, v in parts.items() if not np.isnan(v).all()}
        scores = self.fusion.apply(self.last_parts)
        if self.cfg.map_carries_score:
            carry_score(maps, scores, self.map_peak, self.cfg.map_peak_width)
        if notice and (notes or resized):
            parts = []
            if notes:
                parts.append(f"converted {'/'.join(sorted(notes))} input to RGB uint8")
            if resized:
                parts.append(f"resized {resized} image(s) to the {s}x{s} working size (maps returned at original size)")
            notice("note: " + "; ".join(parts))
        if len({m.shape for m in maps}) == 1:
            return scores, np.stack(maps)
        return scores, maps


def standardise(raw: np.ndarray, maps: np.ndarray, cal: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A branch's z-scores and z-maps relative to its validation normals (``cal``: score and map mean and std),
    float32; the maps in place when they are float32 already (the largest arrays of predict: no extra copies)."""
    m = maps if maps.dtype == np.float32 and maps.flags.writeable else maps.astype(np.float32)
    m -= np.float32(cal["map_mean"])
    m /= np.float32(cal["map_std"])
    return ((raw - cal["score_mean"]) / cal["score_std"]).astype(np.float32), m


def fusion_of(calibration: dict[str, Any], has_prior: bool, where: Path) -> Fusion:
    """The detector's fusion rule (``where``: its calibration file, named in errors); a detector calibrated before
    rules were chosen fused network and prior by their maximum, unstandardised."""
    if "fusion" in calibration:
        return Fusion.from_dict(calibration["fusion"], str(where))
    return Fusion("max", {"network": 1.0, "prior": 1.0} if has_prior else {"network": 1.0})


# ----------------------------------------------------------------------------------------------------------------
# files in, files out
# ----------------------------------------------------------------------------------------------------------------
def unique_names(bases: Sequence[str]) -> list[str]:
    """Output names for ``bases``, unique by construction: the first of each name keeps it, a repeat gets the lowest
    ``_<k>`` that is neither taken nor another input's own name. Why: a bare counter turned ``x``, ``x``, ``x_1`` into
    ``x``, ``x_1``, ``x_1`` and one map overwrote another. Names compare case-insensitively, as on macOS and Windows
    disks."""
    reserved = {b.casefold() for b in bases}
    used: set[str] = set()
    names = []
    for base in bases:
        name, k = base, 0
        while name.casefold() in used or (k and name.casefold() in reserved):
            k += 1
            name = f"{base}_{k}"
        used.add(name.casefold())
        names.append(name)
    return names


def expand_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Image files from files/folders (recursive; a file given twice counts once) with a unique output name each."""
    found: list[tuple[Path, str]] = []
    if not inputs:
        raise InputError("IMAGES", "empty image list; give image files or folders")
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            found += [(f, "__".join(f.relative_to(p).with_suffix("").parts)) for f in files]
        elif p.is_file():
            found.append((p, p.stem))
        else:
            raise InputError(p, "no such image file or folder")
    if not found:
        raise InputError(", ".join(map(str, inputs)), "no images found (png/jpg/bmp/tif)")
    seen: set[Path] = set()
    files_once = []
    for f, base in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            files_once.append((f, base))
    return list(zip([f for f, _ in files_once], unique_names([b for _, b in files_once])))


def check_output_dir(out: Path, inputs: Sequence[str | Path], protected: Sequence[Path] = ()) -> None:
    """Refuse an output folder inside (or equal to) an input folder or the dataset: predict never writes there."""
    o = out.resolve()
    dirs = [Path(i).resolve() if Path(i).is_dir() else Path(i).resolve().parent for i in inputs]
    for d in [*dirs, *[Path(p).resolve() for p in protected]]:
        if o == d or d in o.parents:
            raise InputError(out, f"output folder is inside the input/dataset folder {d}; choose another --out")


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float = 8.0) -> np.ndarray:
    """Heat-map overlay (JET) of a calibrated map on its image; z <= 0 is blue, z >= vmax red."""
    v = (np.clip(amap / vmax, 0, 1) * 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(v, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 0.5, heat, 0.5, 0)


def write_tiff(path: Path, amap: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, amap.astype(np.float32))
    return path


def _dataset_lookup(run_dir: Path) -> tuple[dict[Path, Any], Path | None]:
    """Resolved image path -> Sample for the run's dataset (empty when it is not readable)."""
    try:
        info = RunDir(run_dir).info
        from comgen.data.readers import open_dataset

        ds = open_dataset(info.dataset)
        look = {}
        for split in ("train", "validation", "test"):
            for smp in ds.samples(info.category, split):
                look[Path(smp.path).resolve()] = smp
        return look, Path(info.dataset).resolve()
    except Exception:  # not a run dir, dataset moved or readers unavailable: images are treated as foreign
        return {}, None


@contextmanager
def staged_outputs(root: Path) -> Iterator[Path]:
    """A hidden folder inside ``root`` to write a job's outputs into; they move into place (top-level files such as
    scores.csv last) only when the whole job succeeded. Why: a job that stops half-way (``strict``, Ctrl-C, a crash)
    must leave no mix of new and old files behind."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".predict-", dir=root))
    try:
        yield tmp
        for f in sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: (p.parent == tmp, p)):
            dest = root / f.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Skips:
    """Images a job could not read: one line each, then a summary; with ``strict`` the first one fails the job."""

    def __init__(self, total: int, strict: bool, log: Callable[[str], None]) -> None:
        self.total, self.strict, self.log, self.count = total, strict, log, 0

    def skip(self, exc: ComgenError) -> None:
        if self.strict:
            raise exc
        self.count += 1
        self.log(f"skipped: {exc}")

    def readable(self, items: Sequence[Any], load: Callable[[Any], np.ndarray]) -> list[tuple[Any, np.ndarray]]:
        """(item, image) for each item whose image decodes."""
        out = []
        for item in items:
            try:
                out.append((item, load(item)))
            except ComgenError as exc:
                self.skip(exc)
        return out

    def finish(self, written: int, where: str) -> None:
        if not written:
            raise InputError(where, f"none of the {self.total} image(s) could be read; nothing written")
        if self.count:
            self.log(f"skipped {self.count} of {self.total} image(s) that could not be read; "
                     f"scores.csv lists the other {written}")


def predict_paths(run_dir: str | Path, inputs: Sequence[str | Path], out: str | Path, batch_size: int | None = None,
                  overlays: bool = True, detector: Detector | None = None,
                  log: Callable[[str], None] = _stderr, strict: bool = False,
                  threshold: float | None = None) -> list[dict[str, Any]]:
    """``comgen predict``: maps (exchange layout for dataset images, else maps/<name>.tiff), scores.csv, overlays.

    An image that cannot be read is skipped with one line (``strict``: the job fails and writes nothing).
    ``threshold`` overrides the run's pass/fail threshold for this call.
    """
    if threshold is not None:
        threshold = finite_number(threshold, "--threshold", error=ConfigError)
    files = expand_inputs(inputs)
    out = Path(out)
    lookup, ds_root = _dataset_lookup(Path(run_dir))
    check_output_dir(out, inputs, [ds_root] if ds_root else [])
    det = detector or Detector.load(run_dir)
    cut = det.threshold if threshold is None else float(threshold)
    maps_root = out / "maps"
    rows: list[dict[str, Any]] = []
    bs = batch_size_of(batch_size, det.cfg.batch_size)
    skips = _Skips(len(files), strict, log)
    noticed = False

    def once(msg: str) -> None:
        nonlocal noticed
        if not noticed:
            log(msg)
            noticed = True

    with staged_outputs(out) as stage:
        for i in progress(range(0, len(files), bs), "predict", total=(len(files) + bs - 1) // bs):
            chunk = skips.readable(files[i:i + bs], lambda item: read_rgb(item[0]))
            if not chunk:
                continue
            scores, maps = det.predict([img for _, img in chunk], bs, notice=once, job_size=len(files))
            for k, (((f, name), img), sc, amap) in enumerate(zip(chunk, scores, maps)):
                smp = lookup.get(f.resolve())
                try:
                    if smp is not None and smp.split == "test":
                        write_map(stage / "maps", smp, amap.astype(np.float32))
                        mpath = map_path(maps_root, smp)
                    else:
                        write_tiff(stage / "maps" / f"{name}.tiff", amap)
                        mpath = maps_root / f"{name}.tiff"
                except ComgenError as exc:
                    skips.skip(exc)
                    continue
                if overlays:
                    write_png(stage / "overlays" / f"{name}.png", overlay(img, amap))
                rows.append({"image": str(f), "name": name, "score": float(sc), "threshold": cut,
                             "decision": "fail" if sc > cut else "pass", "map": str(mpath),
                             **det.branch_scores(k)})
        skips.finish(len(rows), ", ".join(map(str, inputs)))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(stage / "scores.csv", buf.getvalue())
    return rows


def predict_dataset(run: RunDir | str | Path, split: str = "test", maps_root: str | Path | None = None,
                    batch_size: int | None = None, detector: Detector | None = None, strict: bool = False,
                    log: Callable[[str], None] = _stderr) -> list[dict[str, Any]]:
    """Write a map for every image of ``split`` of the run's dataset (exchange layout) and ``scores.csv``.

    An image that cannot be read is skipped with one line (``strict``: the job fails and writes nothing).
    """
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    maps_root = Path(maps_root) if maps_root is not None else run.maps
    info = run.info
    samples = open_dataset(info.dataset).samples(info.category, split)
    if not samples:
        raise InputError(f"{info.dataset}/{info.category}/{split}", "no images in this split")
    det = detector or Detector.load(run.root)
    bs = batch_size_of(batch_size, det.cfg.batch_size)
    skips = _Skips(len(samples), strict, log)
    rows: list[dict[str, Any]] = []
    with staged_outputs(maps_root) as stage:
        for i in progress(range(0, len(samples), bs), f"predict {split}", total=(len(samples) + bs - 1) // bs):
            chunk = skips.readable(samples[i:i + bs], lambda smp: smp.load_image())
            if not chunk:
                continue
            scores, maps = det.predict([img for _, img in chunk], bs, notice=None, job_size=len(samples))
            for j, ((smp, _), sc, amap) in enumerate(zip(chunk, scores, maps)):
                try:
                    write_map(stage, smp, amap.astype(np.float32))
                except ComgenError as exc:
                    skips.skip(exc)
                    continue
                rows.append({"category": smp.category, "split": smp.split, "label": smp.label, "kind": smp.kind,
                             "image_id": smp.image_id, "path": str(smp.path), "score": float(sc),
                             "decision": int(sc > det.threshold),  # 1 = fail (anomalous), the exchange CSV's convention
                             **det.branch_scores(j)})
        skips.finish(len(rows), f"{info.dataset}/{info.category}/{split}")
        cols = ("category", "split", "label", "image_id", "path", "score", "decision", *BRANCH_COLUMNS)
        write_scores_csv(stage / "scores.csv", [{c: r[c] for c in cols} for r in rows])
    return rows


__all__ = ["Detector", "predict_paths", "predict_dataset", "expand_inputs", "to_rgb_uint8"]
