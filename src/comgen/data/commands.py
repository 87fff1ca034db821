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
) -> None:
    """Generate the built-in LOCO-style benchmark in the MVTec LOCO AD layout (+ generator truth)."""
    from comgen.data.synth import SynthConfig, generate_benchmark

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
