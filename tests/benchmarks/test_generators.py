"""The generator benchmark's rows run the same detector on different anomaly sources and print one table."""

from __future__ import annotations

from pathlib import Path

from comgen.data.synth.config import SynthConfig
from comgen.data.synth.writer import generate_benchmark
import pytest

from comgen.errors import ConfigError
from comgen.benchmarks.generators import ROWS, Row, _slug, benchmark_markdown, row_config, run_generator_benchmark
from comgen.benchmarks.cli import (bench_categories, compositional_rows, family_option, main_generators, parse_seeds,
                                  select_rows)
from comgen.pipeline.demo import demo_settings


def test_row_configs_differ_only_in_the_anomaly_source() -> None:
    _, base = demo_settings(64, "all", quick=True)
    full, no_ls, cut = (row_config(base, r).resolved() for r in (ROWS[0], ROWS[1], ROWS[3]))
    assert full.detector.replace(backend="x") == cut.detector.replace(backend="x")
    assert no_ls.generate.compositional.low_density is False
    remove_add = row_config(base, ROWS[2]).resolved().generate.compositional.edit_kinds
    assert remove_add == ["remove", "add", "transplant"]  # the default structural edits, as in the full row
    assert full.generate.backend == "compositional" and cut.generate.backend == "cutpaste"


def test_benchmark_table_on_tiny_data(tmp_path: Path) -> None:
    generate_benchmark(tmp_path / "data", SynthConfig(size=64, n_train=10, n_validation=4, n_test=8,
                                                      categories=["cable_pair"]))
    _, base = demo_settings(64, "cable_pair", quick=True)
    base = base.replace(n_anomalies=8, detector=base.detector.replace(epochs=1))
    rows = (Row("cutpaste", "cutpaste"), Row("knn", "knn"))
    table = run_generator_benchmark(tmp_path / "data", tmp_path / "runs", base, "cable_pair", rows,
                                    log=lambda _m: None, seeds=(0, 1))
    text = benchmark_markdown(table)
    headline_table, detail_table, defect_table = text.split("\n\n")
    assert (headline_table + detail_table).count("| cutpaste |") == 2
    assert (headline_table + detail_table).count("| knn |") == 2
    defects = sorted(table["cutpaste"]["results"]["cable_pair"]["per_defect"])
    assert len(defects) == 6 and defect_table.count("| cutpaste | cable_pair |") == len(defects)
    wrong = [table["cutpaste"]["by_seed"][s]["cable_pair"]["per_defect"]["wrong_cable_color"] for s in (0, 1)]
    line = next(x for x in defect_table.splitlines() if x.startswith("| cutpaste | cable_pair | wrong_cable_color"))
    assert line.split(" | ")[3] == f"{(wrong[0]['image_auroc'] + wrong[1]['image_auroc']) / 2:.3f}"  # seed mean
    assert set(table["cutpaste"]["by_seed"]) == {0, 1} and set(table["knn"]["by_seed"]) == {0}  # kNN: no seed
    assert (tmp_path / "runs" / "seed1" / "cutpaste" / "cable_pair").is_dir()
    headline = next(line for line in text.splitlines() if line.startswith("| cutpaste | mean"))
    assert headline.count(" ± ") == 4  # fused and network-alone AUROC, logical and structural
    by_seed = [table["cutpaste"]["by_seed"][s]["cable_pair"]["metrics"]["logical"]["image_auroc"] for s in (0, 1)]
    detail = next(line for line in text.splitlines() if line.startswith("| cutpaste | cable_pair"))
    assert detail.split(" | ")[2] == f"{sum(by_seed) / 2:.3f}"  # the detail rows are the mean over seeds
    for entry in table.values():
        auroc = entry["results"]["cable_pair"]["metrics"]["mean"]["image_auroc"]
        assert 0.0 <= auroc <= 1.0


def test_parse_seeds() -> None:
    assert parse_seeds("0") == (0,) and parse_seeds("0,1,2") == (0, 1, 2)
    for bad in ("a", "0,0", "-1", ""):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_family_option() -> None:
    assert family_option("0-2") == ["family_0", "family_1", "family_2"] and len(family_option("report")) == 12
    with pytest.raises(ConfigError, match="^--seeds: 'xyz' is not a seed"):
        family_option("xyz", "--seeds")


def test_bench_categories_follow_the_family_option_with_or_without_data(tmp_path: Path) -> None:
    assert bench_categories("", None, None) == family_option("report")  # no data: the report seeds
    assert bench_categories("", None, tmp_path) == []  # a folder without --family: every category of it
    assert bench_categories("", "0-1", tmp_path) == ["family_0", "family_1"]  # --family narrows the folder
    assert bench_categories("", "none", None) == [] and bench_categories("a, b", "0-1", tmp_path) == ["a", "b"]
    with pytest.raises(ConfigError, match="--family"):
        bench_categories("", "xyz", tmp_path)


def test_select_rows() -> None:
    assert select_rows("all") == ROWS and select_rows("none") == ()
    assert select_rows("0,3") == (ROWS[0], ROWS[3])
    for bad in ("x", "0,0", str(len(ROWS)), "-1", ""):
        with pytest.raises(ConfigError):
            select_rows(bad)


def test_compositional_rows_are_checked_before_any_work() -> None:
    (row,) = compositional_rows(['{"logical_ratio": 0.5, "low_density": false}'])
    assert row.backend == "compositional" and row.compositional == {"logical_ratio": 0.5, "low_density": False}
    assert row.name == 'comgen {"logical_ratio": 0.5, "low_density": false}'
    for bad in (['{"logical_ratio": 2}'], ['{"no_such_option": 1}'], ["not json"], ["[1]"], ["{}", "{}"]):
        with pytest.raises(ConfigError):
            compositional_rows(bad)


def test_bad_rows_fail_before_the_benchmark_is_built(tmp_path: Path) -> None:
    for rows, extra in (("9", ()), ("none", ()), ("0", ('{"edit_kinds": ["teleport"]}',))):
        with pytest.raises(ConfigError):
            main_generators(tmp_path, 64, "cable_pair", rows=rows, compositional=extra)
    assert not (tmp_path / "data").exists()


def test_row_folder_names_stay_short_and_distinct() -> None:
    assert [_slug(r.name) for r in ROWS[:2]] == ["comgen__full", "comgen_w_o_low_density_sampling"]  # resumable
    names = [r.name for r in compositional_rows([
        '{"edit_kinds": ["remove", "add", "replace", "recolor", "move", "swap", "resize", "texture", "deform"]}',
        '{"edit_kinds": ["remove", "add", "replace", "recolor", "move", "swap", "resize", "texture", "cut"]}'])]
    slugs = [_slug(n) for n in names]
    assert all(len(s) <= 80 for s in slugs) and slugs[0] != slugs[1]


def test_learner_options_reach_every_row_and_are_checked_first(tmp_path: Path, monkeypatch) -> None:
    import comgen.data.synth.writer as writer
    import comgen.benchmarks.generators as bench

    seen = {}
    monkeypatch.setattr(writer, "generate_benchmark", lambda data, synth: None)
    monkeypatch.setattr(bench, "run_generator_benchmark", lambda data, runs, cfg, *a, **k: seen.update(cfg=cfg) or {})
    monkeypatch.setattr(bench, "benchmark_markdown", lambda table: "")
    main_generators(tmp_path / "ok", 64, "cable_pair", rows="4", learn='{"k_max": 6}')
    assert seen["cfg"].learn.k_max == 6
    for bad in ('{"k_select": "elbow"}', '{"no_such_option": 1}', "not json"):
        with pytest.raises(ConfigError):
            main_generators(tmp_path / "bad", 64, "cable_pair", rows="4", learn=bad)
    assert not (tmp_path / "bad").exists()
