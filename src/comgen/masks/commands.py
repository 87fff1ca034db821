"""``comgen mask RUN_DIR``: residual masks for a generated set (Stage II), with the IoU table per edit kind.

Options given on the command line override the ``--config`` file (a MaskConfig YAML), which overrides defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``comgen mask`` to the app."""

    @app.command("mask")
    def mask(
        run_dir: Path = typer.Argument(..., help="Run directory (with generated/<backend>/manifest.jsonl)."),
        backend: str = typer.Option("compositional", "--backend", "-b", help="Which generated set to mask."),
        image_size: Optional[int] = typer.Option(None, "--image-size", help="Working resolution (default 256)."),
        k: Optional[int] = typer.Option(None, "--k", help="References retrieved per image (default 3)."),
        backbone: Optional[str] = typer.Option(None, "--backbone", help="timm model (default tf_efficientnet_lite0)."),
        backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights",
                                                       help="auto | random | PATH (.safetensors/.pth)."),
        index: Optional[str] = typer.Option(None, "--index", help="flat | sq8 | ivfpq (default flat)."),
        coreset: Optional[float] = typer.Option(None, "--coreset", help="Fraction of training images kept."),
        exclude_source: bool = typer.Option(False, "--exclude-source",
                                            help="Never use an anomaly's own source image as its reference."),
        rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild RUN/bank even if one exists."),
        config: Optional[Path] = typer.Option(None, "--config", help="MaskConfig YAML."),
    ) -> None:
        """Compute residual masks beside the edit masks and print the IoU per edit kind."""
        from comgen.masks.run import MaskConfig, compute_masks, format_table
        from comgen.rundir import RunDir

        cfg = MaskConfig.load(config) if config is not None else MaskConfig()
        bank_changes = {k2: v for k2, v in {"image_size": image_size, "k": k, "index": index,
                                             "coreset": coreset}.items() if v is not None}
        bb_changes = {k2: v for k2, v in {"name": backbone, "weights": backbone_weights}.items() if v is not None}
        cfg = MaskConfig.from_dict({**cfg.to_dict(),
                                    "bank": {**cfg.bank.to_dict(), **bank_changes},
                                    "backbone": {**cfg.backbone.to_dict(), **bb_changes},
                                    "exclude_source": cfg.exclude_source or exclude_source},
                                   where=str(config) if config else "mask options")
        run = RunDir.open(run_dir)
        report = compute_masks(run, backend, cfg, rebuild=rebuild, echo=typer.echo)
        typer.echo(format_table(report))
        typer.echo(f"wrote {report['n']} residual masks to {run.generated(backend) / 'residual_masks'}")
