"""Sharded generation through the CLI: shards + merge give the unsharded set byte for byte; bad requests in one line.

The compositional back-end refuses duplicates of lower blocks' edits, so a shard's guess (its blocks generated
without the other shards' lower blocks) can be wrong; with only part-removal edits on a few images duplicates are
frequent, which makes the merge regenerate blocks: the path that has to stay exact.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from comgen.cli import main

CAT = "breakfast_tray"
LEARNER = "  learner:\n    use_backbone: false\n    k_min: 2\n    k_max: 4\n    select_pixels: 3000\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards") / "data"
    assert main(["synth", str(root), "--size", "64", "--train", "8", "--validation", "1", "--test", "3",
                 "--categories", CAT, "--workers", "1"]) == 0
    return root


def _config(tmp: Path, removal_only: bool) -> Path:
    path = tmp / ("removal.yaml" if removal_only else "default.yaml")
    kinds = "  edit_kinds: [remove]\n  low_density: false\n" if removal_only else ""
    path.write_text("chunk: 4\ncompositional:\n" + kinds + LEARNER)
    return path


def _generate(dataset: Path, run: Path, config: Path, *extra: str) -> int:
    return main(["generate", str(dataset), "-c", CAT, "--n", "16", "--image-size", "64", "--seed", "3",
                 "--config", str(config), "--out", str(run), *extra])


def _hashes(run: Path) -> dict[str, str]:
    """Every file of the generated set (images, masks, gates, truth, manifest, preview, config) by content."""
    out = run / "generated" / "compositional"
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("removal_only", [True, False], ids=["duplicates-regenerated", "no-duplicates"])
def test_two_shards_merge_into_the_unsharded_set(dataset: Path, tmp_path: Path, capsys,
                                                 removal_only: bool) -> None:
    config = _config(tmp_path, removal_only)
    assert _generate(dataset, tmp_path / "full", config) == 0
    assert _generate(dataset, tmp_path / "sharded", config, "--shard", "1/2") == 0
    assert not (tmp_path / "sharded" / "generated" / "compositional" / "manifest.jsonl").exists()
    assert _generate(dataset, tmp_path / "sharded", config, "--shard", "0/2") == 0  # the last one merges
    merged = re.search(r"merged the shards .* \((\d+) block", capsys.readouterr().out)
    assert merged, "the last shard did not merge"
    if removal_only:
        assert int(merged.group(1)) >= 1  # the hard path ran: a guessed block was regenerated
    full = _hashes(tmp_path / "full")
    assert len([k for k in full if k.startswith("images/")]) == 16 and "manifest.jsonl" in full
    assert _hashes(tmp_path / "sharded") == full  # same files, same bytes, nothing left over
    if not removal_only:
        assert _generate(dataset, tmp_path / "sharded", config, "--shard", "1/2") == 0  # run again: nothing to do
        assert _hashes(tmp_path / "sharded") == full


def test_shards_from_two_machines_are_merged_on_request(dataset: Path, tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, removal_only=True)
    assert _generate(dataset, tmp_path / "full", config) == 0
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    assert _generate(dataset, a, config, "--shard", "0/2") == 0
    capsys.readouterr()
    err = _one_line_error(capsys, _generate(dataset, a, config, "--merge-shards"))
    assert "shard(s) 1/2 have not finished" in err
    assert _generate(dataset, b, config, "--shard", "1/2") == 0
    shutil.copytree(b / "generated", a / "generated", dirs_exist_ok=True)  # what rsync of the shards does
    assert _generate(dataset, a, config, "--merge-shards") == 0
    assert _hashes(a) == _hashes(tmp_path / "full")
    assert _generate(dataset, a, config, "--merge-shards") == 0
    assert "nothing to merge" in capsys.readouterr().out


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "0/0", "a/b", "1/2/3", "1"])
def test_bad_shard_specs_are_one_line(tmp_path: Path, capsys, spec: str) -> None:
    err = _one_line_error(capsys, main(["generate", str(tmp_path), "-c", "x", "--shard", spec]))
    assert "shard" in err and spec in err


def test_merge_without_shards_is_one_line(dataset: Path, tmp_path: Path, capsys) -> None:
    err = _one_line_error(capsys, _generate(dataset, tmp_path / "run", _config(tmp_path, False), "--merge-shards"))
    assert "no shards to merge" in err
