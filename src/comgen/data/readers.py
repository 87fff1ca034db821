"""Dataset readers: MVTec LOCO AD, MVTec AD and a plain folder layout behind one interface.

Why one interface: every stage asks ``dataset.samples(category, split)`` and never cares which layout
the files are in. Readers only list and parse; they never write into a dataset, and they check the
structure (missing/empty split, orphan ground truth, bad ``defects_config.json``) with one-line
``DatasetError``s that name the offending path. Pixel-level checks (decodability, mask sizes) are in
``comgen.data.check`` because they need to decode every file.

Layouts (per category folder ``<cat>/``):
- ``loco``: ``train/good``, ``validation/good``, ``test/{good,logical_anomalies,structural_anomalies}``,
  ``ground_truth/<label>/<id>/NNN.png``, ``defects_config.json``.
- ``mvtec_ad``: ``train/good``, ``test/<defect>/NNN.png``, ``ground_truth/<defect>/NNN_mask.png``.
- ``folder``: ``train/good``, ``test/good``, ``test/<defect>/*``, optional ``ground_truth/<defect>/`` holding
  ``<id>.png``, ``<id>_mask.png`` or ``<id>/*.png``.
A root that itself has ``train/`` is one category named after the folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from comgen.data.imageio import IMAGE_SUFFIXES
from comgen.errors import ConfigError, DatasetError
from comgen.records import DefectSpec, Sample, SampleKind

Layout = Literal["loco", "mvtec_ad", "folder"]
LAYOUTS: tuple[str, ...] = ("loco", "mvtec_ad", "folder")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
LOCO_TEST_LABELS: dict[str, SampleKind] = {
    "good": "good", "logical_anomalies": "logical", "structural_anomalies": "structural",
}
DEFECTS_CONFIG = "defects_config.json"


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (not recursive), sorted by name; hidden files ignored."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def files_fingerprint(paths: Iterable[Path], root: Path) -> str:
    """A short hash of the files' names (relative to ``root``), sizes and modification times.

    Why: a stage's outputs depend on its input files, not only on its config; this notices an added, deleted,
    renamed or rewritten file with one ``stat`` per file, cheap for thousands of images.
    """
    digest = hashlib.sha256()
    for path in sorted({Path(p) for p in paths}):
        try:
            st = path.stat()
        except OSError as exc:
            raise DatasetError(path, f"cannot read file ({exc.strerror or exc})") from None
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def parse_defects_config(path: Path) -> dict[str, DefectSpec]:
    """Parse MVTec LOCO's ``defects_config.json`` (a list of defect entries) with one-line errors."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"cannot read defects config ({exc.__class__.__name__})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(path, "expected a JSON list of defect entries")
    out: dict[str, DefectSpec] = {}
    seen_values: dict[int, str] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DatasetError(path, f"entry {i} is not an object")
        missing = [k for k in ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")
                   if k not in entry]
        if missing:
            raise DatasetError(path, f"entry {i} lacks {', '.join(missing)}")
        name, value = entry["defect_name"], entry["pixel_value"]
        sat, rel = entry["saturation_threshold"], entry["relative_saturation"]
        if not isinstance(name, str) or not name:
            raise DatasetError(path, f"entry {i}: defect_name must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise DatasetError(path, f"entry {i} ({name}): pixel_value must be an integer in 1..255")
        if isinstance(sat, bool) or not isinstance(sat, (int, float)) or sat <= 0:
            raise DatasetError(path, f"entry {i} ({name}): saturation_threshold must be a positive number")
        if not isinstance(rel, bool):
            raise DatasetError(path, f"entry {i} ({name}): relative_saturation must be true or false")
        if rel and sat > 1:
            raise DatasetError(path, f"entry {i} ({name}): relative saturation_threshold must be <= 1")
        if name in out:
            raise DatasetError(path, f"defect_name {name!r} appears twice")
        if value in seen_values:
            raise DatasetError(path, f"pixel_value {value} used by both {seen_values[value]!r} and {name!r}")
        seen_values[value] = name
        out[name] = DefectSpec(name=name, pixel_value=int(value), saturation_threshold=float(sat),
                               relative_saturation=rel)
    return out


def _detect_layout(cat_dirs: list[Path]) -> Layout:
    """Pick the layout from the files present (LOCO markers first, then MVTec AD mask naming)."""
    for d in cat_dirs:
        test = d / "test"
        if ((d / "validation").is_dir() or (d / DEFECTS_CONFIG).is_file()
                or (test / "logical_anomalies").is_dir() or (test / "structural_anomalies").is_dir()):
            return "loco"
    for d in cat_dirs:
        gt = d / "ground_truth"
        for sub in _subdirs(gt):
            files = list_images(sub)
            if files and all(f.stem.endswith("_mask") for f in files):
                return "mvtec_ad"
    return "folder"


@dataclass
class Dataset:
    """An opened dataset root: lists categories and their samples per split; never writes."""

    root: Path
    layout: Layout
    _category_dirs: dict[str, Path] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[str, str], list[Sample]] = field(default_factory=dict, repr=False)

    def categories(self) -> list[str]:
        return list(self._category_dirs)

    def select_categories(self, spec: str | Sequence[str]) -> list[str]:
        """``"all"``, ``"a,b"`` or a list -> known category names; ConfigError naming an unknown one."""
        known = self.categories()
        if isinstance(spec, str):
            spec = known if spec == "all" else [c.strip() for c in spec.split(",") if c.strip()]
        unknown = [c for c in spec if c not in known]
        if unknown or not spec:
            raise ConfigError("--category", f"unknown category {unknown[0] if unknown else ''!r} "
                                            f"(dataset has: {', '.join(known)})")
        return list(spec)

    def category_dir(self, category: str) -> Path:
        if category not in self._category_dirs:
            raise DatasetError(self.root, f"no category {category!r} (have: {', '.join(self._category_dirs)})")
        return self._category_dirs[category]

    def defects(self, category: str) -> dict[str, DefectSpec]:
        """LOCO defect specs from ``defects_config.json``; empty for other layouts or when absent."""
        if self.layout != "loco":
            return {}
        path = self.category_dir(category) / DEFECTS_CONFIG
        return parse_defects_config(path) if path.is_file() else {}

    def fingerprint(self, category: str, splits: Sequence[str]) -> str:
        """``files_fingerprint`` of the images and masks of ``splits`` (and ``defects_config.json`` with the test
        split, which evaluation reads with its masks), named relative to the category folder."""
        files: list[Path] = []
        for split in splits:
            for smp in self.samples(category, split):
                files += [Path(smp.path), *map(Path, smp.mask_paths)]
        cat_dir = self.category_dir(category)
        if "test" in splits and (cat_dir / DEFECTS_CONFIG).is_file():
            files.append(cat_dir / DEFECTS_CONFIG)
        return files_fingerprint(files, cat_dir)

    def samples(self, category: str, split: str) -> list[Sample]:
        """Samples of one split, sorted by label then file name (cached; structure is checked)."""
        if split not in SPLITS:
            raise DatasetError(self.root, f"unknown split {split!r} (use one of {', '.join(SPLITS)})")
        key = (category, split)
        if key not in self._cache:
            cat_dir = self.category_dir(category)
            if split == "validation" and self.layout != "loco":
                self._cache[key] = []
            elif split == "test":
                self._cache[key] = self._test_samples(category, cat_dir)
            else:
                self._cache[key] = self._good_split(category, cat_dir, split)
        return list(self._cache[key])

    # -- internals ---------------------------------------------------------------------------------

    def _good_split(self, category: str, cat_dir: Path, split: str) -> list[Sample]:
        folder = cat_dir / split / "good"
        if not folder.is_dir():
            raise DatasetError(folder, f"missing {split} split folder")
        extra = [d.name for d in _subdirs(cat_dir / split) if d.name != "good"]
        if extra:
            raise DatasetError(cat_dir / split / extra[0], f"unexpected folder in the {split} split (only good/)")
        files = list_images(folder)
        if not files:
            raise DatasetError(folder, f"empty {split} split (no images)")
        return [Sample(path=p, category=category, split=split, label="good", kind="good", image_id=p.stem)
                for p in files]

    def _test_samples(self, category: str, cat_dir: Path) -> list[Sample]:
        test = cat_dir / "test"
        if not test.is_dir():
            if self.layout == "loco":
                raise DatasetError(test, "missing test split folder")
            return []  # normal images only: nothing labelled to test on
        labels = _subdirs(test)
        if not labels:
            raise DatasetError(test, "empty test split (no label folders)")
        gt_root = cat_dir / "ground_truth"
        out: list[Sample] = []
        for label_dir in labels:
            label = label_dir.name
            if self.layout == "loco":
                if label not in LOCO_TEST_LABELS:
                    raise DatasetError(label_dir, "unexpected test folder for the MVTec LOCO layout "
                                                  "(expected good, logical_anomalies, structural_anomalies)")
                kind: SampleKind = LOCO_TEST_LABELS[label]
            else:
                kind = "good" if label == "good" else "defect"
            files = list_images(label_dir)
            if not files:
                raise DatasetError(label_dir, "empty test folder (no images)")
            for p in files:
                masks = [] if kind == "good" else self._masks_for(gt_root / label, p.stem)
                out.append(Sample(path=p, category=category, split="test", label=label, kind=kind,
                                  image_id=p.stem, mask_paths=masks))
        self._check_orphan_ground_truth(gt_root, {(s.label, s.image_id) for s in out if s.kind != "good"})
        return out

    def _masks_for(self, gt_label: Path, stem: str) -> list[Path]:
        if self.layout == "loco":
            return list_images(gt_label / stem)
        candidates = [gt_label / f"{stem}_mask{s}" for s in IMAGE_SUFFIXES]
        if self.layout == "folder":
            candidates += [gt_label / f"{stem}{s}" for s in IMAGE_SUFFIXES]
        found = [c for c in candidates if c.is_file()]
        if found:
            return found[:1]
        return list_images(gt_label / stem) if self.layout == "folder" else []

    def _check_orphan_ground_truth(self, gt_root: Path, anomalous: set[tuple[str, str]]) -> None:
        """Every ground-truth entry must belong to an anomalous test image (catches renamed/missing files)."""
        for label_dir in _subdirs(gt_root):
            label = label_dir.name
            for entry in sorted(label_dir.iterdir()):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stem = entry.name
                elif entry.suffix.lower() in IMAGE_SUFFIXES:
                    stem = entry.stem[: -len("_mask")] if entry.stem.endswith("_mask") else entry.stem
                else:
                    continue
                if (label, stem) not in anomalous:
                    raise DatasetError(entry, f"ground truth with no matching anomalous image test/{label}/{stem}.*")


def _category_dirs(root: Path) -> dict[str, Path]:
    if (root / "train").is_dir():
        return {root.name: root}
    cats = {d.name: d for d in _subdirs(root) if (d / "train").is_dir()}
    if not cats:
        raise DatasetError(root, "no category found (expected <root>/train/good or <root>/<category>/train/good)")
    return cats


def open_dataset(root: str | Path, layout: str = "auto") -> Dataset:
    """Open a dataset root (or a single category folder) in a given or auto-detected layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    if layout not in ("auto", *LAYOUTS):
        raise DatasetError(root, f"unknown layout {layout!r} (use auto, {', '.join(LAYOUTS)})")
    cats = _category_dirs(root)
    chosen: Layout = _detect_layout(list(cats.values())) if layout == "auto" else layout  # type: ignore[assignment]
    for d in cats.values():  # cheap structural check up front: every required split folder exists
        # a folder of normal images alone (train/good) is where a factory starts: test is optional but in LOCO
        required = ("train", "validation", "test") if chosen == "loco" else ("train",)
        for split in required:
            if not (d / split).is_dir():
                raise DatasetError(d / split, f"missing {split} split folder")
    return Dataset(root=root, layout=chosen, _category_dirs=cats)
