"""``comgen learn``: Multi-Component Learning from a dataset category's normal training images."""

from __future__ import annotations

from pathlib import Path

import typer

from comgen.errors import ConfigError, InputError


def _parse_k(k: str) -> int:
    if k == "auto":
        return 0
    try:
        v = int(k)
    except ValueError:
        raise ConfigError("--k", f"{k!r} is neither 'auto' nor an integer") from None
    if v < 2:
        raise ConfigError("--k", f"{v}: need at least 2 classes (background + one part)")
    return v


def learn(
    dataset: Path = typer.Argument(..., help="dataset root (MVTec LOCO / MVTec AD / folder layout)"),
    category: str = typer.Option(..., "--category", "-c", help="category to learn"),
    out: Path = typer.Option(None, "--out", help="run directory (default runs/<category>)"),
    image_size: int = typer.Option(256, "--image-size", help="square working resolution"),
    k: str = typer.Option("auto", "--k", help="number of classes incl. background, or 'auto'"),
    weights: str = typer.Option("auto", "--weights", help="backbone weights: auto | random | <path>"),
    no_backbone: bool = typer.Option(False, "--no-backbone", help="colour features only"),
    config: Path = typer.Option(None, "--config", help="LearnerConfig YAML (options given here override it)"),
    backend: str = typer.Option("components", "--backend",
                                help="components (CPU learner) | diffusion (also learn SD tokens <c_k>)"),
    sd_model: Path = typer.Option(None, "--sd-model", help="local diffusers Stable-Diffusion folder (diffusion)"),
    diffusion_config: Path = typer.Option(None, "--diffusion-config", help="DiffusionConfig YAML (diffusion)"),
) -> None:
    """Learn component classes <c1>..<cK> from normal images; writes RUN/components (model, config, preview).

    With ``--backend diffusion`` it then binds one Stable-Diffusion text token per class (RUN/diffusion).
    """
    if backend not in ("components", "diffusion"):
        raise ConfigError("--backend", f"{backend!r} is not one of components, diffusion")
    if backend == "diffusion":  # before the learner runs for minutes
        from comgen.generate.diffusion.extra import require_diffusion_extra

        require_diffusion_extra()
    from comgen.components.features import LearnerConfig
    from comgen.components.learner import learn_into_run
    from comgen.data.readers import open_dataset
    from comgen.rundir import RunDir

    cfg = LearnerConfig.load(config) if config else LearnerConfig()
    cfg = cfg.replace(image_size=image_size, k=_parse_k(k), backbone_weights=weights,
                      use_backbone=cfg.use_backbone and not no_backbone)
    LearnerConfig.from_dict(cfg.to_dict())  # re-validate the combined options
    ds = open_dataset(dataset)
    if category not in ds.categories():
        raise InputError(dataset, f"no category {category!r}; available: {', '.join(ds.categories()) or 'none'}")
    samples = ds.samples(category, "train")
    run = RunDir.create(out or Path("runs") / category, dataset, category)
    model = learn_into_run(run, samples, cfg)
    share = model.meta.get("class_pixel_share", [])
    typer.echo(f"learned {model.num_classes - 1} component classes + background from {len(samples)} images "
               f"(backbone: {model.backbone_source})")
    for kk, tok in enumerate(model.tokens, start=1):
        typer.echo(f"  {tok}: {100 * share[kk]:.1f}% of pixels" if kk < len(share) else f"  {tok}")
    typer.echo(f"wrote {run.components}")
    if backend == "diffusion":
        from comgen.generate.diffusion import DiffusionConfig, learn_tokens_into_run

        dcfg = DiffusionConfig.load(diffusion_config) if diffusion_config else DiffusionConfig()
        dcfg = dcfg.replace(sd_model=str(sd_model or dcfg.sd_model), image_size=image_size)
        if not dcfg.sd_model:
            raise ConfigError("--sd-model", "the diffusion back-end needs a local Stable-Diffusion folder")
        learn_tokens_into_run(run, samples, dcfg)
        typer.echo(f"learned tokens {', '.join(model.tokens)} into {run.root / 'diffusion'}")


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the ``comgen`` app."""
    app.command("learn")(learn)
