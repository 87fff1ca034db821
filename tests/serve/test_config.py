"""ServeConfig refuses impossible settings in one line naming the option."""

from __future__ import annotations

import math

import pytest

from comgen.errors import ConfigError
from comgen.serve.config import ServeConfig


@pytest.mark.parametrize("kw,option", [({"port": 70000}, "--port"), ({"max_batch": 0}, "--max-batch"),
                                       ({"batch_wait_ms": -1.0}, "--batch-wait-ms"),
                                       ({"max_upload_mb": 0.0}, "--max-upload-mb"),
                                       ({"threshold": math.nan}, "--threshold")])
def test_bad_settings_name_the_option(kw: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        ServeConfig(**kw)


def test_defaults_and_upload_limit_in_bytes() -> None:
    cfg = ServeConfig(max_upload_mb=0.5)
    assert (cfg.host, cfg.port, cfg.max_batch, cfg.threshold) == ("127.0.0.1", 8000, 8, None)
    assert cfg.max_upload_bytes == 512 * 1024
