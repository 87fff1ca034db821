"""The trained detector's files in ``RUN/detector``: their names, and how they are written and read.

Why one module: training writes them, prediction and export read them; neither should import the other for a
file name. Why no pickle anywhere: a run directory may come from someone else, and unpickling a crafted file runs
its code; every file here is safetensors (tensors only) or JSON/YAML (plain values), and every number read back is
checked (finite, in range), so a corrupt file stops with one line instead of giving NaN scores.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from comgen.errors import ArtifactError, ComgenError, ConfigError
from comgen.io import atomic_path, atomic_write_json

STATE = "state.json"  # resume point, plain values: epoch, early stopping, history, config, RNG and optimizer layout
STATE_TENSORS = "state.safetensors"  # resume point, tensors: head, optimizer state, torch RNG state
LEGACY_STATE = "state.pt"  # the pickled resume point of older versions: never loaded
STATE_FORMAT = 1
BEST = "best.safetensors"  # weights predict/export use
LAST = "head.safetensors"
CALIBRATION = "calibration.json"
HISTORY = "history.jsonl"
BANK = "bank"

RETRAIN = "retrain the detector (`comgen train`)"


# ----------------------------------------------------------------------------------------------------------------
# value checks shared by every reader (and by the detector's config)
# ----------------------------------------------------------------------------------------------------------------
def _bounds_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = [f"{op} {v:g}" for op, v in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if v is not None]
    return " " + " and ".join(parts) if parts else ""


def finite_number(value: Any, where: str | Path, name: str = "", *, gt: float | None = None, ge: float | None = None,
                  lt: float | None = None, le: float | None = None,
                  error: type[ComgenError] = ArtifactError) -> float:
    """``value`` as a float when it is a real number (not a bool or a string), finite and inside the bounds.

    Why one helper: a NaN, inf, string or out-of-range value in a config or a saved file must stop with one line
    naming it; every comparison with NaN is False, so an unchecked one slips through any ``if x < lo`` test.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok:
        x = float(value)
        ok = ((gt is None or x > gt) and (ge is None or x >= ge) and (lt is None or x < lt)
              and (le is None or x <= le))
    if not ok:
        label = f"{name} " if name else ""
        raise error(where, f"{label}must be a finite number{_bounds_text(gt, ge, lt, le)}, got {value!r}")
    return float(value)


def check_finite(tensors: Mapping[str, Any], where: str | Path) -> None:
    """Refuse NaN/inf in any floating tensor or array of ``tensors`` (weights, saved statistics)."""
    for key, t in tensors.items():
        if isinstance(t, torch.Tensor):
            bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        else:
            a = np.asarray(t)
            bad = int((~np.isfinite(a)).sum()) if np.issubdtype(a.dtype, np.floating) else 0
        if bad:
            raise ArtifactError(where, f"tensor {key} has {bad} NaN/infinite value(s); {RETRAIN}")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object: a truncated, binary or mistyped file is one ArtifactError."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ArtifactError(path, f"not valid JSON, truncated or corrupt ({exc.__class__.__name__}); {RETRAIN}"
                            ) from None
    if not isinstance(data, dict):
        raise ArtifactError(path, f"expected a JSON object, got {type(data).__name__}; {RETRAIN}")
    return data


def scale_indices(value: Any, where: str) -> tuple[int, ...]:
    """A non-empty list of detector feature-scale indices as a tuple; anything else is a ConfigError naming ``where``
    (a branch config's ``scales`` option)."""
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ConfigError(where, f"must be a non-empty list of scale indices, got {value!r}")
    return tuple(value)


def open_branch_dir(directory: str | Path, data_file: str, config_type: Any) -> tuple[Path, Any, dict[str, Any]]:
    """A detector branch's folder, its config and its raw calibration, once its three files are known to exist (a
    missing one is one ArtifactError naming it)."""
    d = Path(directory)
    for name in (data_file, "config.yaml", "calibration.json"):
        if not (d / name).is_file():
            raise ArtifactError(d / name, f"missing; {RETRAIN}")
    return d, config_type.load(d / "config.yaml"), read_json_object(d / "calibration.json")


def save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


# ----------------------------------------------------------------------------------------------------------------
# the resume point: tensors in state.safetensors, everything else in state.json
# ----------------------------------------------------------------------------------------------------------------
def _plain(value: Any, where: str) -> Any:
    """JSON-able copy of a Python value; tuples are tagged so that loading gives them back as tuples."""
    if isinstance(value, tuple):
        return {"__tuple__": [_plain(v, where) for v in value]}
    if isinstance(value, list):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in {STATE}")


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_unplain(v) for v in value["__tuple__"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def _pack_optimizer(opt: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An optimizer ``state_dict``: its tensors go to ``tensors``, its structure and plain values are returned."""
    layout: dict[str, dict[str, Any]] = {}
    for pid, entries in opt["state"].items():
        layout[str(pid)] = {}
        for key, v in entries.items():
            if isinstance(v, torch.Tensor):
                name = f"optimizer/{pid}/{key}"
                tensors[name] = v
                layout[str(pid)][key] = {"tensor": name}
            else:
                layout[str(pid)][key] = {"value": _plain(v, f"optimizer state {pid}.{key}")}
    return {"param_groups": _plain(opt["param_groups"], "optimizer param_groups"), "state": layout}


def _unpack_optimizer(saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state = {int(pid): {key: tensors[e["tensor"]] if "tensor" in e else _unplain(e["value"])
                        for key, e in entries.items()} for pid, entries in saved["state"].items()}
    return {"state": state, "param_groups": _unplain(saved["param_groups"])}


def _pack_rng(rng: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """torch (a uint8 tensor), numpy (MT19937 tuple) and Python (Mersenne tuple) generator states."""
    tensors["rng/torch"] = rng["torch"]
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    version, internal, gauss_next = rng["python"]
    return {"numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}


def _unpack_rng(saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = saved["numpy"]
    version, internal, gauss_next = saved["python"]
    torch_state = tensors["rng/torch"]
    if torch_state.dtype != torch.uint8:
        raise TypeError("torch RNG state is not uint8")
    return {"torch": torch_state,
            "numpy": (str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
            "python": (int(version), tuple(int(k) for k in internal), gauss_next)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_state(det_dir: Path, state: dict[str, Any]) -> None:
    """Write the resume point: ``head`` (state dict), ``optimizer`` (state dict) and ``rng`` become tensors plus a
    JSON layout; every other entry must be plain JSON. The JSON is written last and names the tensors' checksum,
    so a pair torn by an interruption is refused rather than resumed inexactly."""
    tensors: dict[str, torch.Tensor] = {f"head/{k}": v for k, v in state["head"].items()}
    meta = {k: _plain(v, k) for k, v in state.items() if k not in ("head", "optimizer", "rng")}
    meta["head"] = list(state["head"])
    meta["optimizer"] = _pack_optimizer(state["optimizer"], tensors)
    meta["rng"] = _pack_rng(state["rng"], tensors)
    save_safetensors(det_dir / STATE_TENSORS, tensors)
    meta["format"] = STATE_FORMAT
    meta["tensors_sha256"] = _sha256(det_dir / STATE_TENSORS)
    atomic_write_json(det_dir / STATE, meta)


def has_state(det_dir: Path) -> bool:
    """Whether ``det_dir`` holds a resume point of this version (what ``--resume`` continues from)."""
    return (det_dir / STATE).is_file()


def _state_files(det_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked pair (JSON, tensors); a legacy pickled ``state.pt`` is refused, never opened."""
    path, tpath = det_dir / STATE, det_dir / STATE_TENSORS
    if not path.is_file():
        legacy = det_dir / LEGACY_STATE
        if legacy.exists():
            raise ArtifactError(legacy, "pickled checkpoint of an older version, never loaded (unpickling can run "
                                        "code); delete it and retrain (`comgen train` without --resume)")
        raise ArtifactError(path, "no checkpoint to resume from; train without --resume first")
    meta = read_json_object(path)
    if meta.get("format") != STATE_FORMAT:
        raise ArtifactError(path, f"checkpoint format {meta.get('format')!r} is not {STATE_FORMAT}; "
                                  "train without --resume")
    if not tpath.is_file():
        raise ArtifactError(tpath, "checkpoint tensors missing; train without --resume")
    if meta.get("tensors_sha256") != _sha256(tpath):
        raise ArtifactError(tpath, f"does not belong to {STATE} (checksum mismatch, interrupted write?); "
                                   "train without --resume")
    try:
        tensors = load_file(str(tpath))
    except Exception as exc:
        raise ArtifactError(tpath, f"corrupt checkpoint ({exc.__class__.__name__})") from None
    check_finite(tensors, tpath)
    return meta, tensors


def load_state(det_dir: Path) -> dict[str, Any]:
    """The resume point as training saved it: head and optimizer state dicts, RNG states and the plain entries."""
    meta, tensors = _state_files(det_dir)
    path = det_dir / STATE
    try:
        state = {k: _unplain(v) for k, v in meta.items()
                 if k not in ("head", "optimizer", "rng", "format", "tensors_sha256")}
        state["head"] = {k: tensors[f"head/{k}"] for k in meta["head"]}
        state["optimizer"] = _unpack_optimizer(meta["optimizer"], tensors)
        state["rng"] = _unpack_rng(meta["rng"], tensors)
        _check_progress(state, path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(path, f"corrupt checkpoint ({exc.__class__.__name__}: {str(exc)[:80]}); "
                                  "train without --resume") from None
    return state


def _check_progress(state: dict[str, Any], path: Path) -> None:
    """The early-stopping entries training continues from: counts are non-negative integers, the loss a number."""
    for key in ("epoch", "best_epoch", "bad"):
        v = state[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (-1 if key == "best_epoch" else 0):
            raise ArtifactError(path, f"{key} must be a non-negative integer, got {v!r}; train without --resume")
    loss = state["best_loss"]
    if not (isinstance(loss, (int, float)) and not isinstance(loss, bool)) or math.isnan(loss):
        raise ArtifactError(path, f"best_loss must be a number, got {loss!r}; train without --resume")
    if not isinstance(state["config"], dict) or not isinstance(state.get("history", []), list):
        raise ArtifactError(path, "config must be a mapping and history a list; train without --resume")


# ----------------------------------------------------------------------------------------------------------------
# the calibration
# ----------------------------------------------------------------------------------------------------------------
#: key -> (lower bound, whether the bound is strict); None: any finite number
_CALIBRATION_NUMBERS: dict[str, tuple[float | None, bool]] = {
    "score_mean": (None, False), "score_std": (0.0, True), "map_mean": (None, False), "map_std": (0.0, True),
    "threshold": (None, False)}


def check_calibration(cal: dict[str, Any], path: Path) -> dict[str, Any]:
    """Every number predict uses is present and finite, the spreads > 0; the prior entry, when on, likewise."""
    for key, (low, strict) in _CALIBRATION_NUMBERS.items():
        if key not in cal:
            raise ArtifactError(path, f"{key} missing; {RETRAIN}")
        finite_number(cal[key], path, key, gt=low if strict else None, ge=None if strict else low)
    if "threshold_network" in cal:  # the network-only threshold export hands on
        finite_number(cal["threshold_network"], path, "threshold_network")
    for key in ("network", "backbone"):
        if not isinstance(cal.get(key), dict):
            raise ArtifactError(path, f"{key} must be a mapping, got {cal.get(key)!r}; {RETRAIN}")
    prior = cal.get("prior")
    if prior is not None and not isinstance(prior, dict):
        raise ArtifactError(path, f"prior must be a mapping, got {prior!r}; {RETRAIN}")
    if prior and prior.get("enabled"):
        finite_number(prior.get("nll_mean"), path, "prior.nll_mean")
        finite_number(prior.get("nll_std"), path, "prior.nll_std", gt=0.0)
    return cal


def read_calibration(det_dir: Path) -> dict[str, Any]:
    path = det_dir / CALIBRATION
    if not path.is_file():
        raise ArtifactError(det_dir, "no trained detector here (calibration.json missing); run `comgen train`")
    return check_calibration(read_json_object(path), path)
