from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comgen.io import append_jsonl, atomic_path, atomic_write_text, read_jsonl, write_png


def test_atomic_write_leaves_no_partial_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_jsonl_ignores_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"a": np.int64(2), "p": Path("/x")})
    with open(path, "a") as fh:
        fh.write('{"a": 3')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2, "p": "/x"}]


def test_write_png_round_trip(tmp_path: Path) -> None:
    import cv2

    img = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "a.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, img)
    write_png(tmp_path / "m.png", img[..., 0] > 128)
    assert set(np.unique(cv2.imread(str(tmp_path / "m.png"), 0))) <= {0, 255}
