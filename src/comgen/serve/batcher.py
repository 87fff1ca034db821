"""Micro-batching: requests that arrive together share one detector call, run off the event loop.

Why: the detector's cost per image falls with the batch (one backbone pass, one bank query), and a server sees
bursts. One worker task takes the first waiting request, gathers up to ``max_batch`` within ``wait_s``, runs the
batch in a thread (the event loop keeps accepting and answering meanwhile) and resolves each request's future.
A failing batch is retried image by image, so a failure reaches only the requests that cause it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from comgen.errors import InputError

#: the detector call: images -> (scores [N], maps [N,H,W] or a list of [H,W])
PredictFn = Callable[[list[np.ndarray]], tuple[Any, Any]]

log = logging.getLogger("comgen.serve")


class PredictFailed(Exception):
    """A detector call failed on a request's image; ``client_fault`` when the image itself was refused."""

    def __init__(self, message: str, client_fault: bool = False) -> None:
        super().__init__(message)
        self.client_fault = client_fault


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, short enough for a JSON error or a log line."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:limit]}" if text else exc.__class__.__name__


@dataclass
class _Job:
    image: np.ndarray
    future: asyncio.Future[tuple[float, np.ndarray]]


@dataclass
class BatchStats:
    """What the worker did: detector calls by batch size, images answered and failed."""

    batch_sizes: Counter[int] = field(default_factory=Counter)
    images: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}, "images": self.images,
                "failed": self.failed}


class Batcher:
    """The queue and its one worker task; ``start`` and ``stop`` run inside the server's event loop."""

    def __init__(self, predict: PredictFn, max_batch: int = 8, wait_s: float = 0.005) -> None:
        self.predict = predict
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._work(), name="comgen-serve-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(PredictFailed("server is shutting down"))

    async def submit(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """(calibrated score, [H,W] map at the image's size) of one image, batched with its neighbours."""
        if self._queue is None or not self.running:
            raise PredictFailed("the prediction worker is not running")
        job = _Job(image, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _gather(self) -> list[_Job]:
        """The next batch: the first waiting job and whoever arrives within ``wait_s`` (at most ``max_batch``)."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - loop.time()
            try:
                batch.append(self._queue.get_nowait() if left <= 0 else
                             await asyncio.wait_for(self._queue.get(), left))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        return [job for job in batch if not job.future.done()]  # a client that gave up is not computed

    async def _work(self) -> None:
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                await self._run(batch)
            except Exception as exc:  # never let the worker die: fail this batch and go on
                log.error("prediction worker: %s", one_line(exc))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(PredictFailed(one_line(exc)))

    async def _run(self, batch: list[_Job]) -> None:
        try:
            results = await asyncio.to_thread(self._call, [job.image for job in batch])
        except Exception as exc:
            if len(batch) == 1:
                self.stats.failed += 1
                log.warning("prediction failed for one image: %s", one_line(exc))
                if not batch[0].future.done():
                    batch[0].future.set_exception(_failure(exc))
                return
            for job in batch:  # find the culprit(s): the others still get their answers
                await self._run([job])
            return
        self.stats.batch_sizes[len(batch)] += 1
        self.stats.images += len(batch)
        for job, result in zip(batch, results):
            if not job.future.done():
                job.future.set_result(result)

    def _call(self, images: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        """The detector on one batch, its answer checked: one finite score and one map of the image's size each."""
        scores, maps = self.predict(images)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        maps_list: Sequence[np.ndarray] = list(maps)
        if len(scores) != len(images) or len(maps_list) != len(images):
            raise RuntimeError(f"detector returned {len(scores)} score(s) and {len(maps_list)} map(s) "
                               f"for {len(images)} image(s)")
        out = []
        for img, score, amap in zip(images, scores, maps_list):
            amap = np.asarray(amap, dtype=np.float32)
            if amap.shape != img.shape[:2]:
                raise RuntimeError(f"detector returned a {amap.shape} map for a {img.shape[:2]} image")
            if not np.isfinite(score) or not np.isfinite(amap).all():
                raise RuntimeError("detector returned NaN or inf")
            out.append((float(score), amap))
        return out


def _failure(exc: BaseException) -> PredictFailed:
    return PredictFailed(str(exc) if isinstance(exc, InputError) else one_line(exc),
                         client_fault=isinstance(exc, InputError))
