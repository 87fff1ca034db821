"""``comgen synth`` (built-in LOCO-style benchmark) and ``comgen data check`` (dataset validation)."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(no_args_is_help=True, help="Inspect and validate datasets.")


def synth(
    out: Path = typer.Argument(..., help="output folder (new, empty, or an earlier comgen synth output)"),
    size: int = typer.Option(256, "--size", help="square image size in pixels"),
    train: int = typer.Option(200, "--train", help="normal training images per category"),
    validation: int = typer.Option(40, "--validation", help="normal validation images per category"),
    test: int = typer.Option(150, "--test", help="test images per category (1/3 good, logical, structural)"),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed, same benchmark)"),
    categories: str = typer.Option("all", "--categories", help="comma-separated categories, or 'all'"),
    workers: int = typer.Option(0, "--workers", help="parallel processes (0 = one per CPU, 1 = none)"),
    family: bool = typer.Option(False, "--family", help="categories of the procedural family instead of the "
                                "built-in four: one new category per seed (--seeds)"),
    seeds: str = typer.Option("report", "--seeds", help="with --family: 'report' (1000-1011), 'dev' (0-9), "
                              "a range like 1000-1011 or a list like 0,3,5"),
) -> None:
    """Generate the built-in LOCO-style benchmark, or categories of the procedural family, in the MVTec LOCO AD
    layout (+ generator truth)."""
    from comgen.data.family import family_categories
    from comgen.data.synth import SynthConfig, generate_benchmark
    from comgen.errors import ConfigError

    if family:
        if categories != "all":
            raise ConfigError("--categories", "choose family categories with --seeds, not --categories")
        try:
            categories = ",".join(family_categories(seeds))
        except ValueError as exc:
            raise ConfigError("--seeds", str(exc)) from None
    cfg = SynthConfig(size=size, n_train=train, n_validation=validation, n_test=test, seed=seed,
                      categories=categories)  # type: ignore[arg-type]  # str is normalised in __post_init__
    paths = generate_benchmark(out, cfg, workers=workers)
    typer.echo(f"wrote {len(paths)} categories to {out}: {', '.join(p.name for p in paths)}")


def check(
    path: Path = typer.Argument(..., help="dataset root or one category folder"),
    layout: str = typer.Option("auto", "--layout", help="auto | loco | mvtec_ad | folder"),
) -> None:
    """Validate a dataset (every image and mask decoded) and print a per-split, per-defect summary."""
    from comgen.data.check import check_dataset, render_summary

    render_summary(check_dataset(path, layout))


def register(app: typer.Typer) -> None:
    """Add ``synth`` and the ``data`` group (``data check``) to the ``comgen`` app."""
    app.command("synth")(synth)
    data_app.command("check")(check)
    app.add_typer(data_app, name="data")
