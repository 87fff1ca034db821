"""Whether the ``[diffusion]`` extra (diffusers, transformers, peft) is installed.

Why a check of its own: the core install leaves these out, and a missing one would otherwise surface as an
ImportError deep inside a stage, after the component learner has already run for minutes.
"""

from __future__ import annotations

import importlib.util

from comgen.errors import ConfigError

#: the packages only the Stable-Diffusion back-end imports (always inside its functions)
EXTRA_MODULES: tuple[str, ...] = ("diffusers", "transformers", "peft")
MISSING_EXTRA = 'the diffusion back-end needs the [diffusion] extra: pip install "comgen[diffusion]"'


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked package counts as missing
        return False


def require_diffusion_extra() -> None:
    """Raise ConfigError (one line) unless diffusers, transformers and peft can all be imported."""
    if not all(_installed(name) for name in EXTRA_MODULES):
        raise ConfigError(None, MISSING_EXTRA)
