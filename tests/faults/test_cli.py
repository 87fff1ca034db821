"""The command line's exit status is the command's: an interrupted command never looks like a finished one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from comgen.cli import main

from .test_paths import CAT, tiny_benchmark


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_benchmark(tmp_path_factory.mktemp("cli") / "data")


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_exits_130_with_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    import comgen.pipeline.suite as suite

    monkeypatch.setattr(suite, "run_suite", _interrupt)
    assert main(["run", str(data), "-c", CAT, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]

    def exit_3(*args: object, **kwargs: object) -> None:
        raise typer.Exit(3)

    monkeypatch.setattr(suite, "run_suite", exit_3)
    assert main(["run", str(data), "-c", CAT, "--out", str(tmp_path / "run")]) == 3


def test_module_entry_exits_with_the_returned_status(data: Path, tmp_path: Path) -> None:
    """``python -m comgen.cli`` (and the ``comgen`` console script, which also calls ``sys.exit(main())``)."""
    script = ("import runpy, sys\n"
              "import comgen.pipeline.suite as suite\n"
              "def interrupt(*a, **k):\n"
              "    raise KeyboardInterrupt\n"
              "suite.run_suite = interrupt\n"
              f"sys.argv = ['comgen', 'run', {str(data)!r}, '-c', {CAT!r}, '--out', {str(tmp_path / 'run')!r}]\n"
              "runpy.run_module('comgen.cli', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "interrupted" in proc.stderr



@pytest.mark.parametrize("errno_, why", [(28, "No space left on device"), (30, "Read-only file system")])
def test_a_full_or_read_only_disk_is_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture, errno_: int, why: str) -> None:
    import comgen.pipeline.suite as suite

    out = tmp_path / "run"

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno_, why, str(out / "config.yaml"))

    monkeypatch.setattr(suite, "run_suite", refuse)
    assert main(["run", str(data), "-c", CAT, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out / 'config.yaml'}: {why}"]
