"""``comgen generate``: fit a generator on a category's normal training images and write anomalies to the run.

Options given on the command line override the ``--config`` file, which overrides the defaults. The run directory
(default ``runs/<category>``) is created or reopened with ``RunDir.create``, so it refuses a folder that belongs
to another dataset or category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from comgen.errors import DatasetError


def run_generate(dataset: Path, category: str, overrides: dict, config: Optional[Path] = None,
                 out: Optional[Path] = None, log=typer.echo, export_anomalib: Optional[Path] = None,
                 merge: bool = False):
    """The command's body as a function (also used by the pipeline): returns the writer's summary, or with
    ``merge`` whether the finished shards were merged.

    ``export_anomalib``: also write the set in the layout of anomalib's ``Folder`` datamodule there.
    """
    from comgen.generate.config import GenerateConfig
    from comgen.generate.registry import build_generator, check_backend
    from comgen.generate.writer import merge_generated, write_generated
    from comgen.rundir import RunDir

    base = GenerateConfig.load(config).to_dict() if config is not None else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    cfg = GenerateConfig.from_dict(base, where=str(config) if config else "generate options")
    check_backend(cfg.backend)  # before touching the dataset, so a typo fails fast

    from comgen.data.readers import open_dataset

    ds = open_dataset(dataset)
    cats = ds.categories()
    if category not in cats:
        raise DatasetError(dataset, f"no category {category!r}; found: {', '.join(cats) or 'none'}")
    train = ds.samples(category, "train")
    if not train:
        raise DatasetError(dataset, f"category {category!r} has no training images")
    if export_anomalib is not None:  # a bad export folder fails before the generator runs
        from comgen.generate.anomalib_folder import check_export_folder

        check_export_folder(Path(export_anomalib), ds.root)
    run = RunDir.create(out or Path("runs") / category, dataset, category)
    generator = build_generator(cfg.backend, cfg)
    log(f"{cfg.backend}: fitting on {len(train)} training images of {category}")
    generator.fit(train, run)
    if merge:
        return merge_generated(generator, run.generated(cfg.backend), cfg, log=log)
    summary = write_generated(generator, run.generated(cfg.backend), cfg, log=log)
    if export_anomalib is not None:
        from comgen.generate.anomalib_folder import export_anomalib_folder

        done = export_anomalib_folder(run.generated(cfg.backend), train, export_anomalib, ds.root)
        log(f"anomalib Folder layout: {done['normal']} normal, {done['abnormal']} abnormal images with masks in "
            f"{export_anomalib} (normal_dir='normal', abnormal_dir='abnormal', mask_dir='mask')")
    return summary


def register(app: typer.Typer) -> None:
    """Add ``comgen generate`` to the app."""

    @app.command("generate")
    def generate(
        dataset: Path = typer.Argument(..., help="Dataset root (MVTec LOCO, MVTec AD or folder layout)."),
        category: str = typer.Option(..., "--category", "-c", help="Category to generate anomalies for."),
        n: Optional[int] = typer.Option(None, "--n", help="Number of anomalies (default 100)."),
        backend: Optional[str] = typer.Option(None, "--backend", "-b",
                                              help="compositional | cutpaste | draem | nsa | diffusion."),
        shard: Optional[str] = typer.Option(None, "--shard", help="i/n: write only shard i (0-based) of n; the "
                                            "last shard to finish merges them into one set."),
        merge_shards: bool = typer.Option(False, "--merge-shards", help="Merge the finished shards in the run "
                                          "into one set (same options as the shards; done by the last shard too)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<category>)."),
        image_size: Optional[int] = typer.Option(None, "--image-size", help="Working resolution (default 256)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
        config: Optional[Path] = typer.Option(None, "--config", help="GenerateConfig YAML (gen.yaml)."),
        sd_model: Optional[Path] = typer.Option(None, "--sd-model",
                                                help="Local Stable-Diffusion folder (--backend diffusion)."),
        export_anomalib: Optional[Path] = typer.Option(
            None, "--export-anomalib", help="Also write the set for anomalib's Folder datamodule: "
                                            "OUT/normal, OUT/abnormal, OUT/mask (0/255, named as the image)."),
    ) -> None:
        """Generate anomalies with masks into RUN/generated/<backend> (resumable, shardable)."""
        overrides = {"n": n, "backend": backend, "shard": shard, "image_size": image_size, "seed": seed}
        if sd_model is not None:
            from comgen.generate.config import GenerateConfig

            section = GenerateConfig.load(config).diffusion.to_dict() if config is not None else {}
            overrides["diffusion"] = {**section, "sd_model": str(sd_model)}
        if merge_shards:
            run_generate(dataset, category, overrides, config, out, merge=True)
            return
        summary = run_generate(dataset, category, overrides, config, out, export_anomalib=export_anomalib)
        if summary.missing:
            typer.echo(f"warning: the generator did not produce {len(summary.missing)} of the requested "
                       f"anomalies (indices {summary.missing[:5]}...)", err=True)
