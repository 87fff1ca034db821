"""ONNX export of the CSDA network (frozen backbone + head) for deployment without Python/faiss.

Inputs of the exported graph (documented in the sidecar ``<model>.json``):
- ``image``: float32 [B,3,S,S] RGB in [0,1] at the working size S;
- ``ref_<s>`` for every backbone scale s: float32 [B,k,C_s,h_s,w_s], the k reference feature maps **already
  aligned** patch-wise to the image (``MemoryBank.align`` output). Why pre-aligned: retrieval and alignment use the
  faiss bank, which is not an ONNX op; a deployment computes them once per reference set (or with the bank).
Outputs: ``map_logits`` [B,1,S,S] and ``image_logit`` [B], uncalibrated; apply ``calibration`` from the sidecar:
score = (image_logit - score_mean) / score_std, map = (map_logits - map_mean) / map_std, fail if score > threshold.
The composition prior (``composition_prior.py``: segmentation + a Gaussian mixture) is not part of the graph; the
sidecar's ``threshold`` is therefore the network-only threshold, and ``composition_prior`` says where the prior's
files are for a deployment that also runs it in Python.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comgen.detect.csda import CSDA
from comgen.detect.predict import Detector
from comgen.errors import InputError
from comgen.io import atomic_path, atomic_write_json


class _Graph(nn.Module):
    """Flat-argument wrapper so the ONNX graph has one named input per reference scale."""

    def __init__(self, model: CSDA) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, *refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image, list(refs))


def example_inputs(model: CSDA, image_size: int, k: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Random image + reference tensors of the exported shapes (used for tracing and for parity tests)."""
    x = torch.rand(batch, 3, image_size, image_size)
    with torch.no_grad():
        feats = model.features(x)
    return (x, *[torch.randn(batch, k, *f.shape[1:]) for f in feats])


def export_model(model: CSDA, path: str | Path, image_size: int, k: int, batch: int = 1, opset: int = 17,
                 meta: dict[str, Any] | None = None) -> Path:
    """Trace ``model`` to ONNX at ``path`` (dynamic batch) and write the sidecar ``path.json``."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise InputError(path, "export path must end in .onnx")
    model = model.cpu().eval()
    inputs = example_inputs(model, image_size, k, batch)
    ref_names = [f"ref_{s}" for s in range(len(inputs) - 1)]
    axes = {n: {0: "batch"} for n in ["image", *ref_names, "map_logits", "image_logit"]}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # Shapes are fixed at the working size by design, so the tracer's constant-shape warnings are expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_Graph(model), inputs, str(tmp), input_names=["image", *ref_names],
                          output_names=["map_logits", "image_logit"], dynamic_axes=axes, opset_version=opset,
                          dynamo=False)
    spec = {"inputs": {"image": [None, 3, image_size, image_size],
                       **{n: [None, k, *t.shape[2:]] for n, t in zip(ref_names, inputs[1:])}},
            "references": "pre-aligned reference features (MemoryBank.align), one tensor per backbone scale",
            "outputs": {"map_logits": [None, 1, image_size, image_size], "image_logit": [None]},
            "opset": opset, **(meta or {})}
    atomic_write_json(path.with_suffix(".onnx.json"), spec)
    return path


def export_onnx(run_dir: str | Path, path: str | Path, opset: int = 17) -> Path:
    """``comgen export RUN_DIR --onnx model.onnx``: the trained detector's network, with its calibration."""
    det = Detector.load(run_dir, device="cpu")
    cal = {k: det.calibration[k] for k in ("score_mean", "score_std", "map_mean", "map_std")}
    cal["threshold"] = det.calibration.get("threshold_network", det.calibration["threshold"])
    prior = det.calibration.get("prior") or {}
    meta = {"calibration": cal,
            "composition_prior": str(det.directory / "composition_prior") if prior.get("enabled") else None,
            "backbone": det.calibration.get("backbone"), "image_size": det.cfg.image_size, "k": det.cfg.head.k}
    return export_model(det.model, path, det.cfg.image_size, det.cfg.head.k, opset=opset, meta=meta)


def onnx_run(path: str | Path, inputs: tuple[torch.Tensor, ...]) -> list[Any]:
    """Run an exported model with ONNX Runtime (CPU) on torch inputs; returns the numpy outputs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
