"""The torch.compile switch: off means eager, a compiler failure falls back once, compiled agrees with eager."""

from __future__ import annotations

import pytest
import torch

import comgen.compiled as compiled
from comgen.features.memory import align_features


def test_disabled_never_calls_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMGEN_COMPILE", "0")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled although COMGEN_COMPILE=0"))

    def double(x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    assert torch.equal(compiled.maybe_compiled(double)(torch.ones(3)), torch.full((3,), 2.0))


def test_eager_block_skips_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMGEN_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled inside an eager() block"))

    def triple(x: torch.Tensor) -> torch.Tensor:
        return 3 * x

    with compiled.eager():
        assert torch.equal(compiled.maybe_compiled(triple)(torch.ones(2)), torch.full((2,), 3.0))
    assert compiled.compile_enabled()


def test_a_compiler_failure_falls_back_to_eager_with_one_notice(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COMGEN_COMPILE", "1")
    monkeypatch.setattr(compiled, "_failed", set())  # this test's failure must not disable other tests' compiles
    calls = []

    def broken(*a: object, **k: object):  # noqa: ANN202 - stands in for torch.compile
        def run(*args: object) -> None:
            calls.append(args)
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)

    def plus_one(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    fn = compiled.maybe_compiled(plus_one, "test.plus_one")
    assert compiled.runs_compiled(fn) and not compiled.runs_compiled(plus_one)
    assert torch.equal(fn(torch.zeros(2)), torch.ones(2))
    assert not compiled.runs_compiled(fn)  # callers now prepare the eager path's inputs
    assert torch.equal(fn(torch.ones(2)), torch.full((2,), 2.0))
    assert len(calls) == 1  # not retried after the first failure
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: running test.plus_one without torch.compile (no C++ compiler found); "
                   "set COMGEN_COMPILE=0 to skip the attempt"]


@pytest.mark.parametrize("window,metric", [(1, "cosine"), (2, "l2")])
def test_compiled_alignment_matches_eager(monkeypatch: pytest.MonkeyPatch, window: int, metric: str) -> None:
    g = torch.Generator().manual_seed(window)
    q = torch.randn(2, 8, 10, 12, generator=g)
    refs = torch.randn(2, 3, 8, 10, 12, generator=g).half()  # as the bank stores them
    monkeypatch.setenv("COMGEN_COMPILE", "0")
    eager = align_features(q, refs, window, metric)
    monkeypatch.setenv("COMGEN_COMPILE", "1")
    fused = align_features(q, refs, window, metric)
    assert not {"comgen.features.memory._best_offsets", "comgen.features.memory._select_offsets"} & compiled._failed
    assert fused.dtype == torch.float32 and torch.equal(fused, eager)
