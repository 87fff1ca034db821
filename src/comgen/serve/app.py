"""The HTTP API: ``GET /health`` and ``POST /predict`` around one loaded detector.

Why every error is one JSON line: a client (or an operator reading logs) must see what was wrong with *its*
request; the server keeps serving everyone else. Decoding and PNG encoding run in threads, like the detector,
so a large image never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from comgen.errors import ComgenError
from comgen.serve.batcher import Batcher, PredictFailed, one_line
from comgen.serve.config import ServeConfig
from comgen.serve.images import decode_image
from comgen.serve.mapcodec import encode_map_png
from comgen.serve.upload import Refusal, read_image_bytes

MAP_ENCODING = "16-bit grayscale PNG; z = map_png_offset + map_png_scale * pixel"


class Predictor(Protocol):
    """What the server needs of ``detect.predict.Detector``."""

    threshold: float

    def predict(self, images: list[np.ndarray], batch_size: int | None = None,
                notice: Any = None) -> tuple[Any, Any]: ...


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _wants_png(request: Request) -> bool:
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt.lower() not in ("json", "png"):
            raise Refusal(400, f"format={fmt!r} is not one of json, png")
        return fmt.lower() == "png"
    accept = request.headers.get("accept", "").lower()
    return "image/png" in accept and "application/json" not in accept


def create_app(detector: Predictor, cfg: ServeConfig, run: str | Path = "") -> FastAPI:
    """The FastAPI app serving ``detector`` with ``cfg``'s batching, upload limit and threshold."""
    threshold = float(detector.threshold if cfg.threshold is None else cfg.threshold)
    batcher = Batcher(lambda images: detector.predict(images, batch_size=len(images), notice=None),
                      max_batch=cfg.max_batch, wait_s=cfg.batch_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="comgen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(Refusal)
    async def _refused(_: Request, exc: Refusal) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(ComgenError)
    async def _comgen(_: Request, exc: ComgenError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return _error(422, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail} "
                                           "(the API is GET /health and POST /predict)")
        return _error(exc.status_code, exc.detail)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {one_line(exc)}")

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the worker runs; 503 otherwise, so a load balancer stops sending requests here."""
        dcfg = getattr(detector, "cfg", None)
        body = {"status": "ok" if batcher.running else "worker stopped", "run": str(run), "threshold": threshold,
                "threshold_source": "run" if cfg.threshold is None else "--threshold",
                "image_size": getattr(dcfg, "image_size", None), "device": str(getattr(detector, "device", "")),
                "max_batch": cfg.max_batch, "batch_wait_ms": cfg.batch_wait_ms, "max_upload_mb": cfg.max_upload_mb,
                **batcher.stats.to_dict()}
        return JSONResponse(body, status_code=200 if batcher.running else 503)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        png = _wants_png(request)
        data, name = await read_image_bytes(request, cfg.max_upload_bytes)
        image = await asyncio.to_thread(decode_image, data, name)
        try:
            score, amap = await batcher.submit(image)
        except PredictFailed as exc:
            return _error(400 if exc.client_fault else 500, f"prediction failed: {exc}")
        map_png, scale, offset = await asyncio.to_thread(encode_map_png, amap)
        decision = "fail" if score > threshold else "pass"
        if png:
            return Response(map_png, media_type="image/png", headers={
                "X-Score": repr(score), "X-Decision": decision, "X-Threshold": repr(threshold),
                "X-Map-Scale": repr(scale), "X-Map-Offset": repr(offset), "X-Map-Max-Error": repr(scale / 2),
                "X-Map-Encoding": MAP_ENCODING})
        return JSONResponse({"score": score, "decision": decision, "threshold": threshold,
                             "width": int(amap.shape[1]), "height": int(amap.shape[0]),
                             "map_png": base64.b64encode(map_png).decode("ascii"), "map_png_scale": scale,
                             "map_png_offset": offset, "map_png_max_error": scale / 2, "map_encoding": MAP_ENCODING})

    return app
