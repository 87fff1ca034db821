"""``comgen bench generators``: shared entry point of the CLI command and ``bench/generators.py``."""

from __future__ import annotations

from pathlib import Path

from comgen.errors import ConfigError
from comgen.io import atomic_write_text


def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); refuses anything that is not a list of distinct non-negative integers."""
    try:
        seeds = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        raise ConfigError("seeds", f"{text!r} is not a comma-separated list of integers (e.g. 0,1)") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"{text!r}: need distinct non-negative integers")
    return seeds


def main_generators(out: str | Path, size: int = 128, categories: str = "all", epochs: int | None = None,
                    rows: str = "all", seeds: str = "0") -> str:
    from comgen.data.synth.config import SynthConfig
    from comgen.data.synth.writer import generate_benchmark
    from comgen.pipeline.bench import ROWS, benchmark_markdown, run_generator_benchmark
    from comgen.pipeline.demo import demo_settings

    seed_list = parse_seeds(seeds)  # before any work: a typo must not cost a benchmark build
    out = Path(out)
    synth, cfg = demo_settings(size, categories, quick=False)
    if epochs is not None:
        cfg = cfg.replace(detector=cfg.detector.replace(epochs=epochs))
    data = out / "data"
    if not (data / "config.yaml").is_file() or SynthConfig.load(data / "config.yaml").hash() != synth.hash():
        generate_benchmark(data, synth)
    chosen = ROWS if rows == "all" else tuple(ROWS[int(i)] for i in rows.split(","))
    table = run_generator_benchmark(data, out / "runs", cfg, categories, chosen, seeds=seed_list)
    text = benchmark_markdown(table)
    atomic_write_text(out / "generators.md", text + "\n")
    print(text)
    return text
