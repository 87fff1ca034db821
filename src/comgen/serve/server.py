"""``comgen serve``: load the detector once, bind the port, run uvicorn until Ctrl-C.

Why bind the socket here and not in uvicorn: a busy port or a bad host must be one line naming it (uvicorn logs
and exits), and ``--port 0`` can then print the port the system chose.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from comgen.detect.predict import Detector
from comgen.errors import ConfigError
from comgen.serve.app import Predictor, create_app
from comgen.serve.config import ServeConfig


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or a one-line ``ConfigError``."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError("--host", f"cannot resolve {host!r} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{host}:{port}", f"cannot listen ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def make_server(detector: Predictor, cfg: ServeConfig, run: str | Path = "") -> uvicorn.Server:
    """A uvicorn server for ``detector`` (not started: ``server.run(sockets=[bind(...)])``)."""
    app = create_app(detector, cfg, run)
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))


def serve(run_dir: str | Path, cfg: ServeConfig, log: Callable[[str], None] = print) -> None:
    """Serve the detector of ``run_dir`` over HTTP until Ctrl-C or SIGTERM (both finish the requests in flight)."""
    detector = Detector.load(run_dir)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    threshold = detector.threshold if cfg.threshold is None else cfg.threshold
    log(f"serving {run_dir} on http://{shown}:{port} (threshold {threshold:.4f}, max batch {cfg.max_batch}, "
        f"wait {cfg.batch_wait_ms:g} ms, uploads up to {cfg.max_upload_mb:g} MB); Ctrl-C stops")
    try:
        make_server(detector, cfg, run_dir).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl-C: stopping is what was asked
        pass
    finally:
        sock.close()
    log("stopped")
