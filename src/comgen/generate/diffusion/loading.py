"""Load a local diffusers-format Stable-Diffusion folder; never download anything.

Why a check before ``from_pretrained``: diffusers' own errors for a missing sub-folder are long tracebacks that
mention the Hub; users get one line naming the folder and what is missing instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from comgen.errors import ArtifactError

REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors",
           "pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors")


def check_sd_folder(path: str | Path) -> Path:
    """Return ``path`` if it looks like a complete diffusers SD folder, else raise ArtifactError (one line)."""
    if not str(path):
        raise ArtifactError("--sd-model", "no Stable-Diffusion folder given (a local diffusers folder is required)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ArtifactError(p, "Stable-Diffusion folder not found")
    if not (p / "model_index.json").is_file():
        raise ArtifactError(p, "not a diffusers pipeline folder (no model_index.json)")
    try:
        json.loads((p / "model_index.json").read_text())
    except ValueError:  # not UTF-8, or not JSON
        raise ArtifactError(p / "model_index.json", "not valid JSON") from None
    missing = [s for s in REQUIRED if not (p / s).is_dir()]
    if missing:
        raise ArtifactError(p, f"incomplete Stable-Diffusion folder: missing {', '.join(missing)}/")
    for sub in ("unet", "vae", "text_encoder"):
        if not (p / sub / "config.json").is_file():
            raise ArtifactError(p / sub, "missing config.json")
        if not any((p / sub / w).is_file() for w in WEIGHTS) and not list((p / sub).glob("*.index.json")):
            raise ArtifactError(p / sub, "no weights file (expected *.safetensors or *.bin)")
    if not list((p / "tokenizer").glob("*.json")) and not (p / "tokenizer" / "vocab.json").is_file():
        raise ArtifactError(p / "tokenizer", "no tokenizer files")
    return p


def load_sd(path: str | Path, device: str = "cpu", dtype=None):
    """``StableDiffusionPipeline`` from a local folder (local_files_only, no safety checker), on ``device``."""
    import torch

    from comgen.generate.diffusion.extra import require_diffusion_extra

    require_diffusion_extra()
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlog

    p = check_sd_folder(path)
    dlog.set_verbosity_error()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(p, local_files_only=True, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False,
                                                       torch_dtype=dtype or torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ArtifactError(p, f"cannot load Stable-Diffusion pipeline ({first[:200]})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(mixed_precision: str, device: str) -> str:
    """``auto`` -> bf16 on a bf16-capable GPU, fp16 on an older GPU, no (fp32) on a CPU."""
    import torch

    if mixed_precision != "auto":
        return "no" if not device.startswith("cuda") else mixed_precision
    if not device.startswith("cuda"):
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
