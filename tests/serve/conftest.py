"""Fixtures of the server tests: the detect tests' tiny trained run, and a live uvicorn server in a thread.

Why a live server: batching, streaming limits and error isolation happen in uvicorn's event loop and on the wire;
an in-process test client would skip exactly the parts that can break.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.detect import conftest as detect_fixtures
from tests.detect.conftest import toy_image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

trained_run = detect_fixtures.trained_run  # the shared toy detector, trained once per worker

def png_bytes(image: np.ndarray) -> bytes:
    """RGB uint8 (or gray) image as PNG bytes."""
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()

def toy_images(n: int, seed: int = 7, kinds: tuple[str, ...] = ("good", "missing", "extra")) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [toy_image(rng, kind=kinds[i % len(kinds)])[0] for i in range(n)]

@contextmanager
def live_server(predictor: object, **settings: object) -> Iterator[tuple[str, object]]:
    """Serve ``predictor`` on a free localhost port in a thread; yields (base URL, uvicorn server); stops it after."""
    from comgen.serve.config import ServeConfig
    from comgen.serve.server import bind, make_server

    cfg = ServeConfig(host="127.0.0.1", port=0, **settings)  # type: ignore[arg-type]
    sock = bind(cfg.host, 0)
    server = make_server(predictor, cfg, "test-run")  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

@pytest.fixture(scope="module")
def detector(trained_run: Path):  # noqa: ANN201
    from comgen.detect.predict import Detector

    return Detector.load(trained_run, device="cpu")

@pytest.fixture(scope="module")
def server(detector) -> Iterator[str]:  # noqa: ANN001
    """The tiny detector served with a long batch window, so requests sent together surely share a batch."""
    with live_server(detector, max_batch=4, batch_wait_ms=300, max_upload_mb=1) as (url, _):
        yield url

def health(url: str) -> dict:
    r = requests.get(f"{url}/health", timeout=30)
    assert r.status_code == 200
    return r.json()
