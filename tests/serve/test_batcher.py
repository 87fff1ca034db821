"""The batcher alone, with stand-in detectors: gathering, order of answers, and failures kept to their request."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from comgen.errors import InputError
from comgen.serve.batcher import Batcher, PredictFailed


def _img(value: int, width: int = 4) -> np.ndarray:
    return np.full((3, width, 3), value, np.uint8)


class Echo:
    """Score = the image's first pixel; map = that value everywhere. Records the batch sizes and the thread."""

    def __init__(self, fail_on: int | None = None, error: type[Exception] = RuntimeError) -> None:
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.fail_on, self.error = fail_on, error

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        self.calls.append(len(images))
        self.threads.add(threading.get_ident())
        if self.fail_on is not None and any(int(im[0, 0, 0]) == self.fail_on for im in images):
            raise self.error(f"boom on {self.fail_on}\nsecond line")
        return (np.array([float(im[0, 0, 0]) for im in images], np.float32),
                [np.full(im.shape[:2], float(im[0, 0, 0]), np.float32) for im in images])


def _run(predict: object, values: list[int], max_batch: int = 4, wait_s: float = 0.2) -> tuple[list, Batcher]:
    async def main() -> tuple[list, Batcher]:
        b = Batcher(predict, max_batch=max_batch, wait_s=wait_s)  # type: ignore[arg-type]
        await b.start()
        try:
            res = await asyncio.gather(*(b.submit(_img(v)) for v in values), return_exceptions=True)
            assert b.running  # the worker outlives every failure
        finally:
            await b.stop()
        return res, b
    return asyncio.run(main())


def test_requests_arriving_together_share_batches_and_get_their_own_answers() -> None:
    echo = Echo()
    res, b = _run(echo, list(range(10)), max_batch=4)
    assert echo.calls == [4, 4, 2]
    assert [r[0] for r in res] == list(range(10))
    assert all(np.array_equal(m, np.full((3, 4), v, np.float32)) for v, (_, m) in enumerate(res))
    assert b.stats.batch_sizes == {4: 2, 2: 1} and b.stats.images == 10
    assert threading.get_ident() not in echo.threads  # the detector ran off the event loop's thread


def test_a_lone_request_waits_at_most_the_window() -> None:
    echo = Echo()
    res, _ = _run(echo, [5], wait_s=0.05)
    assert echo.calls == [1] and res[0][0] == 5.0


def test_a_failing_image_fails_only_its_own_request() -> None:
    echo = Echo(fail_on=2)
    res, b = _run(echo, [1, 2, 3], max_batch=4)
    assert isinstance(res[1], PredictFailed) and not res[1].client_fault
    assert str(res[1]) == "RuntimeError: boom on 2"  # one line
    assert res[0][0] == 1.0 and res[2][0] == 3.0
    assert echo.calls == [3, 1, 1, 1] and b.stats.failed == 1


def test_an_input_error_is_the_clients_fault() -> None:
    res, _ = _run(Echo(fail_on=9, error=lambda m: InputError("image", m.splitlines()[0])), [9])
    assert isinstance(res[0], PredictFailed) and res[0].client_fault and str(res[0]) == "image: boom on 9"


@pytest.mark.parametrize("wrong", [
    lambda ims: (np.zeros(len(ims) + 1), [np.zeros(i.shape[:2]) for i in ims]),     # too many scores
    lambda ims: (np.zeros(len(ims)), [np.zeros((2, 2)) for _ in ims]),               # map of the wrong size
    lambda ims: (np.full(len(ims), np.nan), [np.zeros(i.shape[:2]) for i in ims]),  # NaN score
], ids=["count", "size", "nan"])
def test_a_malformed_detector_answer_is_a_failure_not_a_wrong_result(wrong: object) -> None:
    res, _ = _run(wrong, [1, 2])
    assert all(isinstance(r, PredictFailed) for r in res)


def test_submit_without_a_worker_fails_at_once() -> None:
    async def main() -> None:
        with pytest.raises(PredictFailed, match="not running"):
            await Batcher(Echo()).submit(_img(1))
    asyncio.run(main())
