"""``comgen serve`` as a user starts it: a real process, a real port, then Ctrl-C; and one-line refusals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comgen.cli import main
from comgen.errors import ConfigError
from comgen.serve.server import bind
from tests.serve.conftest import health, png_bytes, requests, toy_images

SRC = Path(__file__).resolve().parents[2] / "src"


def test_cli_serves_until_ctrl_c(trained_run: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "comgen.cli", "serve", str(trained_run), "--port", "0",
                             "--max-batch", "2", "--threshold", "1.5"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        url = found.group(1)
        deadline = time.monotonic() + 60
        while True:
            try:
                h = health(url)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()  # type: ignore
                time.sleep(0.1)
        assert h["run"] == str(trained_run) and h["threshold"] == 1.5 and h["max_batch"] == 2
        r = requests.post(f"{url}/predict", data=png_bytes(toy_images(1)[0]), headers={"Content-Type": "image/png"},
                          timeout=60)
        assert r.status_code == 200 and r.json()["decision"] in ("pass", "fail")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nope'}: no such run directory"


def test_bad_option_is_one_line(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", str(trained_run), "--max-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-batch: must be an integer >= 1, got 0"


def test_busy_port_and_bad_host_are_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: cannot listen"):
            bind("127.0.0.1", port)
    with pytest.raises(ConfigError, match="--host: cannot resolve 'no such host'"):
        bind("no such host", 0)
