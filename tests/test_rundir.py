from __future__ import annotations

from pathlib import Path

import pytest

from comgen.errors import ArtifactError
from comgen.rundir import RunDir


def test_create_then_open(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run", tmp_path / "data", "bottle")
    assert RunDir.open(tmp_path / "run").info.category == "bottle"
    assert run.generated("cutpaste") == tmp_path / "run" / "generated" / "cutpaste"


def test_refuses_rebinding_and_missing_run(tmp_path: Path) -> None:
    RunDir.create(tmp_path / "run", tmp_path / "data", "bottle")
    with pytest.raises(ArtifactError, match="belongs to"):
        RunDir.create(tmp_path / "run", tmp_path / "data", "screw")
    with pytest.raises(ArtifactError, match="not a comgen run directory"):
        RunDir.open(tmp_path / "nothing")
