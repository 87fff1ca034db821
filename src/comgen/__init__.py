"""comgen: component-aware unsupervised logical anomaly generation (ComGEN) and detection (CSDA)."""

__version__ = "0.1.0"
