"""vimc.heap: freed memory kept in glibc's heap, so a repeated forward's buffers are not faulted
in again; its arguments checked; off where asked or where the C library is not glibc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vimc import heap

# a forward's worth of 2.4 MB outputs (a Vim-Ti batch-8 scan output each), touched and freed,
# over and over: minor page faults per cycle after three warm-up cycles, and heap_policy()
_CHURN = """
import json, resource, sys
import torch
from vimc import heap
applied = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
def cycle():
    bufs = [torch.empty(600_000).fill_(1.0) for _ in range(6)]
    del bufs
for _ in range(3):
    cycle()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    cycle()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20
print(json.dumps({"applied": applied, "faults": faults, "policy": heap.heap_policy()}))
"""


def _churn(mode: str, **env) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not heap._glibc(), reason="the C library is not glibc: nothing to set")
def test_kept_heap_reuses_freed_buffers_without_page_faults():
    kept = _churn("keep", VIMC_KEEP_HEAP="1")
    default = _churn("default")
    assert kept["applied"] is True
    assert kept["policy"].startswith("kept (glibc trim threshold 256 MiB, mmap threshold 32 MiB")
    assert default["policy"] == "the C library's default"
    # glibc's defaults may hand the freed top of the heap back and fault it in again (0 to
    # about 200 faults per cycle here, as the heap happens to lie); kept, the cycle reuses its
    # pages. Setting the trim threshold alone (which fixes the mmap threshold at 128 KiB) reads
    # thousands: every buffer mapped afresh
    assert kept["faults"] <= 5, (kept, default)


def test_env_switch_turns_it_off():
    off = _churn("keep", VIMC_KEEP_HEAP="0")
    assert off["applied"] is False
    assert off["policy"] == "the C library's default"


def test_not_glibc_changes_nothing(monkeypatch):
    def no_confstr(name):
        raise ValueError(f"unrecognized configuration name {name!r}")

    monkeypatch.setattr(heap.os, "confstr", no_confstr)
    monkeypatch.setattr(heap, "_kept", None)
    monkeypatch.setattr(heap.ctypes, "CDLL", None)  # calling into libc would fail loudly
    assert heap.keep_freed_memory() is False
    assert heap.heap_policy() == "the C library's default"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"trim_mib": -1}, "trim_mib"),
        ({"trim_mib": 1.5}, "trim_mib"),
        ({"trim_mib": True}, "trim_mib"),
        ({"mmap_mib": 0}, "mmap_mib"),
        ({"mmap_mib": 33}, "mmap_mib"),  # glibc refuses more than 32 MiB on 64-bit
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"keep_freed_memory: {name} must be an int"):
        heap.keep_freed_memory(**kwargs)
