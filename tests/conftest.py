"""Shared test set-up: quiet progress bars, few threads, offline hubs, deterministic seeds."""

from __future__ import annotations

import os

os.environ.setdefault("COMGEN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# torch.compile costs seconds per new shape; only tests/test_compiled.py turns it on
os.environ.setdefault("COMGEN_COMPILE", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)
