"""``comgen demo``: its settings, and ``--seed`` drawing the runs again on the same benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import comgen.pipeline.demo as demo


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Calls of the demo's two steps, without building or running anything."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo, "generate_benchmark", lambda data, synth: calls.append({"synth": synth}))
    monkeypatch.setattr(demo, "run_suite", lambda data, cats, runs, cfg, force, log, nested:
                        calls.append({"cfg": cfg, "runs": runs, "nested": nested}))
    return calls


def test_the_seed_reaches_the_runs_and_not_the_benchmark(captured: list[dict[str, Any]], tmp_path: Path) -> None:
    demo.run_demo(tmp_path / "a", quick=True, log=lambda m: None)
    demo.run_demo(tmp_path / "b", quick=True, seed=3, log=lambda m: None)
    (first, run0), (second, run3) = captured[:2], captured[2:]
    assert first["synth"].hash() == second["synth"].hash()
    assert run0["cfg"].seed == 0 and run3["cfg"].seed == 3
    resolved = run3["cfg"].resolved()
    assert resolved.learn.seed == 3 and resolved.detector.seed == 3


def test_the_cli_passes_the_seed_and_refuses_a_negative_one(captured: list[dict[str, Any]], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import comgen.pipeline.suite as suite
    from comgen.cli import app

    monkeypatch.setattr(suite, "print_table", lambda summary: None)

    runner = CliRunner()
    done = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--seed", "2"])
    assert done.exit_code == 0, done.output
    assert captured[-1]["cfg"].seed == 2
    refused = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--seed", "-1"])
    assert refused.exit_code != 0 and "greater than or equal to 0" in refused.output


def test_one_category_runs_in_its_own_folder_under_runs(captured: list[dict[str, Any]], tmp_path: Path) -> None:
    demo.run_demo(tmp_path, quick=True, categories="screw_bag", log=lambda m: None)
    demo.run_demo(tmp_path, quick=True, categories="screw_bag,cable_pair", log=lambda m: None)
    demo.run_demo(tmp_path, quick=True, log=lambda m: None)
    runs = [(c["runs"], c["nested"]) for c in captured if "runs" in c]
    assert runs == [(tmp_path / "runs", True)] * 3  # run_suite puts even a lone category in runs/<category>
