"""Running an exported detector bundle with ONNX Runtime (or OpenVINO) and NumPy: no torch, faiss or sklearn.

Nothing in this package imports torch, nor any comgen module that does (a test checks it in a fresh interpreter).
"""

from comgen.export_runtime.detector import OnnxDetector

__all__ = ["OnnxDetector"]
