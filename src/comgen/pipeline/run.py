"""``comgen run``: learn -> generate -> mask -> train -> predict -> evaluate for one category, resumably.

Each stage's chained config hash is recorded in ``RUN/stages.json`` (see ``stages.py``). A rerun skips finished
stages and redoes only a changed stage and the ones after it. A stage interrupted half-way resumes where the stage
itself can (the generation writer continues its manifest, training continues from its last checkpoint); a stage
redone with another config starts from an empty output folder, so stale files never mix with new ones.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comgen.components import learner
from comgen.config import ConfigBase
from comgen.data.generated import saved_revision
from comgen.data.readers import open_dataset
from comgen.detect.predict import predict_dataset
from comgen.detect.train import train_detector
from comgen.errors import ConfigError, DatasetError
from comgen.evaluate.report import write_report
from comgen.evaluate.run import evaluate_category
from comgen.generate.registry import build_generator, generator_revision
from comgen.generate.writer import write_generated
from comgen.io import atomic_write_text
from comgen.masks.run import compute_masks
from comgen.pipeline.config import RunConfig
from comgen.pipeline.stages import StageRunner
from comgen.rundir import RunDir


def _same_saved_config(path: Path, cfg: ConfigBase) -> bool:
    """True when ``path`` holds exactly ``cfg`` (so an interrupted stage may continue in place)."""
    if not path.is_file():
        return False
    try:
        return type(cfg).load(path).hash() == cfg.hash()
    except Exception:  # unreadable or from another version: start afresh
        return False


def _same_revision(folder: Path, backend: str) -> bool:
    """True when the generated ``folder`` was made by this comgen's revision of ``backend`` (an unreadable
    record counts as another revision: the run owns the folder and makes it anew)."""
    try:
        return saved_revision(folder) == generator_revision(backend)
    except ConfigError:
        return False


#: in a run's generated folder: the learn stage's hash the anomalies were made after
LEARNED_WITH = "learned_with.txt"


def _read_text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _revised(config_hash: str, revision: int) -> str:
    """A stage's key: its config hash, plus the code's revision once that is raised (revision 1 keeps old keys)."""
    return config_hash + (f"-r{revision}" if revision > 1 else "")


def _fresh(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)


def run_category(dataset: str | Path, category: str, out: str | Path, cfg: RunConfig | None = None,
                 force: bool = False, log: Callable[[str], None] = print) -> RunDir:
    """Run every stage for one category into ``out``; returns the finished run directory."""
    cfg = (cfg or RunConfig()).resolved()
    ds = open_dataset(dataset)
    if category not in ds.categories():
        raise DatasetError(dataset, f"no category {category!r}; found: {', '.join(ds.categories()) or 'none'}")
    train = ds.samples(category, "train")
    if not train:
        raise DatasetError(Path(dataset) / category, "no training images")
    run = RunDir.create(out, dataset, category)
    cfg.save(run.root / "config.yaml")
    runner = StageRunner(run, force=force, log=lambda m: log(f"{category}: {m}"))

    if cfg.learns_components or cfg.detector.prior.enabled:  # the detector's composition prior needs components
        def learn() -> dict[str, Any]:
            _fresh(run.components)
            model = learner.learn_into_run(run, train, cfg.learn)
            return {"num_classes": model.num_classes}


        runner.stage("run.learn", _revised(cfg.learn.hash(), learner.LEARNER_REVISION), learn)

    def generate() -> dict[str, Any]:
        folder = run.generated(cfg.backend)
        # the compositional back-end edits with the learned components: after new ones, no old anomaly is kept
        learned_with = run.stage_hash("run.learn")
        if not (_same_saved_config(folder / "config.yaml", cfg.generate) and _same_revision(folder, cfg.backend)
                and _read_text(folder / LEARNED_WITH) == learned_with):
            _fresh(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / LEARNED_WITH, learned_with)
        generator = build_generator(cfg.backend, cfg.generate)
        generator.fit(train, run)
        summary = write_generated(generator, folder, cfg.generate, log=log)
        return {"written": summary.written, "rate_per_s": round(summary.rate, 2)}

    revision = generator_revision(cfg.backend)  # a newer generator's anomalies differ under the same config
    runner.stage("run.generate", _revised(cfg.generate.hash(), revision), generate)

    if cfg.mask:
        def mask() -> dict[str, Any]:
            report = compute_masks(run, cfg.backend, cfg.masks, rebuild=True, echo=log)
            return {k: report.get(k) for k in ("logical_mean", "structural_mean", "all_mean")}

        runner.stage("run.mask", cfg.masks.hash(), mask)

    def train_stage() -> dict[str, Any]:
        resume = _same_saved_config(run.detector / "config.yaml", cfg.detector) and any(run.detector.glob("*.pt"))
        if not resume:
            _fresh(run.detector)
        result = train_detector(run, cfg.detector, resume=resume, log=log)
        return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                "train_seconds": round(result.seconds, 1), "peak_rss_mb": round(result.peak_rss_mb)}

    runner.stage("run.train", cfg.detector.hash(), train_stage)

    def predict() -> dict[str, Any]:
        _fresh(run.maps)
        rows = predict_dataset(run, "test", run.maps)
        return {"images": len(rows)}

    runner.stage("run.predict", "test", predict)

    def evaluate() -> dict[str, Any]:
        result = evaluate_category(ds, category, run.maps, cfg.evaluate)
        write_report({"dataset": str(ds.root), "categories": {category: result}}, run.eval,
                     gallery=cfg.evaluate.gallery, title=f"comgen: {category}")
        cfg.evaluate.save(run.eval / "config.yaml")
        return {"report": str(run.eval / "report.html")}

    runner.stage("run.evaluate", cfg.evaluate.hash(), evaluate)
    return run
