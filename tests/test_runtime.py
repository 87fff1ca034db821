import sys

import pytest

from comgen import runtime
from comgen.runtime import tune_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_allocator_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("COMGEN_MALLOC_TUNING", "1")
    assert tune_allocator() is True
    monkeypatch.setenv("COMGEN_MALLOC_TUNING", "0")
    assert tune_allocator() is False
    monkeypatch.setenv("COMGEN_MALLOC_TUNING", "1")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1000000")
    assert tune_allocator() is False  # the user's own glibc settings win


def test_is_main_process_reads_the_launchers_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert runtime.is_main_process()  # no launcher: the only process
    monkeypatch.setenv("RANK", "0")
    assert runtime.is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not runtime.is_main_process()
