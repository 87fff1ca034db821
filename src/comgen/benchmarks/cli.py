"""``comgen bench generators``: shared entry point of the CLI command and ``bench/generators.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from comgen.errors import ConfigError
from comgen.io import atomic_write_text

if TYPE_CHECKING:
    from comgen.benchmarks.generators import Row


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); refuses anything that is not a list of distinct non-negative integers."""
    try:
        seeds = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        raise ConfigError("seeds", f"{text!r} is not a comma-separated list of integers (e.g. 0,1)") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"{text!r}: need distinct non-negative integers")
    return seeds


def select_rows(text: str) -> tuple[Row, ...]:
    """"all", "none" or row numbers ("0,3") -> the benchmark's rows; refuses unknown or repeated numbers."""
    from comgen.benchmarks.generators import ROWS

    if text == "all":
        return ROWS
    if text == "none":
        return ()
    try:
        picked = [int(t) for t in str(text).split(",")]
    except ValueError:
        raise ConfigError("rows", f"{text!r} is not 'all', 'none' or comma-separated row numbers (e.g. 0,3)") from None
    bad = [i for i in picked if not 0 <= i < len(ROWS)]
    if bad or len(set(picked)) != len(picked):
        raise ConfigError("rows", f"{text!r}: need distinct row numbers from 0 to {len(ROWS) - 1}")
    return tuple(ROWS[i] for i in picked)


def compositional_rows(options: Sequence[str]) -> tuple[Row, ...]:
    """One extra ComGEN row per JSON object of compositional options (``'{"logical_ratio": 0.8}'``).

    Why: a variant's figures (an ablation, another edit mix) must be rerunnable from ``bench/`` with the same
    detector and seeds as the fixed rows. Every object is checked against ``CompositionalConfig`` before any work.
    """
    import json

    from comgen.generate.config import parse_compositional_options
    from comgen.benchmarks.generators import Row

    rows = []
    for text in options:
        parsed = parse_compositional_options(text)
        rows.append(Row(f"comgen {json.dumps(parsed, sort_keys=True)}", "compositional", parsed))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError("--compositional", "the same options are given twice")
    return tuple(rows)


def family_option(text: str, flag: str = "--family") -> list[str]:
    """The procedural family's categories of a seeds option (``dev``, ``report``, ``1000-1011``), or a
    ConfigError naming the option, so that a benchmark script refuses a bad one in one line."""
    from comgen.data.family import family_categories

    try:
        return family_categories(text)
    except ValueError as exc:
        raise ConfigError(flag, str(exc)) from None


def bench_categories(categories: str, family: str | None, data: Path | None) -> list[str]:
    """The categories a benchmark script scores: ``--categories`` when given, else ``--family``'s seeds; [] means
    every category of ``--data`` (or the built-in ones). ``family`` None takes the report seeds without ``--data``,
    and every category of the data with it; ``none`` is []. Why: with ``--data`` a seeds option was ignored, so a
    run meant for a few seeds scored every category of the folder without a word."""
    listed = [c.strip() for c in categories.split(",") if c.strip()]
    if listed:
        return listed
    if family is None and data is None:
        family = "report"
    return [] if family is None or family == "none" else family_option(family)


def learner_options(text: str | None) -> dict:
    """The component learner's options for every row (``'{"k_max": 8}'``), checked against
    ``LearnerConfig`` before any work. Why: the learner feeds both the compositional back-end and the composition
    prior that every trained row shares, so a learner variant is measured on all rows, not as one extra row."""
    from comgen.components.features import LearnerConfig
    from comgen.generate.config import parse_options

    return parse_options(text, "--learn", checked_by=LearnerConfig) if text else {}


def main_generators(out: str | Path, size: int = 128, categories: str = "all", epochs: int | None = None,
                    rows: str = "all", seeds: str = "0", compositional: Sequence[str] = (),
                    learn: str | None = None) -> str:
    from comgen.data.synth.config import SynthConfig
    from comgen.data.synth.writer import generate_benchmark
    from comgen.benchmarks.generators import benchmark_markdown, run_generator_benchmark
    from comgen.pipeline.demo import demo_settings

    # before any work: a typo must not cost a benchmark build
    seed_list = parse_seeds(seeds)
    chosen = select_rows(rows) + compositional_rows(compositional)
    learn_options = learner_options(learn)
    if not chosen:
        raise ConfigError("rows", "no row to run (--rows none and no --compositional)")
    out = Path(out)
    synth, cfg = demo_settings(size, categories, quick=False)
    if epochs is not None:
        cfg = cfg.replace(detector=cfg.detector.replace(epochs=epochs))
    if learn_options:
        cfg = cfg.replace(learn=cfg.learn.replace(**learn_options))
    data = out / "data"
    if not (data / "config.yaml").is_file() or SynthConfig.load(data / "config.yaml").hash() != synth.hash():
        generate_benchmark(data, synth)
    table = run_generator_benchmark(data, out / "runs", cfg, categories, chosen, seeds=seed_list)
    text = benchmark_markdown(table)
    atomic_write_text(out / "generators.md", text + "\n")
    print(text)
    return text
