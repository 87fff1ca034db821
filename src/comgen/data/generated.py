"""Reads a generated anomaly set (the layout ``comgen.generate.writer`` writes): its manifest, items, gates, truth.

Why apart from the writer: the mask stage, the detector and the benchmarks read generated sets, and none of them may
depend on the generation stage itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comgen.errors import ArtifactError, ConfigError
from comgen.io import read_jsonl

MANIFEST = "manifest.jsonl"
REVISION_FILE = "generator.json"


def manifest_files(out: Path) -> list[Path]:
    """The main manifest (when written) and every shard's manifest."""
    files = [out / MANIFEST] if (out / MANIFEST).exists() else []
    return files + sorted(out.glob("manifest.shard-*-of-*.jsonl"))


def merged_lines(out: Path) -> list[dict[str, Any]]:
    """Manifest lines of every manifest file, one per id (the first seen), in index order."""
    seen: dict[str, dict[str, Any]] = {}
    for path in manifest_files(out):
        for line in read_jsonl(path):
            if isinstance(line, dict) and "id" in line:
                seen.setdefault(str(line["id"]), line)
    return sorted(seen.values(), key=lambda ln: (ln.get("index", 0), str(ln["id"])))


def read_generated(out: str | Path) -> list[dict[str, Any]]:
    """All manifest lines of a generated set (main and shard manifests merged, one per id, in index order)."""
    out = Path(out)
    if not out.is_dir() or not manifest_files(out):
        raise ArtifactError(out, "no generated anomalies here (no manifest.jsonl); run `comgen generate` first")
    return merged_lines(out)


def _read_png(path: Path, flags: int) -> np.ndarray:
    if not path.is_file():
        raise ArtifactError(path, "generated file listed in the manifest is missing")
    arr = cv2.imread(str(path), flags)
    if arr is None:
        raise ArtifactError(path, "generated file is not a readable PNG")
    return arr


def listed_path(out: str | Path, line: dict[str, Any], key: str) -> Path:
    """The file a manifest line lists under ``key``, refused when absolute or outside the generated folder.

    Why: a manifest from someone else (or edited by hand) could list a test image, and training would use it.
    """
    out = Path(out)
    rel = line.get(key)
    where = out / MANIFEST
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(where, f"line {line.get('id', '?')!r} has no {key!r} file")
    if Path(rel).is_absolute():
        raise ArtifactError(where, f"line {line.get('id', '?')!r} lists an absolute path {rel!r}; "
                                   "files must lie inside the generated folder")
    path = out / rel
    if not path.resolve().is_relative_to(out.resolve()):
        raise ArtifactError(where, f"line {line.get('id', '?')!r} lists {rel!r}, outside the generated folder")
    return path


def load_item(out: str | Path, line: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(image HxWx3 uint8 RGB, mask HxW bool) of one manifest line."""
    image_path, mask_path = listed_path(out, line, "file"), listed_path(out, line, "mask")
    image = cv2.cvtColor(_read_png(image_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mask = _read_png(mask_path, cv2.IMREAD_GRAYSCALE) > 127
    if mask.shape != image.shape[:2]:
        raise ArtifactError(mask_path, f"mask is {mask.shape} but its image is {image.shape[:2]}")
    return image, mask


def load_gate(out: str | Path, line: dict[str, Any]) -> np.ndarray | None:
    """The edited component's soft gate map (HxW float32 in [0, 1]), or None when the back-end gave none."""
    if not line.get("gate"):
        return None
    return _read_png(listed_path(out, line, "gate"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


def load_truth(out: str | Path, line: dict[str, Any]) -> np.ndarray | None:
    """The synth truth part-label map after the edit (HxW uint8), or None."""
    if not line.get("truth"):
        return None
    return _read_png(listed_path(out, line, "truth"), cv2.IMREAD_UNCHANGED)


def saved_revision(out: str | Path) -> int:
    """The generator revision a generated folder was made with (1: made before revisions were recorded)."""
    path = Path(out) / REVISION_FILE
    if not path.is_file():
        return 1
    try:
        return int(json.loads(path.read_text())["revision"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(path, "unreadable generator revision; use another --out or remove the folder") from None
