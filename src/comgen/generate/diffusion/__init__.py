"""Stable-Diffusion back-end: multi-component token learning, attention-localised edits, low-density tokens.

Imports are lazy (PEP 562) so ``import comgen.generate.diffusion`` costs nothing until a name is used; torch,
diffusers and transformers load only then.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DiffusionConfig": "comgen.generate.diffusion.config",
    "TokenLearnConfig": "comgen.generate.diffusion.config",
    "SampleConfig": "comgen.generate.diffusion.config",
    "DiffusionGenerator": "comgen.generate.diffusion.generator",
    "learn_tokens": "comgen.generate.diffusion.learner",
    "learn_tokens_into_run": "comgen.generate.diffusion.run",
    "TokenLearner": "comgen.generate.diffusion.learner",
    "load_sd": "comgen.generate.diffusion.loading",
    "check_sd_folder": "comgen.generate.diffusion.loading",
    "load_embeddings": "comgen.generate.diffusion.tokens",
    "build_tiny_sd": "comgen.generate.diffusion.tiny",
    "TinySDConfig": "comgen.generate.diffusion.tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
