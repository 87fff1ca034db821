"""One exception family, so the CLI can turn any user-facing problem into a single clear line.

Every error names the offending file (or setting) first and then the problem, e.g.
``DatasetError(path, "mask is 64x48 but its image is 64x64")`` renders as
``/data/x/ground_truth/.../000.png: mask is 64x48 but its image is 64x64``.
"""

from __future__ import annotations

from pathlib import Path


class ComgenError(Exception):
    """Base class for problems the user can fix (bad input, missing files, wrong configs)."""

    def __init__(self, where: str | Path | None, problem: str) -> None:
        self.where = str(where) if where is not None else None
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)


class DatasetError(ComgenError):
    """A dataset on disk is malformed: missing split, corrupt image, bad mask, bad defects_config.json."""


class ConfigError(ComgenError):
    """A config file or option is invalid, or a saved artefact was built with an incompatible config."""


class ArtifactError(ComgenError):
    """A saved model, bank, checkpoint or run directory is missing, corrupt or incompatible."""


class InputError(ComgenError):
    """Bad runtime input: wrong image size/mode, NaN in a map, empty list, impossible request."""
