from __future__ import annotations

from pathlib import Path

from comgen.pipeline.stages import StageRunner
from comgen.rundir import RunDir


def _run_all(root: Path, hashes: dict[str, str], calls: list[str]) -> list[bool]:
    run = RunDir.create(root, root, "cat")
    runner = StageRunner(run, log=lambda _msg: None)
    for name in ("learn", "generate", "train"):
        runner.stage(name, hashes[name], lambda name=name: calls.append(name) or {"n": 1})
    return [r.skipped for r in runner.results]


def test_finished_stages_are_skipped_and_changes_cascade(tmp_path: Path) -> None:
    calls: list[str] = []
    hashes = {"learn": "a", "generate": "b", "train": "c"}
    assert _run_all(tmp_path, hashes, calls) == [False, False, False]
    assert _run_all(tmp_path, hashes, calls) == [True, True, True]
    hashes["generate"] = "b2"
    assert _run_all(tmp_path, hashes, calls) == [True, False, False]
    assert calls == ["learn", "generate", "train", "generate", "train"]


def test_interrupted_stage_reruns(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, tmp_path, "cat")
    runner = StageRunner(run, log=lambda _msg: None)
    runner.stage("learn", "a", lambda: {})

    def boom() -> dict:
        raise KeyboardInterrupt

    try:
        runner.stage("generate", "b", boom)
    except KeyboardInterrupt:
        pass
    again = StageRunner(run, log=lambda _msg: None)
    assert again.stage("learn", "a", lambda: {}).skipped
    assert not again.stage("generate", "b", lambda: {}).skipped


def test_learn_size_lets_the_learner_segment_finer_than_the_detector() -> None:
    import pytest

    from comgen.errors import ConfigError
    from comgen.pipeline.config import RunConfig

    same = RunConfig(image_size=128).resolved()
    finer = RunConfig(image_size=128, learn_size=256).resolved()
    assert same.learn.image_size == 128 and finer.learn.image_size == 256
    assert finer.detector.image_size == 128 and finer.generate.image_size == 128
    with pytest.raises(ConfigError, match="learn_size"):
        RunConfig(learn_size=8)
