"""``GenerateConfig``: one typed config for ``comgen generate`` and every back-end's options.

Why nested per-back-end sections: one ``gen.yaml`` can hold the options of all back-ends, and the saved
``config.yaml`` beside the generated set records exactly what produced it. The compositional and diffusion
sections stay plain mappings here because their config classes live in other modules (owned by other stages);
the registry converts them with their own ``from_dict`` so typos are still refused there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from comgen.config import ConfigBase
from comgen.errors import ConfigError
from comgen.generate.baselines.cutpaste import CutPasteConfig
from comgen.generate.baselines.draem import DraemConfig
from comgen.generate.baselines.nsa import NsaConfig


def parse_options(text: str, where: str, checked_by: type[ConfigBase] | None = None) -> dict[str, Any]:
    """Options given as a JSON object on a command line (``'{"hole_fill": "surface"}'``).

    ``checked_by``: a config class whose ``from_dict`` must accept them, so that a typo fails (a ConfigError naming
    ``where``) before any work.
    """
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(where, f"not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ConfigError(where, f"must be a JSON object, got {text!r}")
    if checked_by is not None:
        checked_by.from_dict(options, where)
    return options


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` (0-based i) -> (i, n); ``None`` -> (0, 1), i.e. everything."""
    if shard is None or shard == "":
        return 0, 1
    try:
        i_text, n_text = str(shard).split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ConfigError("shard", f"{shard!r} is not of the form i/n (e.g. 0/4)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError("shard", f"{shard!r}: need n >= 1 and 0 <= i < n (shards are numbered from 0)")
    return i, n


@dataclass
class GenerateConfig(ConfigBase):
    backend: str = "compositional"
    n: int = 100
    seed: int = 0
    image_size: int = 256
    shard: str | None = None  # "i/n": this process writes only its share of the indices (0-based i)
    chunk: int = 8  # indices per RNG block: the unit of resumption and of sharding
    preview: int = 16  # anomalies shown in preview.png
    cutpaste: CutPasteConfig = field(default_factory=CutPasteConfig)
    draem: DraemConfig = field(default_factory=DraemConfig)
    nsa: NsaConfig = field(default_factory=NsaConfig)
    compositional: dict[str, Any] = field(default_factory=dict)  # -> CompositionalConfig.from_dict
    diffusion: dict[str, Any] = field(default_factory=dict)  # -> DiffusionConfig.from_dict

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError("generate.n", f"{self.n}: need at least 1 anomaly")
        if self.image_size < 16:
            raise ConfigError("generate.image_size", f"{self.image_size} px is too small (need >= 16)")
        if self.chunk < 1:
            raise ConfigError("generate.chunk", f"{self.chunk}: must be >= 1")
        if self.preview < 0:
            raise ConfigError("generate.preview", f"{self.preview}: must be >= 0")
        parse_shard(self.shard)
        self._backend_section()  # a bad option of the back-end fails here, where a config file is being read

    def _backend_section(self) -> tuple[str, dict[str, Any]] | None:
        """The active back-end's section parsed by its own config class, defaults included (None: typed section)."""
        if self.backend == "compositional":
            from comgen.generate.compositional import CompositionalConfig

            return "compositional", CompositionalConfig.from_dict(self.compositional, "generate.compositional").to_dict()
        if self.backend == "diffusion":
            from comgen.generate.diffusion.config import DiffusionConfig

            return "diffusion", DiffusionConfig.from_dict(self.diffusion, "generate.diffusion").to_dict()
        return None

    @property
    def shard_index(self) -> tuple[int, int]:
        return parse_shard(self.shard)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, with the active back-end's section written out in full (its defaults included).

        Why: the section is a free dict (parsed by the back-end), so without this a default changed in the code
        (a new edit kind) left the saved config, its hash and a resumed folder's identity unchanged, and a rerun
        kept anomalies the new code would not make.
        """
        d = super().to_dict()
        section = self._backend_section()
        if section is not None:
            d[section[0]] = section[1]
        return d

    def identity(self) -> dict[str, Any]:
        """What must match for a resumed or sharded run to continue an existing folder (not n, shard, preview)."""
        d = self.to_dict()
        for k in ("n", "shard", "preview"):
            d.pop(k)
        return d
