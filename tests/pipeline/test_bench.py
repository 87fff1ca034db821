"""The generator benchmark's rows run the same detector on different anomaly sources and print one table."""

from __future__ import annotations

from pathlib import Path

from comgen.data.synth.config import SynthConfig
from comgen.data.synth.writer import generate_benchmark
from comgen.pipeline.bench import ROWS, Row, benchmark_markdown, row_config, run_generator_benchmark
from comgen.pipeline.demo import demo_settings


def test_row_configs_differ_only_in_the_anomaly_source() -> None:
    _, base = demo_settings(64, "all", quick=True)
    full, no_ls, cut = (row_config(base, r).resolved() for r in (ROWS[0], ROWS[1], ROWS[3]))
    assert full.detector.replace(backend="x") == cut.detector.replace(backend="x")
    assert no_ls.generate.compositional["low_density"] is False
    assert full.generate.backend == "compositional" and cut.generate.backend == "cutpaste"


def test_benchmark_table_on_tiny_data(tmp_path: Path) -> None:
    generate_benchmark(tmp_path / "data", SynthConfig(size=64, n_train=10, n_validation=4, n_test=8,
                                                      categories=["cable_pair"]))
    _, base = demo_settings(64, "cable_pair", quick=True)
    base = base.replace(n_anomalies=8, detector=base.detector.replace(epochs=1))
    rows = (Row("cutpaste", "cutpaste"), Row("knn", "knn"))
    table = run_generator_benchmark(tmp_path / "data", tmp_path / "runs", base, "cable_pair", rows,
                                    log=lambda _m: None)
    text = benchmark_markdown(table)
    assert text.count("| cutpaste |") == 2 and text.count("| knn |") == 2
    for entry in table.values():
        auroc = entry["results"]["cable_pair"]["metrics"]["mean"]["image_auroc"]
        assert 0.0 <= auroc <= 1.0
