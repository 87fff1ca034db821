"""Writer: layout, manifest lines, resume == uninterrupted, sharding, config guard, reader helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from comgen.data.generated import (
    MANIFEST,
    REVISION_FILE,
    load_gate,
    load_item,
    load_truth,
    read_generated,
    saved_revision,
)
from comgen.errors import ArtifactError, ConfigError, InputError
from comgen.generate.baselines import CutPasteGenerator
from comgen.generate.config import GenerateConfig
from comgen.generate.registry import generator_revision
from comgen.generate.writer import shard_blocks, write_generated
from comgen.io import atomic_write_json
from comgen.records import Anomaly, EditSpec

SIZE = 32


def _generator() -> CutPasteGenerator:
    rng = np.random.default_rng(0)
    imgs = np.stack([cv2.GaussianBlur((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8), (5, 5), 1.0)
                     for _ in range(3)])
    gen = CutPasteGenerator(image_size=SIZE)
    gen.fit_images(imgs, [f"/data/train/good/{i:03d}.png" for i in range(3)])
    return gen


def _cfg(**kw) -> GenerateConfig:
    return GenerateConfig(**{"backend": "cutpaste", "n": 11, "seed": 5, "image_size": SIZE, "chunk": 4,
                             "preview": 4, **kw})


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))
            if p.name != "preview.png"}


class Crashing:
    """Wraps a generator and raises after ``after`` anomalies in total, like a killed process."""

    def __init__(self, inner, after: int) -> None:
        self.inner, self.after, self.name, self.count = inner, after, inner.name, 0

    def fit(self, train, run=None) -> None:  # pragma: no cover - protocol shape only
        self.inner.fit(train, run)

    def generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        for a in self.inner.generate(n, rng):
            if self.count >= self.after:
                raise KeyboardInterrupt
            self.count += 1
            yield a


def test_layout_and_manifest_lines(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    summary = write_generated(_generator(), out, _cfg())
    assert summary.written == 11 and summary.skipped == 0 and not summary.missing
    lines = read_generated(out)
    assert [ln["id"] for ln in lines] == [f"{i:06d}" for i in range(11)]
    line = lines[0]
    for key in ("id", "file", "mask", "kind", "category", "classes", "tokens", "prompt", "params", "density",
                "source", "backend", "gate"):
        assert key in line
    assert line["file"] == "images/000000.png" and line["mask"] == "masks/000000.png"
    assert line["category"] == "structural" and line["backend"] == "cutpaste" and line["gate"] is None
    assert line["kind"] in ("patch", "scar") and line["source"].startswith("/data/train/good/")
    image, mask = load_item(out, line)
    assert image.shape == (SIZE, SIZE, 3) and mask.dtype == bool and mask.sum() == line["area"] > 0
    raw = cv2.imread(str(out / line["mask"]), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(raw)) <= {0, 255}
    assert GenerateConfig.load(out / "config.yaml").n == 11
    preview = cv2.imread(str(out / "preview.png"))
    assert preview is not None and preview.shape[1] == 4 * 130
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_resume_gives_identical_output(tmp_path: Path) -> None:
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    write_generated(_generator(), full, _cfg())
    with pytest.raises(KeyboardInterrupt):
        write_generated(Crashing(_generator(), after=6), resumed, _cfg())
    assert len(read_generated(resumed)) == 6
    with open(resumed / MANIFEST, "a") as fh:  # a torn line from the crash
        fh.write('{"id": "0000')
    summary = write_generated(_generator(), resumed, _cfg())
    assert summary.skipped == 6 and summary.written == 5
    assert _files(full) == _files(resumed)
    assert (full / MANIFEST).read_text() == (resumed / MANIFEST).read_text()
    again = write_generated(_generator(), resumed, _cfg())
    assert again.written == 0 and again.skipped == 11


def test_shards_cover_disjoint_indices_and_merge(tmp_path: Path) -> None:
    blocks = [shard_blocks(11, 4, (i, 2)) for i in range(2)]
    idx = [{i for blk in b for i in blk} for b in blocks]
    assert idx[0].isdisjoint(idx[1]) and idx[0] | idx[1] == set(range(11))
    out, full = tmp_path / "sharded", tmp_path / "full"
    write_generated(_generator(), out, _cfg(shard="1/2"))
    assert not (out / MANIFEST).exists()  # shard 0 has not finished yet
    part = read_generated(out)
    assert {ln["index"] for ln in part} == idx[1]
    write_generated(_generator(), out, _cfg(shard="0/2"))
    merged = [json.loads(x) for x in (out / MANIFEST).read_text().splitlines()]
    assert [ln["index"] for ln in merged] == list(range(11))
    assert not list(out.glob("manifest.shard-*")) and not list(out.glob(".done.*"))  # the merge tidies up
    write_generated(_generator(), full, _cfg())
    assert _files(out) == _files(full)  # sharding changes who writes an index, never what is written
    assert (out / MANIFEST).read_bytes() == (full / MANIFEST).read_bytes()


def test_config_guard_and_bad_shard(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    write_generated(_generator(), out, _cfg(n=3))
    with pytest.raises(ConfigError, match="seed"):
        write_generated(_generator(), out, _cfg(n=3, seed=6))
    write_generated(_generator(), out, _cfg(n=5))  # extending n is allowed
    assert len(read_generated(out)) == 5
    with pytest.raises(ConfigError, match="i/n"):
        _cfg(shard="2")
    with pytest.raises(ConfigError, match="0 <= i < n"):
        _cfg(shard="2/2")


class WithExtras:
    """A generator giving a soft gate and synth truth labels, and one broken anomaly on demand."""

    name = "toy"

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken

    def fit(self, train, run=None) -> None:
        pass

    def generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        for _ in range(n):
            img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            mask = np.zeros((SIZE, SIZE) if not self.broken else (SIZE, SIZE + 1), bool)
            mask[4:12, 4:12] = True
            gate = np.clip(rng.random((SIZE, SIZE)), 0, 1).astype(np.float32)
            truth = np.full((SIZE, SIZE), 3, np.uint8)
            yield Anomaly(img, mask, EditSpec("add", [0], [2], {"dy": np.float32(1.5)}), source="s.png",
                          density=np.float64(-12.5), backend="toy", kind="logical",
                          extra={"gate": gate, "truth_labels": truth, "prompt": "a photo of <c2> <c2>"})


def test_gates_truth_and_reader_errors(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    write_generated(WithExtras(), out, _cfg(backend="compositional", n=2))
    line = read_generated(out)[0]
    assert line["gate"] == "gates/000000.png" and line["truth"] == "truth/000000.png"
    assert line["tokens"] == ["<c2>"] and line["prompt"] == "a photo of <c2> <c2>"
    assert line["density"] == -12.5 and line["params"] == {"dy": 1.5} and line["category"] == "logical"
    gate = load_gate(out, line)
    assert gate.dtype == np.float32 and 0.0 <= gate.min() and gate.max() <= 1.0 and gate.std() > 0.1
    assert (load_truth(out, line) == 3).all()
    (out / line["file"]).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_item(out, line)
    with pytest.raises(ArtifactError, match="comgen generate"):
        read_generated(tmp_path / "nothing")
    with pytest.raises(InputError, match="mask is"):
        write_generated(WithExtras(broken=True), tmp_path / "bad", _cfg(backend="compositional", n=1))


class Empty:
    name = "empty"

    def fit(self, train, run=None) -> None:
        pass

    def generate(self, n: int, rng: np.random.Generator) -> Iterator[Anomaly]:
        return iter(())


def test_generator_that_yields_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="produced none"):
        write_generated(Empty(), tmp_path / "gen", _cfg(n=2))


class Bounded(Empty):
    """A generator that can make only ``cap`` unique anomalies."""

    name = "bounded"

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def capacity(self) -> float:
        return float(self.cap)


def test_more_than_capacity_is_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    with pytest.raises(InputError, match="asked for 5 unique anomalies but only 3"):
        write_generated(Bounded(3), out, _cfg(n=5))
    assert not out.exists()


def test_saved_config_holds_the_backends_defaults_so_a_changed_default_is_refused(tmp_path) -> None:
    """A set made by code with other defaults (here: one edit kind fewer) must not be resumed by this code."""
    from comgen.errors import ConfigError
    from comgen.generate.config import GenerateConfig
    from comgen.generate.writer import _check_config
    from comgen.records import ALL_EDITS, DEFAULT_EDITS

    cfg = GenerateConfig(backend="compositional")
    assert cfg.to_dict()["compositional"]["edit_kinds"] == list(DEFAULT_EDITS)
    assert GenerateConfig.from_dict(cfg.to_dict()).hash() == cfg.hash()
    older = cfg.to_dict()
    older["compositional"]["edit_kinds"] = list(ALL_EDITS)  # the default before revision 3
    GenerateConfig.from_dict(older).save(tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="compositional"):
        _check_config(tmp_path, cfg)
    cfg.save(tmp_path / "config.yaml")
    atomic_write_json(tmp_path / REVISION_FILE, {"backend": "compositional",
                                                 "revision": generator_revision("compositional")})
    _check_config(tmp_path, cfg)  # the same code and settings resume


def test_a_set_made_by_an_older_generator_revision_is_refused(tmp_path: Path) -> None:
    """Same config, other code: a folder written before the compositional back-end's revision 2 (no revision
    file) must not be resumed, or its old anomalies would pass for the new generator's."""
    out = tmp_path / "gen"
    write_generated(WithExtras(), out, _cfg(backend="compositional", n=2))
    revision = generator_revision("compositional")
    assert json.loads((out / REVISION_FILE).read_text())["revision"] == revision >= 3
    write_generated(WithExtras(), out, _cfg(backend="compositional", n=2))  # same revision: resumes
    (out / REVISION_FILE).unlink()  # as written by comgen before revisions were recorded
    with pytest.raises(ConfigError, match=f"revision 1.*revision {revision}"):
        write_generated(WithExtras(), out, _cfg(backend="compositional", n=2))
    assert saved_revision(tmp_path / "never_written") == 1


@pytest.mark.parametrize("text, problem", [("compositional:\n  colour_ratio: 0.3\n", "colour_ratio"),
                                           ("compositional:\n  logical_ratio: 3\n", "logical_ratio"),
                                           ("n: 0\n", "generate.n")])
def test_a_bad_generate_config_file_is_named_in_one_line(tmp_path, text, problem) -> None:
    from comgen.errors import ConfigError
    from comgen.generate.config import GenerateConfig

    path = tmp_path / "gen.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as info:
        GenerateConfig.load(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
