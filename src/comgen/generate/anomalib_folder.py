"""Export a generated set in the layout of anomalib's ``Folder`` datamodule: ``normal/``, ``abnormal/``, ``mask/``.

Why: anomalib trains and tests any of its models on a folder dataset; with comgen's anomalies as its abnormal
images (and their masks), an anomalib model can be validated on logical anomalies where no real ones exist yet.
anomalib pairs an abnormal image with its mask by sorted file name, so each mask is named exactly as its image.
Normal images are the category's training normals at the generated images' size.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

from comgen.data.generated import load_item, read_generated
from comgen.errors import InputError
from comgen.io import atomic_write_json, write_png
from comgen.records import Sample

FOLDERS = ("normal", "abnormal", "mask")
MARKER = "comgen_export.json"


def check_export_folder(out: Path, dataset_root: Path | None) -> None:
    """Refuse a folder inside the dataset, or a non-empty one that an earlier export did not write."""
    if dataset_root is not None and out.resolve().is_relative_to(Path(dataset_root).resolve()):
        raise InputError(out, "lies inside the dataset; export elsewhere (datasets are only read)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError(out, "folder is not empty and holds no earlier export; choose an empty or new folder")


def export_anomalib_folder(generated: str | Path, normals: Sequence[Sample], out: str | Path,
                           dataset_root: str | Path | None = None) -> dict[str, Any]:
    """Write ``out/normal``, ``out/abnormal`` and ``out/mask`` (0/255 PNG named as its image); return the counts.

    ``generated`` is a generated folder (``RUN/generated/<backend>``); ``normals`` the training images. An earlier
    export in ``out`` is replaced, so the folder never mixes two sets.
    """
    generated, out = Path(generated), Path(out)
    check_export_folder(out, Path(dataset_root) if dataset_root is not None else None)
    lines = read_generated(generated)
    if not lines:
        raise InputError(generated, "generated set is empty; nothing to export")
    if not normals:
        raise InputError(out, "no normal training images to export")
    for name in FOLDERS:  # ours (the marker says so): a smaller export must not keep the former one's files
        shutil.rmtree(out / name, ignore_errors=True)
    size: tuple[int, int] | None = None
    for line in lines:
        image, mask = load_item(generated, line)
        size = size or image.shape[:2]
        name = f"{Path(str(line['id'])).name}.png"
        write_png(out / "abnormal" / name, image)
        write_png(out / "mask" / name, mask)
    assert size is not None
    for sample in normals:
        image = sample.load_image()
        if image.shape[:2] != size:
            image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
        write_png(out / "normal" / f"{sample.image_id}.png", image)
    summary = {"generated": str(generated), "normal": len(normals), "abnormal": len(lines),
               "size": list(size), "folders": {"normal_dir": "normal", "abnormal_dir": "abnormal", "mask_dir": "mask"}}
    atomic_write_json(out / MARKER, summary)
    return summary
