"""The run directory: one folder per (dataset, category) run that every stage reads and writes.

Layout (each stage owns one sub-folder and writes its ``config.yaml`` beside its outputs)::

    RUN/run.yaml               dataset path + category (written by the first stage)
    RUN/stages.json            finished stages with their config hash (for skip / resume)
    RUN/components/            Stage I component model (model.safetensors, model.json, preview.png)
    RUN/generated/<backend>/   Stage I anomalies (images/, masks/, manifest.jsonl, preview.png)
    RUN/bank/                  Stage II memory bank
    RUN/detector/              Stage III checkpoints, threshold, normalisation
    RUN/maps/                  anomaly maps in MVTec's exchange layout + scores.csv
    RUN/eval/                  metrics.json, report.html
    RUN/.lock                  held (``flock``) while a command writes the run

Every path helper keeps to the run folder: a name is a plain file name, and the joined path must resolve inside the
run, because stages delete and rewrite what these helpers return.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comgen.config import ConfigBase
from comgen.errors import ArtifactError, ConfigError
from comgen.io import atomic_write_json

LOCK_FILE = ".lock"

#: resolved run folders whose lock this process holds, with the nesting depth (a held lock is reentrant)
_HELD: dict[Path, int] = {}


def is_plain_name(name: object) -> bool:
    """True for a single path component: not empty, not ``.``/``..``, no separator, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(c in name for c in ("/", "\\", "\0")))


@dataclass
class RunInfo(ConfigBase):
    dataset: str = ""
    category: str = ""


class RunDir:
    """Paths and bookkeeping of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, dataset: str | Path, category: str) -> RunDir:
        """Create (or reopen) a run directory bound to one dataset category; refuse to rebind it."""
        run = cls(root)
        info_path = run.root / "run.yaml"
        info = RunInfo(dataset=str(Path(dataset).resolve()), category=category)
        if info_path.exists():
            old = RunInfo.load(info_path)
            if (old.dataset, old.category) != (info.dataset, info.category):
                raise ArtifactError(run.root, f"run directory belongs to {old.dataset} / {old.category}, "
                                              f"not {info.dataset} / {info.category}; use another --out")
        else:
            run.root.mkdir(parents=True, exist_ok=True)
            info.save(info_path)
        return run

    @classmethod
    def open(cls, root: str | Path) -> RunDir:
        run = cls(root)
        if not (run.root / "run.yaml").is_file():
            raise ArtifactError(run.root, "not a comgen run directory (no run.yaml); run `comgen learn` first")
        return run

    @property
    def info(self) -> RunInfo:
        return RunInfo.load(self.root / "run.yaml")

    # --- stage folders --------------------------------------------------------------------
    def path(self, *names: str) -> Path:
        """``root/names...``, refusing a name that is not a plain file name and a path resolving outside the run
        (a symbolic link out of it included). Why: names come from configs and options, and stages delete what
        these paths point at."""
        bad = [n for n in names if not is_plain_name(n)]
        if bad or not names:
            raise ConfigError(self.root, f"refusing {bad[0] if bad else ''!r}: not a plain file name "
                                         "(no '/', '..' or absolute paths inside a run directory)")
        path = self.root.joinpath(*names)
        root, resolved = self.root.resolve(), path.resolve()
        if resolved == root or not resolved.is_relative_to(root):
            raise ArtifactError(path, f"resolves to {resolved}, outside the run directory {root}")
        return path

    @property
    def components(self) -> Path:
        return self.path("components")

    def generated(self, backend: str = "compositional") -> Path:
        return self.path("generated", backend)

    @property
    def bank(self) -> Path:
        return self.path("bank")

    @property
    def detector(self) -> Path:
        return self.path("detector")

    @property
    def maps(self) -> Path:
        return self.path("maps")

    @property
    def eval(self) -> Path:
        return self.path("eval")

    # --- writer lock ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``RUN/.lock`` for the block (reentrant within this process).

        Why: two commands writing one run interleave stages and checkpoints; the second one is refused instead.
        The kernel drops the lock when the process ends, however it ends.
        """
        key = self.root.resolve()
        if _HELD.get(key):
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArtifactError(self.root, "another comgen command is writing this run directory "
                                               f"({LOCK_FILE} is locked); wait for it to end or use another "
                                               "--out") from None
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- stage bookkeeping ----------------------------------------------------------------
    def _stages(self) -> dict[str, Any]:
        path = self.root / "stages.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError:  # not UTF-8 text, or not JSON: no stage counts as done
            return {}

    def stage_done(self, name: str, config_hash: str) -> bool:
        """True when stage ``name`` finished with exactly this config hash."""
        return self.stage_hash(name) == config_hash

    def stage_hash(self, name: str) -> str:
        """The chained config hash stage ``name`` last finished with ("" when it never did)."""
        return str(self._stages().get(name, {}).get("hash", ""))

    def mark_done(self, name: str, config_hash: str, outputs: dict[str, Any] | None = None) -> None:
        stages = self._stages()
        stages[name] = {"hash": config_hash, "outputs": outputs or {}}
        atomic_write_json(self.root / "stages.json", stages)

    def invalidate(self, *names: str) -> None:
        stages = self._stages()
        for n in names:
            stages.pop(n, None)
        atomic_write_json(self.root / "stages.json", stages)
