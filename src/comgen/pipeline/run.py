"""``comgen run``: learn -> generate -> mask -> train -> predict -> evaluate for one category, resumably.

Each stage's chained config hash is recorded in ``RUN/stages.json`` (see ``stages.py``). A rerun skips finished
stages and redoes only a changed stage and the ones after it. A stage interrupted half-way resumes where the stage
itself can (the generation writer continues its manifest, training continues from its last checkpoint); a stage
redone with another config starts from an empty output folder, so stale files never mix with new ones. A stage's
key also covers a fingerprint of the dataset files it reads, so a changed dataset redoes it. The run directory is
locked while the stages run, and must lie outside the dataset.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comgen.components import learner
from comgen.config import ConfigBase
from comgen.data.generated import saved_revision
from comgen.data.readers import Dataset, open_dataset
from comgen.detect.artifacts import has_state
from comgen.detect.predict import predict_dataset
from comgen.detect.train import train_detector
from comgen.errors import ArtifactError, ConfigError, DatasetError
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
#: in a stage's output folder (generated set, detector): the chained key of the stage that wrote it. Why: an
#: interrupted stage continues in place only when its config, its upstream stages and its input files all match
STAGE_KEY = "stage_key.txt"


def _read_text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _revised(config_hash: str, revision: int, mark: str = "r") -> str:
    """A stage's key: its config hash, plus the code's revision once that is raised (revision 1 keeps old keys)."""
    return config_hash + (f"-{mark}{revision}" if revision > 1 else "")


def _instance_revised(key: str, fits_instance_stage: bool) -> str:
    """A stage's key, plus the instance stage's revision when the stage fits one."""
    return _revised(key, learner.INSTANCE_REVISION, "i") if fits_instance_stage else key


def _fresh(run: RunDir, folder: Path) -> None:
    """Empty a stage's output folder; only ever one strictly inside the run directory (a link is unlinked, never
    followed), so no config value or stray link can make a stage delete anything else."""
    root = run.root.resolve()
    target = folder.parent.resolve() / folder.name
    if target == root or not target.is_relative_to(root):
        raise ArtifactError(folder, f"refusing to empty a folder outside the run directory {root}")
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def _write_key(folder: Path, key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / STAGE_KEY, key)


def check_out_of_dataset(out: str | Path, dataset: str | Path) -> None:
    """Refuse a run folder inside the dataset (datasets are never written), or a dataset inside a folder the run
    empties and rewrites."""
    o, d = Path(out).resolve(), Path(dataset).resolve()
    if o == d or o.is_relative_to(d):
        raise ConfigError("--out", f"{out} is inside the dataset {d}; a run never writes into its dataset, "
                                   "choose another --out")
    owned = [o / name for name in ("components", "generated", "bank", "detector", "maps", "eval")]
    if any(d == f or d.is_relative_to(f) for f in owned):
        raise ConfigError("--out", f"the dataset {d} lies inside a folder the run in {out} rewrites; "
                                   "choose another --out")


def open_for_run(dataset: str | Path, category: str) -> Dataset:
    """Open the dataset and check what the stages will read, so a broken category fails now, not a stage later."""
    ds = open_dataset(dataset)
    if category not in ds.categories():
        raise DatasetError(dataset, f"no category {category!r}; found: {', '.join(ds.categories()) or 'none'}")
    if not ds.samples(category, "train"):
        raise DatasetError(Path(dataset) / category, "no training images")
    ds.defects(category)  # a malformed defects_config.json: one line now, not at evaluation
    return ds


def run_category(dataset: str | Path, category: str, out: str | Path, cfg: RunConfig | None = None,
                 force: bool = False, log: Callable[[str], None] = print) -> RunDir:
    """Run every stage for one category into ``out``; returns the finished run directory."""
    cfg = (cfg or RunConfig()).resolved()
    ds = open_for_run(dataset, category)
    check_out_of_dataset(out, ds.root)
    run = RunDir.create(out, dataset, category)
    with run.lock():
        cfg.save(run.root / "config.yaml")
        runner = StageRunner(run, force=force, log=lambda m: log(f"{category}: {m}"))
        _stages(runner, ds, category, cfg, log)
    return run


def _stages(runner: StageRunner, ds: Dataset, category: str, cfg: RunConfig, log: Callable[[str], None]) -> None:
    """The stages in order; each stage's key covers its config and the dataset files it reads."""
    run = runner.run
    train = ds.samples(category, "train")
    # every split is listed (and its structure checked) now, not after an hour of training
    train_files = ds.fingerprint(category, ("train",))
    train_val_files = ds.fingerprint(category, ("train", "validation"))
    test_files = ds.fingerprint(category, ("test",))

    if cfg.learns_components or cfg.detector.prior.enabled:  # the detector's composition prior needs components
        def learn() -> dict[str, Any]:
            _fresh(run, run.components)
            model = learner.learn_into_run(run, train, cfg.learn)
            return {"num_classes": model.num_classes}

        learn_key = _instance_revised(_revised(cfg.learn.hash(), learner.LEARNER_REVISION), cfg.learn.instances)
        runner.stage("run.learn", learn_key, learn, inputs=train_files)

    def generate() -> dict[str, Any]:
        folder = run.generated(cfg.backend)
        generator = build_generator(cfg.backend, cfg.generate)  # an unavailable back-end fails before any change
        # the compositional back-end edits with the learned components: after new ones, no old anomaly is kept
        learned_with = run.stage_hash("run.learn")
        if not (_same_saved_config(folder / "config.yaml", cfg.generate) and _same_revision(folder, cfg.backend)
                and _read_text(folder / LEARNED_WITH) == learned_with
                and _read_text(folder / STAGE_KEY) == runner.current):
            _fresh(run, folder)
        _write_key(folder, runner.current)
        atomic_write_text(folder / LEARNED_WITH, learned_with)
        generator.fit(train, run)
        summary = write_generated(generator, folder, cfg.generate, log=log)
        return {"written": summary.written, "rate_per_s": round(summary.rate, 2)}

    revision = generator_revision(cfg.backend)  # a newer generator's anomalies differ under the same config
    runner.stage("run.generate", _revised(cfg.generate.hash(), revision), generate, inputs=train_files)

    if cfg.mask:
        def mask() -> dict[str, Any]:
            report = compute_masks(run, cfg.backend, cfg.masks, rebuild=True, echo=log)
            return {k: report.get(k) for k in ("logical_mean", "structural_mean", "all_mean")}

        runner.stage("run.mask", cfg.masks.hash(), mask)

    def train_stage() -> dict[str, Any]:
        # resume only a checkpoint made with this config, these anomalies and these images
        resume = (_same_saved_config(run.detector / "config.yaml", cfg.detector) and has_state(run.detector)
                  and _read_text(run.detector / STAGE_KEY) == runner.current)
        if not resume:
            _fresh(run, run.detector)
            _write_key(run.detector, runner.current)
        result = train_detector(run, cfg.detector, resume=resume, log=log)
        return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                "train_seconds": round(result.seconds, 1), "peak_rss_mb": round(result.peak_rss_mb)}

    prior = cfg.detector.prior
    train_key = _instance_revised(cfg.detector.hash(), prior.enabled and prior.partner)
    runner.stage("run.train", train_key, train_stage, inputs=train_val_files)

    def predict() -> dict[str, Any]:
        _fresh(run, run.maps)
        rows = predict_dataset(run, "test", run.maps, strict=True)  # evaluation needs a map for every image
        return {"images": len(rows)}

    if not ds.samples(category, "test"):
        log(f"{category}: no labelled test images (no test/ folder): predict and evaluate skipped")
        return
    runner.stage("run.predict", "test", predict, inputs=test_files)

    def evaluate() -> dict[str, Any]:
        result = evaluate_category(ds, category, run.maps, cfg.evaluate)
        write_report({"dataset": str(ds.root), "categories": {category: result}}, run.eval,
                     gallery=cfg.evaluate.gallery, title=f"comgen: {category}")
        cfg.evaluate.save(run.eval / "config.yaml")
        return {"report": str(run.eval / "report.html")}

    runner.stage("run.evaluate", cfg.evaluate.hash(), evaluate)
