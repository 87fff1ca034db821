"""CLI of Stage III: ``comgen train``, ``comgen predict``, ``comgen export``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _config(run_dir: Path, config: Optional[Path], **overrides: object):  # noqa: ANN202
    from comgen.detect.config import DetectorConfig
    from comgen.errors import ConfigError
    from comgen.features.backbone import BackboneConfig

    cfg = DetectorConfig.load(config) if config else DetectorConfig()
    bb = {k.removeprefix("backbone_"): v for k, v in overrides.items() if k.startswith("backbone_") and v is not None}
    if bb:
        cfg = cfg.replace(backbone=BackboneConfig.from_dict({**cfg.backbone.to_dict(), **bb}))
    plain = {k: v for k, v in overrides.items() if not k.startswith("backbone_") and v is not None}
    try:
        return cfg.replace(**plain) if plain else cfg
    except ValueError as exc:
        raise ConfigError("train options", str(exc)) from None


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the ``comgen`` app."""

    @app.command("train")
    def train(
        run_dir: Path = typer.Argument(..., help="run directory (after `comgen generate`)"),
        backend: Optional[str] = typer.Option(None, help="generated set to train on (default compositional)"),
        epochs: Optional[int] = typer.Option(None, help="maximum epochs (early stopping may end sooner)"),
        batch_size: Optional[int] = typer.Option(None),
        lr: Optional[float] = typer.Option(None),
        image_size: Optional[int] = typer.Option(None, help="square working resolution"),
        anomaly_ratio: Optional[float] = typer.Option(None, help="fraction of generated anomalies per batch"),
        tiles: Optional[int] = typer.Option(None, help="tiled mode: scale images (aspect kept) so the shorter side "
                                                       "spans this many working-size tiles"),
        tile_scale: Optional[float] = typer.Option(None, help="tiled mode: scale images by this factor (1.0 = native "
                                                              "pixels) and cut working-size tiles"),
        tile_overlap: Optional[float] = typer.Option(None, help="tiled mode: overlap of neighbouring tiles (fraction "
                                                                "of a tile, default 0.25)"),
        patience: Optional[int] = typer.Option(None, help="early-stopping patience (epochs)"),
        backbone: Optional[str] = typer.Option(None, help="timm model name"),
        weights: Optional[str] = typer.Option(None, help="backbone weights: auto | random | PATH"),
        config: Optional[Path] = typer.Option(None, help="DetectorConfig YAML (options above override it)"),
        resume: bool = typer.Option(False, help="continue an interrupted run exactly"),
        cpu: bool = typer.Option(False, help="force CPU even when a GPU is present"),
    ) -> None:
        """Train the CSDA detector on normal images + generated anomalies (HF Accelerate)."""
        from contextlib import nullcontext

        from comgen.detect.train import train_detector
        from comgen.rundir import RunDir
        from comgen.runtime import is_main_process

        run = RunDir.open(run_dir)
        saved = run.detector / "config.yaml"
        if resume and config is None and saved.is_file():
            config = saved  # resume from the run's own config; only the options given here change it
        cfg = _config(run_dir, config, backend=backend, epochs=epochs, batch_size=batch_size, lr=lr,
                      image_size=image_size, anomaly_ratio=anomaly_ratio, tiles=tiles, tile_scale=tile_scale,
                      tile_overlap=tile_overlap, patience=patience,
                      backbone_name=backbone,
                      backbone_weights=weights)
        # a second writer of this run is refused, not interleaved; under a multi-process launch the main process
        # holds the lock for all of them
        with run.lock() if is_main_process() else nullcontext():
            res = train_detector(run, cfg, resume=resume, log=typer.echo, cpu=True if cpu else None)
        if not is_main_process():
            return
        cal = res.calibration
        typer.echo(f"trained {res.epochs_run} epoch(s) in {res.seconds:.1f} s (best epoch {res.best_epoch}, "
                   f"val loss {res.best_val_loss:.4f}); threshold {cal['threshold']:.3f}; "
                   f"peak RSS {res.peak_rss_mb:.0f} MB")

    @app.command("predict")
    def predict(
        run_dir: Path = typer.Argument(..., help="run directory with a trained detector"),
        images: list[Path] = typer.Argument(..., help="image files or folders"),
        out: Path = typer.Option(..., "--out", help="output folder (never inside an input folder)"),
        batch_size: Optional[int] = typer.Option(None),
        overlays: bool = typer.Option(True, help="write heat-map overlay PNGs"),
        strict: bool = typer.Option(False, "--strict", help="fail on the first unreadable image and write "
                                                            "nothing (default: skip it with one line)"),
        threshold: Optional[float] = typer.Option(None, "--threshold", help="pass/fail threshold for this call "
                                                  "(default: the run's, see `comgen calibrate`)"),
    ) -> None:
        """Anomaly maps (original resolution), scores.csv with pass/fail, and overlays."""
        from comgen.detect.predict import predict_paths

        rows = predict_paths(run_dir, images, out, batch_size=batch_size, overlays=overlays, strict=strict,
                             threshold=threshold)
        n_fail = sum(r["decision"] == "fail" for r in rows)
        typer.echo(f"{len(rows)} image(s): {n_fail} fail, {len(rows) - n_fail} pass -> {out / 'scores.csv'}")

    @app.command("calibrate")
    def calibrate_cmd(
        run_dir: Path = typer.Argument(..., help="run directory with a trained detector"),
        max_false_reject: Optional[float] = typer.Option(None, "--max-false-reject",
                                                         help="reject at most this share of validation normals"),
        quantile: Optional[float] = typer.Option(None, "--quantile", help="this quantile of validation normal scores"),
        score: Optional[float] = typer.Option(None, "--score", help="this score itself"),
    ) -> None:
        """Set the pass/fail threshold without retraining, from the stored validation scores."""
        from comgen.detect.calibration import set_threshold
        from comgen.rundir import RunDir

        run = RunDir(run_dir)  # a trained detector is all it needs (a bench-trained run has no run.yaml)
        with run.lock():
            old, new, record = set_threshold(run, max_false_reject=max_false_reject, quantile=quantile, score=score)
        extra = (f"; {record['false_reject_on_validation']:.1%} of validation normals fail"
                 if "false_reject_on_validation" in record else "")
        typer.echo(f"threshold {old:.4f} -> {new:.4f} ({record['rule']} {record['value']}){extra}")

    @app.command("export")
    def export(
        run_dir: Path = typer.Argument(..., help="run directory with a trained detector"),
        onnx: Optional[Path] = typer.Option(None, "--onnx", help="output .onnx file: backbone + head only"),
        bundle: Optional[Path] = typer.Option(None, "--bundle", help="output folder: the whole scoring path "
                                                                     "(graphs + arrays), run by comgen.export_runtime"),
        openvino: bool = typer.Option(False, "--openvino", help="also write OpenVINO IR of the bundle's graphs"),
        opset: int = typer.Option(17),
    ) -> None:
        """Export the detector: --bundle (scores as `comgen predict`) and/or --onnx (the network alone)."""
        from comgen.errors import ConfigError

        if onnx is None and bundle is None:
            raise ConfigError("export", "give --bundle DIR (the whole scoring path) and/or --onnx FILE (the network)")
        if openvino and bundle is None:
            raise ConfigError("--openvino", "converts a bundle's graphs; give --bundle DIR too")
        if bundle is not None:
            from comgen.detect.bundle import export_bundle

            out = export_bundle(run_dir, bundle, opset=opset, openvino=openvino, log=typer.echo)
            typer.echo(f"wrote the bundle {out} (bundle.json lists its graphs and arrays)")
        if onnx is not None:
            from comgen.detect.export import export_onnx

            path = export_onnx(run_dir, onnx, opset=opset)
            typer.echo(f"wrote {path} (+ {path.with_suffix('.onnx.json').name} with inputs and calibration)")
