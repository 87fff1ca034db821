"""The combined results table of ``comgen run --categories all``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import comgen.pipeline.suite as suite
from comgen.pipeline.config import RunConfig
from comgen.pipeline.suite import mean_of_present, print_table


def test_mean_of_present_skips_missing_values() -> None:
    rows = [{"logical_auroc": 0.5}, {"logical_auroc": None}, {}, {"logical_auroc": 1.0}]
    assert mean_of_present(rows, "logical_auroc") == 0.75
    assert mean_of_present(rows, "structural_auroc") is None


def test_print_table_means_only_categories_that_have_the_subset(capsys) -> None:
    results = {"a": {"metrics": {"logical": {"image_auroc": 0.6}, "structural": {"image_auroc": 0.8}}},
               "b": {"metrics": {"structural": {"image_auroc": 0.9}}}}
    print_table({"results": results, "report": "r.html"})
    out = capsys.readouterr().out
    mean_line = next(line for line in out.splitlines() if "**mean**" in line)
    assert "| 0.600 | 0.850 |" in mean_line
    assert out.rstrip().endswith("report: r.html")


def test_one_category_runs_in_out_itself_unless_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    for cat in ("a", "b"):  # normal images only: nothing to evaluate, so only the run directories matter
        (data / cat / "train" / "good").mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(data / cat / "train" / "good" / f"{i}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
    monkeypatch.setattr(suite, "run_category", lambda ds, cat, root, cfg, force, log: SimpleNamespace(root=root))
    out = tmp_path / "runs"

    def roots(category: str, nested: bool) -> dict[str, str]:
        return suite.run_suite(data, category, out, RunConfig(), log=lambda m: None, nested=nested)["runs"]

    assert roots("a", nested=False) == {"a": str(out)}
    assert roots("a", nested=True) == {"a": str(out / "a")}
    assert roots("a,b", nested=False) == {"a": str(out / "a"), "b": str(out / "b")}
