"""Fixtures of the evaluation tests: a tiny LOCO dataset read through the project's dataset readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluate.loco_fixture import make_loco


@pytest.fixture
def loco(tmp_path: Path):
    readers = pytest.importorskip("comgen.data.readers")
    return readers.open_dataset(make_loco(tmp_path / "ds"))
