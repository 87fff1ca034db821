"""Reading an export bundle (``comgen export RUN --bundle DIR``): the manifest, its arrays and its graphs.

Why checked here: a bundle travels to another machine; a missing file, a damaged array or a NaN calibration must
stop with one line naming the file, not with NaN scores. Everything is JSON or safetensors (never pickle).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from comgen.errors import ArtifactError

MANIFEST = "bundle.json"
# 2: the prior may average several learner seeds (``prior.members``), which format 1 readers would skip;
# 3: the fusion may use the count patterns (``prior.counts``), which earlier readers cannot score;
# 4: an instance stage may read bands of uneven light as background (``instance_stage.shading``), which earlier
# readers would ignore and so segment otherwise;
# 5: an instance stage may split a class into part types by shape modes (``mode_parent`` and its arrays), which
# earlier readers would ignore;
# 6: an instance stage may find parts of a surface's colour lying apart from it (groups below -1), which earlier
# readers would read as the surface;
# 7: an instance stage may grow faint parts over their blurred edges and islands of the background's colour over
# their fringes, or keep the islands apart from the blobs (``blob_hysteresis``, ``fringe_px``, ``islands_apart``),
# settings that earlier readers do not know
FORMAT = 7
READABLE = (1, 2, 3, 4, 5, 6, 7)  # a format-1 bundle has one learner seed and reads unchanged
REEXPORT = "export it again (`comgen export RUN --bundle DIR`)"
FUSION_RULES = ("weighted", "max", "softplus")  # the rules ``branches.fuse`` scores (``detect.fusion.RULES``)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """``bundle.json`` of ``directory`` as a dict, refusing another format or a missing section."""
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise ArtifactError(d, f"not an export bundle ({MANIFEST} missing); {REEXPORT}")
    try:
        man = json.loads(path.read_text())
    except ValueError:
        raise ArtifactError(path, f"not valid JSON; {REEXPORT}") from None
    got = man.get("format") if isinstance(man, dict) else None
    if isinstance(got, bool) or got not in READABLE:
        raise ArtifactError(path, f"bundle format {got!r} is not one of {', '.join(map(str, READABLE))}; {REEXPORT}")
    for key in ("image_size", "tiles", "k", "calibration", "fusion", "graphs", "bank", "arrays"):
        if key not in man:
            raise ArtifactError(path, f"entry {key!r} missing; {REEXPORT}")
    if man["tiles"] != 1:  # the runtime mirrors untiled scoring only; comgen export refuses tiled detectors too
        raise ArtifactError(path, f"tiles is {man['tiles']!r}: tiled detectors cannot run from a bundle; {REEXPORT}")
    for key in ("score_mean", "score_std", "map_mean", "map_std", "threshold"):
        v = man["calibration"].get(key)
        if not is_number(v) or (key.endswith("std") and v <= 0):
            raise ArtifactError(path, f"calibration.{key} is {v!r}, not a finite number; {REEXPORT}")
    if not isinstance(man["fusion"], dict):
        raise ArtifactError(path, f"entry 'fusion' is malformed; {REEXPORT}")
    if man["fusion"].get("rule") not in FUSION_RULES:
        raise ArtifactError(path, f"fusion.rule is {man['fusion'].get('rule')!r}, not one of "
                                  f"{', '.join(FUSION_RULES)}; {REEXPORT}")
    cap = man["fusion"].get("cap", 0.0)  # older bundles have none: no cap
    if not is_number(cap) or cap < 0:
        raise ArtifactError(path, f"fusion.cap is {cap!r}, not a number >= 0; {REEXPORT}")
    prior = man.get("prior")
    if isinstance(prior, dict):
        members = prior.get("members") or []
        seeds = [("prior", prior)] + ([(f"prior.members[{i}]", m) for i, m in enumerate(members)]
                                      if isinstance(members, list) else [])
        for name, seed in seeds:
            if isinstance(seed, dict) and seed.get("partner") is not None:  # a model and its counterpart, averaged
                _check_spread(seed.get("pair"), f"{name}.pair", path)
        if members:  # the learner seeds, averaged
            _check_spread(prior.get("ensemble"), "prior.ensemble", path)
    width = man.get("map_peak_width", 0.5)  # a bundle without it runs the default width
    if not is_number(width) or width <= 0:
        raise ArtifactError(path, f"map_peak_width is {width!r}, not a positive number; {REEXPORT}")
    return man


def _check_spread(entry: Any, name: str, path: Path) -> None:
    """An ensemble's calibration: a finite mean and a positive std."""
    if not isinstance(entry, dict) or not is_number(entry.get("mean")) or not is_number(entry.get("std")) \
            or entry["std"] <= 0:
        raise ArtifactError(path, f"{name} is {entry!r}, not a finite mean and a positive std; {REEXPORT}")


def is_number(v: Any) -> bool:
    """A finite int or float (JSON's true/false are not numbers here)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def read_arrays(directory: Path, name: str, expected: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The arrays of ``directory/name``, each of the shape the manifest lists and finite (NaN allowed only where
    the manifest's ``nan_ok`` says so: an imputation fill is never NaN, but a feature may be)."""
    path = directory / name
    if not path.is_file():
        raise ArtifactError(path, f"missing; {REEXPORT}")
    try:
        arrays = load_file(str(path))
    except Exception as exc:  # a damaged header raises safetensors' own error type
        raise ArtifactError(path, f"unreadable ({exc.__class__.__name__}); {REEXPORT}") from None
    for key, shape in expected.items():
        if key not in arrays:
            raise ArtifactError(path, f"array {key!r} missing; {REEXPORT}")
        if list(arrays[key].shape) != list(shape):
            raise ArtifactError(path, f"array {key!r} has shape {list(arrays[key].shape)}, the manifest says "
                                      f"{list(shape)}; {REEXPORT}")
        a = arrays[key]
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise ArtifactError(path, f"array {key!r} has NaN/infinite values; {REEXPORT}")
    return arrays


def graph_path(directory: Path, man: dict[str, Any], name: str) -> Path | None:
    """The file of graph ``name`` (None when the bundle has none), refusing a listed graph that is missing."""
    entry = man["graphs"].get(name)
    if entry is None:
        return None
    path = directory / entry["file"]
    if not path.is_file():
        raise ArtifactError(path, f"missing; {REEXPORT}")
    return path
