"""``comgen run`` (one category or all, end to end) and ``comgen demo`` (built-in benchmark, offline, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add ``run``, ``demo`` and ``bench`` to the app."""

    @app.command("run")
    def run(
        dataset: Path = typer.Argument(..., help="Dataset root (MVTec LOCO, MVTec AD or folder layout)."),
        category: str = typer.Option(..., "--category", "-c", help="A category, a,b,c, or 'all'."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Run directory (one category; default runs/<category>) "
                                                "or parent folder (several; default runs/)."),
        config: Optional[Path] = typer.Option(None, "--config", help="RunConfig YAML (run.yaml)."),
        image_size: Optional[int] = typer.Option(None, "--image-size", help="Working resolution."),
        n: Optional[int] = typer.Option(None, "--n", help="Generated anomalies per category."),
        backend: Optional[str] = typer.Option(None, "--backend", "-b", help="Anomaly source for training."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Detector training epochs."),
        force: bool = typer.Option(False, "--force", help="Redo every stage even when up to date."),
    ) -> None:
        """learn -> generate -> mask -> train -> evaluate in one run directory; reruns skip finished stages."""
        from comgen.pipeline.suite import print_table, run_suite, selected_config

        cfg = selected_config(config, image_size=image_size, n=n, backend=backend, epochs=epochs)
        summary = run_suite(dataset, category, out, cfg, force=force)
        print_table(summary)

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the benchmark and the runs."),
        size: int = typer.Option(256, "--size", help="Image size of the built-in benchmark and the runs."),
        categories: str = typer.Option("all", "--categories", help="Categories of the built-in benchmark."),
        quick: bool = typer.Option(False, "--quick", help="Tiny settings (a smoke test in a few minutes)."),
        force: bool = typer.Option(False, "--force", help="Redo every stage even when up to date."),
        seed: int = typer.Option(0, "--seed", min=0, help="The runs' draws (learner, generator, detector); the "
                                                         "benchmark's images stay the same."),
    ) -> None:
        """Create the built-in benchmark, then run every category end to end (offline, CPU) and report."""
        from comgen.pipeline.demo import run_demo
        from comgen.pipeline.suite import print_table

        print_table(run_demo(out, size=size, categories=categories, quick=quick, force=force, seed=seed))

    bench = typer.Typer(help="Benchmarks that print tables (full-size figures).", no_args_is_help=True)
    app.add_typer(bench, name="bench")

    @bench.command("generators")
    def generators(
        out: Path = typer.Option(Path("bench_runs/generators"), "--out", "-o"),
        size: int = typer.Option(128, "--size"),
        categories: str = typer.Option("all", "--categories"),
        epochs: Optional[int] = typer.Option(None, "--epochs"),
        rows: str = typer.Option("all", "--rows", help="Comma-separated row numbers (0-based), 'all' or 'none'."),
        seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds; each row runs once per seed and "
                                                      "the table gives the mean (and the spread across seeds)."),
        compositional: list[str] = typer.Option([], "--compositional", help="An extra ComGEN row with these "
                                                "compositional options, as JSON (repeatable), e.g. "
                                                "'{\"logical_ratio\": 0.8}'."),
        learn: Optional[str] = typer.Option(None, "--learn", help="Component learner options for every row, as "
                                            "JSON, e.g. '{\"k_max\": 8}'."),
    ) -> None:
        """The same CSDA detector trained with each anomaly source; prints the Markdown table."""
        from comgen.benchmarks.cli import main_generators

        main_generators(out, size, categories, epochs, rows, seeds, compositional, learn)
