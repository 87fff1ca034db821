"""The trained detector's files in ``RUN/detector``: their names, and how they are written and read.

Why one module: training writes them, prediction and export read them; neither should import the other for a
file name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comgen.errors import ArtifactError
from comgen.io import atomic_path

STATE = "state.pt"  # resume point: head, optimizer, epoch, early-stopping state, RNG states
BEST = "best.safetensors"  # weights predict/export use
LAST = "head.safetensors"
CALIBRATION = "calibration.json"
HISTORY = "history.jsonl"
BANK = "bank"


def save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))


def save_state(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_state(det_dir: Path) -> dict[str, Any]:
    path = det_dir / STATE
    if not path.is_file():
        raise ArtifactError(path, "no checkpoint to resume from; train without --resume first")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ArtifactError(path, f"corrupt checkpoint ({exc.__class__.__name__})") from None


def read_calibration(det_dir: Path) -> dict[str, Any]:
    path = det_dir / CALIBRATION
    if not path.is_file():
        raise ArtifactError(det_dir, "no trained detector here (calibration.json missing); run `comgen train`")
    return json.loads(path.read_text())
