"""Fixtures shared by the CPU scan tests."""

from __future__ import annotations

import pytest
from vimc.ops.selective_scan import cpu


@pytest.fixture(params=["c_kernel", "torch_chunked"])
def impl(request, monkeypatch):
    """Runs a test once per CPU implementation behind the ops."""
    if request.param == "c_kernel":
        if not cpu.c_kernel_available():
            pytest.skip(f"no C compiler for the fused CPU kernel: {cpu.c_kernel_error()}")
    else:
        monkeypatch.setattr(cpu, "c_kernel_available", lambda: False)
    return request.param
