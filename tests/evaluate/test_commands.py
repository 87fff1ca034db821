"""``comgen evaluate`` end to end through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from comgen.cli import main
from comgen.evaluate.maps import map_path
from tests.evaluate.loco_fixture import write_maps


def test_cli_writes_metrics_report_and_config(loco, tmp_path: Path, capsys):
    write_maps(loco, tmp_path / "maps", lambda s, u: u.astype(np.float32))
    out = tmp_path / "out"
    rc = main(["evaluate", str(loco.root), "--category", "all", "--maps", str(tmp_path / "maps"),
               "--out", str(out), "--gallery", "1"])
    assert rc == 0
    assert (out / "report.html").is_file() and (out / "config.yaml").is_file()
    assert json.loads((out / "metrics.json").read_text())["categories"]["box"]["metrics"]["mean"]["spro"] == 1.0
    assert "box" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_exit_2(loco, tmp_path: Path, capsys):
    samples = write_maps(loco, tmp_path / "maps", lambda s, u: u.astype(np.float32))
    map_path(tmp_path / "maps", samples[0]).unlink()
    rc = main(["evaluate", str(loco.root), "--maps", str(tmp_path / "maps"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "000.tiff: missing anomaly map" in err
