"""The two engines that run the bundle's graphs: ONNX Runtime (default) and OpenVINO (its IR, optional extra).

Why one small interface: the scoring code calls ``graph(inputs) -> outputs`` and never knows which engine runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from comgen.errors import ArtifactError, ConfigError

ENGINES = ("onnxruntime", "openvino")


class OrtGraph:
    """An ONNX graph on ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("engine", "onnxruntime is not installed; pip install 'comgen[export]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(path, f"ONNX Runtime cannot load it ({str(exc).splitlines()[0][:120]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, feeds))


class OpenVinoGraph:
    """An OpenVINO IR (``.xml`` + ``.bin``) compiled for the CPU in float32 (no reduced-precision inference)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError("engine", "openvino is not installed; pip install 'comgen[openvino]'") from None
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:
            raise ArtifactError(path, f"OpenVINO cannot load it ({str(exc).splitlines()[0][:120]})") from None
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.compiled(feeds)
        return [np.asarray(result[o]) for o in self.compiled.outputs]


def open_graph(onnx_path: Path, engine: str, threads: int = 0) -> OrtGraph | OpenVinoGraph:
    """``onnx_path`` on ``engine``; OpenVINO reads the IR exported beside it (``<name>.xml``)."""
    if engine == "onnxruntime":
        return OrtGraph(onnx_path, threads)
    if engine == "openvino":
        xml = onnx_path.with_suffix(".xml")
        if not xml.is_file():
            raise ArtifactError(xml, "missing: the bundle has no OpenVINO IR; export it with --openvino")
        return OpenVinoGraph(xml, threads)
    raise ConfigError("engine", f"must be one of {', '.join(ENGINES)}, not {engine!r}")
