"""Threads, processes and time, as a server sees them: one model shared by four threads (eager
and compiled) gives single-threaded results, two processes building the kernel cache at once
both succeed, and memory stays flat over repeated forwards. Bounded in count and time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import vimc

from ..tolerances import THREADS_VS_SINGLE_THREAD

THREADS, CALLS = 4, 25


@pytest.fixture(scope="module")
def digits():
    return vimc.create_model("vim_digits", pretrained=True).eval()


def _inputs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(1 + i % 3, 3, 32, 32, generator=g) for i in range(n)]


def _shared_by_threads(fn, xs: list[torch.Tensor]) -> None:
    """``fn`` on every input from THREADS threads at once; each result equals the
    single-threaded one (to float32 rounding: thread pools may split work differently)."""
    with torch.inference_mode():
        want = [fn(x) for x in xs]

    def work(k: int) -> int:
        with torch.inference_mode():
            for i in range(CALLS):
                j = (k * CALLS + i) % len(xs)
                torch.testing.assert_close(fn(xs[j]), want[j], **THREADS_VS_SINGLE_THREAD)
        return CALLS

    with ThreadPoolExecutor(max_workers=THREADS) as pool:  # map re-raises a thread's error
        assert sum(pool.map(work, range(THREADS))) == THREADS * CALLS


def test_four_threads_share_one_eager_model(digits):
    _shared_by_threads(digits, _inputs(8))


@pytest.mark.slow  # one compilation
def test_four_threads_share_one_compiled_model(digits):
    torch._dynamo.reset()
    compiled = torch.compile(digits, fullgraph=True, dynamic=False)
    xs = [x for x in _inputs(8) if x.shape[0] == 2]  # one shape: one graph
    _shared_by_threads(compiled, xs)


@pytest.mark.slow  # two fresh processes build the kernel
def test_two_processes_build_one_cache(tmp_path):
    """Both processes start on an empty cache at once; both build (or wait for) the kernel and
    compute the same numbers."""
    code = textwrap.dedent(
        """
        import torch
        from vimc.ops import selective_scan
        from vimc.ops.selective_scan import cpu
        assert cpu.c_kernel_available(), "no C kernel"
        g = torch.Generator().manual_seed(0)
        u, dt = torch.randn(2, 8, 33, generator=g), torch.rand(2, 8, 33, generator=g)
        A = -torch.rand(8, 4, generator=g)
        B, C = torch.randn(2, 4, 33, generator=g), torch.randn(2, 4, 33, generator=g)
        print(float(selective_scan(u, dt, A, B, C).double().sum()))
        """
    )
    env = {**os.environ, "VIMC_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    assert outs[0][0] == outs[1][0]
    assert any((tmp_path / "cache").iterdir())


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status: RSS not measurable here")


@pytest.mark.slow  # 2 x 1,000 forwards
@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_rss_stays_flat_over_repeated_forwards(digits, mode):
    """RSS after 1,000 more forwards is within 16 MiB of RSS after warm-up (a leak of one
    activation per call would add far more: a batch-4 forward allocates ~1 MiB)."""
    torch._dynamo.reset()
    fn = torch.compile(digits, fullgraph=True, dynamic=False) if mode == "compiled" else digits
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(200):  # warm-up: allocator pools, compilation, thread pools
            fn(x)
        start = _rss_mib()
        for _ in range(1000):
            fn(x)
        grown = _rss_mib() - start
    print(f"{mode}: RSS {start:.0f} MiB after warm-up, {grown:+.1f} MiB after 1,000 forwards")
    assert grown < 16, f"RSS grew {grown:.1f} MiB over 1,000 forwards"
