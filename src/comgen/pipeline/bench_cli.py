"""``comgen bench generators``: shared entry point of the CLI command and ``bench/generators.py``."""

from __future__ import annotations

from pathlib import Path

from comgen.io import atomic_write_text


def main_generators(out: str | Path, size: int = 128, categories: str = "all", epochs: int | None = None,
                    rows: str = "all") -> str:
    from comgen.data.synth.config import SynthConfig
    from comgen.data.synth.writer import generate_benchmark
    from comgen.pipeline.bench import ROWS, benchmark_markdown, run_generator_benchmark
    from comgen.pipeline.demo import demo_settings

    out = Path(out)
    synth, cfg = demo_settings(size, categories, quick=False)
    if epochs is not None:
        cfg = cfg.replace(detector=cfg.detector.replace(epochs=epochs))
    data = out / "data"
    if not (data / "config.yaml").is_file() or SynthConfig.load(data / "config.yaml").hash() != synth.hash():
        generate_benchmark(data, synth)
    chosen = ROWS if rows == "all" else tuple(ROWS[int(i)] for i in rows.split(","))
    table = run_generator_benchmark(data, out / "runs", cfg, categories, chosen)
    text = benchmark_markdown(table)
    atomic_write_text(out / "generators.md", text + "\n")
    print(text)
    return text
