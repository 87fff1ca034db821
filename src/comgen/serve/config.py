"""``ServeConfig``: the server's settings, checked once before anything binds a port."""

from __future__ import annotations

from dataclasses import dataclass

from comgen.config import ConfigBase
from comgen.detect.artifacts import finite_number
from comgen.errors import ConfigError


@dataclass
class ServeConfig(ConfigBase):
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8  # most images one detector call runs
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_upload_mb: float = 20.0  # largest request body, checked while it arrives
    threshold: float | None = None  # pass/fail cut; None: the run's calibrated threshold

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ConfigError("--port", f"must be an integer in 0..65535, got {self.port!r}")
        if not isinstance(self.max_batch, int) or isinstance(self.max_batch, bool) or self.max_batch < 1:
            raise ConfigError("--max-batch", f"must be an integer >= 1, got {self.max_batch!r}")
        self.batch_wait_ms = finite_number(self.batch_wait_ms, "--batch-wait-ms", ge=0, error=ConfigError)
        self.max_upload_mb = finite_number(self.max_upload_mb, "--max-upload-mb", gt=0, error=ConfigError)
        if self.threshold is not None:
            self.threshold = finite_number(self.threshold, "--threshold", error=ConfigError)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
