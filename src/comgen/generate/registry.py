"""``build_generator(name, cfg)``: the one place that maps a back-end name to its generator class.

Imports are lazy so ``comgen generate --backend cutpaste`` never imports diffusers, and a back-end whose module
is missing fails with one clear line instead of breaking the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from comgen.errors import ConfigError
from comgen.generate.config import GenerateConfig
from comgen.generate.protocol import AnomalyGenerator

BACKENDS: tuple[str, ...] = ("compositional", "cutpaste", "draem", "nsa", "diffusion")

#: Revision of a back-end's behaviour, raised when the same config makes different anomalies than before. Why:
#: a generated folder (and a run's generate stage) is reused while its config matches, so without it a rerun
#: after an upgrade kept the old code's anomalies. Back-ends not listed are at revision 1.
#: What each revision changed is in CHANGELOG.md.
REVISIONS: dict[str, int] = {"compositional": 8}


def generator_revision(name: str) -> int:
    """The behaviour revision of back-end ``name`` (see ``REVISIONS``)."""
    return REVISIONS.get(name, 1)


def check_backend(name: str) -> str:
    """Return ``name`` if it is a known, installed back-end, else ConfigError (valid names, or the extra)."""
    if name not in BACKENDS:
        raise ConfigError("backend", f"unknown generator {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "diffusion":  # its packages are an extra: say so before any stage runs
        from comgen.generate.diffusion.extra import require_diffusion_extra

        require_diffusion_extra()
    return name


def _import(module: str, *names: str) -> list[Any]:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError("backend", f"{module} cannot be imported ({exc}); that back-end is not available") from None
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise ConfigError("backend", f"{module} does not define {', '.join(missing)}")
    return [getattr(mod, n) for n in names]


def build_generator(name: str, cfg: GenerateConfig | None = None) -> AnomalyGenerator:
    """Instantiate (not fit) the generator ``name`` configured from ``cfg``."""
    cfg = cfg or GenerateConfig(backend=name)
    check_backend(name)
    if name == "cutpaste":
        from comgen.generate.baselines.cutpaste import CutPasteGenerator

        return CutPasteGenerator(cfg.cutpaste, image_size=cfg.image_size)
    if name == "draem":
        from comgen.generate.baselines.draem import DraemGenerator

        return DraemGenerator(cfg.draem, image_size=cfg.image_size)
    if name == "nsa":
        from comgen.generate.baselines.nsa import NsaGenerator

        return NsaGenerator(cfg.nsa, image_size=cfg.image_size)
    if name == "compositional":
        (gen_cls,) = _import("comgen.generate.compositional", "CompositionalGenerator")
        return gen_cls(cfg.compositional)
    (gen_cls,) = _import("comgen.generate.diffusion", "DiffusionGenerator")
    return gen_cls(cfg.diffusion)
