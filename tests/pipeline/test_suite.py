"""The combined results table of ``comgen run --categories all``."""

from __future__ import annotations

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
