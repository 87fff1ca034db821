"""Baseline anomaly generators with the same output format as ComGEN (CutPaste, DRAEM-style, NSA-style)."""

from comgen.generate.baselines.cutpaste import CutPasteConfig, CutPasteGenerator
from comgen.generate.baselines.draem import DraemConfig, DraemGenerator
from comgen.generate.baselines.nsa import NsaConfig, NsaGenerator

__all__ = ["CutPasteConfig", "CutPasteGenerator", "DraemConfig", "DraemGenerator", "NsaConfig", "NsaGenerator"]
