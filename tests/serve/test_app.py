"""The HTTP API on a live uvicorn server: answers equal ``Detector.predict``, batching, and every refusal.

Each test talks real HTTP (``requests``, or a raw socket where the test is about the wire) to a server running
in a thread, and checks that the server still answers ``/health`` afterwards.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest

from comgen.serve.mapcodec import decode_map_png
from tests.serve.conftest import health, live_server, png_bytes, requests, toy_images


def _reference(detector, image: np.ndarray) -> tuple[float, np.ndarray]:  # noqa: ANN001
    scores, maps = detector.predict([image], notice=None)
    return float(scores[0]), np.asarray(maps[0], np.float32)


def _post(url: str, image: np.ndarray, **kw: object) -> requests.Response:
    return requests.post(f"{url}/predict", files={"image": ("x.png", png_bytes(image), "image/png")}, timeout=60,
                         **kw)


def _post_together(url: str, images: list[np.ndarray]) -> list[requests.Response]:
    """Every image posted by its own client thread, all released at once (so the server can batch them)."""
    barrier = threading.Barrier(len(images))

    def send(img: np.ndarray) -> requests.Response:
        barrier.wait()
        return _post(url, img)

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(send, images))


def _assert_same(body: dict, detector, image: np.ndarray) -> None:  # noqa: ANN001
    score, amap = _reference(detector, image)
    assert body["score"] == pytest.approx(score, abs=1e-3)
    got = decode_map_png(base64.b64decode(body["map_png"]), body["map_png_scale"], body["map_png_offset"])
    assert got.shape == image.shape[:2] == (body["height"], body["width"])
    # the 16-bit code's half step; below 1e-3 whenever the map spans less than ~130 z
    assert body["map_png_max_error"] == pytest.approx(body["map_png_scale"] / 2)
    err = np.abs(got - amap).max()
    assert err <= body["map_png_max_error"] + 1e-6 * (1 + np.abs(amap).max())
    if np.ptp(amap) < 100:
        assert err < 1e-3
    assert body["decision"] == ("fail" if body["score"] > body["threshold"] else "pass")


def test_health_reports_the_run_and_the_settings(server: str, detector) -> None:  # noqa: ANN001
    h = health(server)
    assert h["status"] == "ok" and h["run"] == "test-run" and h["threshold_source"] == "run"
    assert h["threshold"] == pytest.approx(detector.threshold)
    assert (h["image_size"], h["max_batch"], h["batch_wait_ms"], h["max_upload_mb"]) == (64, 4, 300, 1)


def test_predict_equals_the_detector_at_the_original_size(server: str, detector) -> None:  # noqa: ANN001
    for kind in ("good", "missing"):
        img = cv2.resize(toy_images(1, kinds=(kind,))[0], (80, 48))  # not the working size, not square
        r = _post(server, img)
        assert r.status_code == 200, r.text
        _assert_same(r.json(), detector, img)
    assert np.ptp(_reference(detector, cv2.resize(toy_images(1, kinds=("good",))[0], (80, 48)))[1]) < 100


def test_raw_body_and_png_answer(server: str, detector) -> None:  # noqa: ANN001
    img = toy_images(1, seed=3)[0]
    score, amap = _reference(detector, img)
    for kw in ({"params": {"format": "png"}}, {"headers": {"Accept": "image/png"}}):
        headers = {"Content-Type": "image/png", **kw.get("headers", {})}  # type: ignore[dict-item]
        r = requests.post(f"{server}/predict", data=png_bytes(img), headers=headers, params=kw.get("params"),
                          timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        assert float(r.headers["X-Score"]) == pytest.approx(score, abs=1e-3)
        assert r.headers["X-Decision"] == ("fail" if score > detector.threshold else "pass")
        scale = float(r.headers["X-Map-Scale"])
        assert float(r.headers["X-Map-Max-Error"]) == pytest.approx(scale / 2)
        got = decode_map_png(r.content, scale, float(r.headers["X-Map-Offset"]))
        assert np.abs(got - amap).max() <= scale / 2 + 1e-6 * (1 + np.abs(amap).max())


def test_concurrent_requests_are_batched_and_answered_as_alone(server: str, detector) -> None:  # noqa: ANN001
    images = toy_images(4, seed=11)
    before = health(server)["batch_sizes"]
    answers = _post_together(server, images)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    after = health(server)["batch_sizes"]
    new = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
    assert sum(k * v for k, v in new.items()) == len(images)
    assert max(new) > 1, f"no request shared a batch: {new}"
    for r, img in zip(answers, images):
        _assert_same(r.json(), detector, img)


def _one_line_error(r: requests.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert words in msg and "\n" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("send,status,words", [
    (lambda u: requests.post(f"{u}/predict", files={"image": ("bad.png", b"garbage", "image/png")}, timeout=30),
     400, "bad.png: corrupt or unsupported image"),
    (lambda u: requests.post(f"{u}/predict", data=b"\x89PNG\r\n\x1a\ntruncated", headers={"Content-Type": "image/png"},
                             timeout=30), 400, "cannot decode"),
    (lambda u: requests.post(f"{u}/predict", data=b"hello", headers={"Content-Type": "text/plain"}, timeout=30),
     415, "unsupported content type 'text/plain'"),
    (lambda u: requests.post(f"{u}/predict", json={"image": "x"}, timeout=30), 415, "application/json"),
    (lambda u: requests.post(f"{u}/predict", files={"picture": ("x.png", b"x", "image/png")}, timeout=30),
     422, "field 'image' is missing"),
    (lambda u: requests.post(f"{u}/predict", data={"image": "text"}, files={"other": ("a", b"b")}, timeout=30),
     422, "is text, not a file"),
    (lambda u: requests.post(f"{u}/predict", data=b"--x\r\nbroken", timeout=30,
                             headers={"Content-Type": "multipart/form-data"}), 400, "malformed multipart"),
    (lambda u: requests.post(f"{u}/predict?format=xml", files={"image": ("x.png", b"x")}, timeout=30),
     400, "format='xml'"),
    (lambda u: requests.get(f"{u}/predict", timeout=30), 405, "GET /predict"),
    (lambda u: requests.get(f"{u}/nothing", timeout=30), 404, "GET /nothing"),
], ids=["corrupt-file", "corrupt-raw", "text", "json", "no-field", "text-field", "no-boundary", "format", "method",
        "path"])
def test_bad_requests_get_one_line_4xx_and_the_server_stays_up(server: str, send, status: int,  # noqa: ANN001
                                                               words: str) -> None:
    _one_line_error(send(server), status, words)
    assert health(server)["status"] == "ok"


def _raw(url: str, head: bytes, chunks: list[bytes] = ()) -> bytes:
    """Send ``head`` and body ``chunks`` on a raw connection, then read what the server answers."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head)
        for c in chunks:
            s.sendall(c)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            got = s.recv(65536)
            if not got:
                break
            answer += got
        return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_oversized_upload_refused_by_its_declared_length_before_the_body(server: str) -> None:
    answer = _raw(server, b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                          b"Content-Length: 5000000\r\n\r\n")  # and not one byte of the body
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than the server's limit of 1 MB" in answer
    assert health(server)["status"] == "ok"


FORM_START = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
              b"Content-Type: image/png\r\n\r\n")


@pytest.mark.parametrize("ctype,start", [(b"image/png", b""), (b"multipart/form-data; boundary=b", FORM_START)],
                         ids=["raw", "multipart"])
def test_oversized_chunked_upload_refused_while_it_arrives(server: str, ctype: bytes, start: bytes) -> None:
    """No length declared: the server counts as the chunks come and answers before the body has ended."""
    part = b"\0" * 65536
    chunks = [b"%x\r\n" % len(c) + c + b"\r\n" for c in [start + part] + [part] * 16]  # 1.06 MB, never ended
    answer = _raw(server, b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: " + ctype +
                  b"\r\nTransfer-Encoding: chunked\r\n\r\n", chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"larger than the server's limit of 1 MB" in answer
    assert health(server)["status"] == "ok"


class Flaky:
    """The detector, except that any batch holding a 37-px-wide image raises (a crash inside the worker)."""

    def __init__(self, detector) -> None:  # noqa: ANN001
        self.detector, self.threshold, self.cfg = detector, detector.threshold, detector.cfg

    def predict(self, images: list[np.ndarray], batch_size: int | None = None, notice: object = None):  # noqa: ANN201
        if any(im.shape[1] == 37 for im in images):
            raise RuntimeError("simulated failure\nwith a second line")
        return self.detector.predict(images, batch_size=batch_size, notice=notice)


def test_a_crash_inside_the_worker_fails_only_its_request(detector) -> None:  # noqa: ANN001
    images = toy_images(3, seed=5)
    images[1] = cv2.resize(images[1], (37, 40))
    with live_server(Flaky(detector), max_batch=4, batch_wait_ms=300, threshold=-1e9) as (url, _):
        answers = _post_together(url, images)
        _one_line_error(answers[1], 500, "prediction failed: RuntimeError: simulated failure")
        for k in (0, 2):
            assert answers[k].status_code == 200, answers[k].text
            body = answers[k].json()
            assert body["decision"] == "fail" and body["threshold"] == -1e9  # --threshold overrides the run's
            _assert_same(body, detector, images[k])
        h = health(url)
        assert h["status"] == "ok" and h["failed"] == 1 and h["threshold_source"] == "--threshold"
        assert _post(url, images[0]).status_code == 200  # and it keeps serving


def test_health_says_503_when_the_worker_is_gone(detector) -> None:  # noqa: ANN001
    with live_server(detector) as (url, server):
        task = server.config.app.state.batcher._task  # the FastAPI app as handed to uvicorn
        task.get_loop().call_soon_threadsafe(task.cancel)
        deadline = time.monotonic() + 10
        while not task.done():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = requests.get(f"{url}/health", timeout=30)
        assert r.status_code == 503 and r.json()["status"] == "worker stopped"
        _one_line_error(_post(url, toy_images(1)[0]), 500, "prediction failed: the prediction worker is not running")
