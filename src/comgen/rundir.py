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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comgen.config import ConfigBase
from comgen.errors import ArtifactError
from comgen.io import atomic_write_json


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
    @property
    def components(self) -> Path:
        return self.root / "components"

    def generated(self, backend: str = "compositional") -> Path:
        return self.root / "generated" / backend

    @property
    def bank(self) -> Path:
        return self.root / "bank"

    @property
    def detector(self) -> Path:
        return self.root / "detector"

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    # --- stage bookkeeping ----------------------------------------------------------------
    def _stages(self) -> dict[str, Any]:
        path = self.root / "stages.json"
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
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
