"""The core install works without the ``[diffusion]`` extra, and asking for the back-end without it is one line.

Why a subprocess: whether diffusers, transformers or peft is imported at start-up is a property of a fresh
interpreter; a ``sitecustomize`` on PYTHONPATH puts None in ``sys.modules`` for them, which is exactly what Python
does for a module that is not installed (``import`` fails, ``importlib.util.find_spec`` says None).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from comgen.errors import ConfigError
from comgen.generate.diffusion.extra import EXTRA_MODULES, MISSING_EXTRA, require_diffusion_extra

SRC = Path(__file__).resolve().parents[3] / "src"
ONE_LINE = f"error: {MISSING_EXTRA}"


def test_message_is_the_documented_one() -> None:
    assert ONE_LINE == 'error: the diffusion back-end needs the [diffusion] extra: pip install "comgen[diffusion]"'


@pytest.mark.parametrize("name", EXTRA_MODULES)
def test_any_missing_package_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError) as err:
        require_diffusion_extra()
    assert str(err.value) == MISSING_EXTRA


def test_installed_extra_passes() -> None:
    for name in EXTRA_MODULES:
        pytest.importorskip(name)
    require_diffusion_extra()


@pytest.fixture
def blocked(tmp_path: Path) -> dict[str, str]:
    """The environment of an interpreter in which the extra's packages are not installed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nfor _name in %r:\n    sys.modules[_name] = None\n" % (EXTRA_MODULES,))
    env = dict(os.environ, COMGEN_QUIET="1", OMP_NUM_THREADS="1", COMGEN_COMPILE="0")
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(SRC), env.get("PYTHONPATH", "")])
    return env


def _comgen(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comgen.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_core_install_runs_without_the_extra(blocked: dict[str, str], tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", "import diffusers"], env=blocked, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # the block really holds
    script = ("import sys, comgen, comgen.cli; "
              f"print(sorted(m for m in {EXTRA_MODULES!r} if sys.modules.get(m) is not None))")
    imported = subprocess.run([sys.executable, "-c", script], env=blocked, capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.strip() == "[]", imported.stderr

    shown = _comgen(blocked, "--help")
    assert shown.returncode == 0 and "generate" in shown.stdout and "demo" in shown.stdout, shown.stderr

    # the whole compositional path of `comgen demo --quick`: learn, generate, mask, train, predict, evaluate
    from comgen.pipeline.demo import demo_settings

    _, cfg = demo_settings(48, "screw_bag", quick=True)
    cfg.replace(n_anomalies=6, detector=cfg.detector.replace(epochs=1)).save(tmp_path / "run.yaml")
    data, run = tmp_path / "data", tmp_path / "run"
    steps = [("synth", str(data), "--size", "48", "--train", "8", "--validation", "2", "--test", "6",
              "--categories", "screw_bag"),
             ("run", str(data), "-c", "screw_bag", "--out", str(run), "--config", str(tmp_path / "run.yaml"))]
    for step in steps:
        done = _comgen(blocked, *step)
        assert done.returncode == 0, (step[0], done.stderr)
    assert "| screw_bag |" in done.stdout and (run / "eval" / "metrics.json").is_file()
    assert len((run / "generated" / "compositional" / "manifest.jsonl").read_text().splitlines()) == 6

    for argv in (("generate", str(data), "-c", "screw_bag", "--out", str(run), "--backend", "diffusion"),
                 ("learn", str(data), "-c", "screw_bag", "--backend", "diffusion", "--out", str(tmp_path / "r1")),
                 ("run", str(data), "-c", "screw_bag", "--backend", "diffusion", "--out", str(tmp_path / "r2"))):
        refused = _comgen(blocked, *argv)
        assert refused.returncode == 2 and refused.stderr.strip() == ONE_LINE, (argv[0], refused.stderr)
    assert not (run / "generated" / "diffusion").exists()
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
