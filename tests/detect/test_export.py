from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from comgen.detect.csda import CSDA, HeadConfig
from comgen.detect.export import example_inputs, export_model, export_onnx, onnx_run
from comgen.errors import InputError
from comgen.features.backbone import BackboneConfig, build_backbone

pytest.importorskip("onnxruntime")


def _parity(model: CSDA, path: Path, size: int, k: int) -> None:
    inputs = example_inputs(model, size, k, batch=3)  # batch differs from the traced one (dynamic axis)
    ort_out = onnx_run(path, inputs)
    with torch.no_grad():
        pt_out = model(inputs[0], list(inputs[1:]))
    for o, p in zip(ort_out, pt_out):
        assert o.shape == tuple(p.shape)
        np.testing.assert_allclose(o, p.numpy(), atol=1e-4, rtol=0)


def test_onnx_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CSDA(build_backbone(BackboneConfig(weights="random")), HeadConfig(k=2, dim=16, img_dim=8)).eval()
    path = export_model(model, tmp_path / "m.onnx", 64, 2, batch=2)
    spec = json.loads((tmp_path / "m.onnx.json").read_text())
    assert list(spec["inputs"]) == ["image", "ref_0", "ref_1", "ref_2"]
    _parity(model, path, 64, 2)
    with pytest.raises(InputError, match=".onnx"):
        export_model(model, tmp_path / "m.bin", 64, 2)


def test_export_trained_run(trained_run: Path, tmp_path: Path) -> None:
    from comgen.detect.predict import Detector

    path = export_onnx(trained_run, tmp_path / "det.onnx")
    spec = json.loads((tmp_path / "det.onnx.json").read_text())
    det = Detector.load(trained_run, device="cpu")
    # the graph is the network alone, so its sidecar carries the network's own threshold, not the fused one
    assert spec["calibration"]["threshold"] == pytest.approx(det.calibration["threshold_network"])
    _parity(det.model, path, det.cfg.image_size, det.cfg.head.k)
