"""The chunked Triton kernels (ops/selective_scan/triton_chunked.py, the latency kernels for few
channel rows) against the float64 reference, as test_triton.py holds the sequential ones; and
the launchers' choice between the two.

Under TRITON_INTERPRET=1 (no GPU, conftest.py) the interpreter runs ``tl.associative_scan`` one
element at a time in Python, so the cases are tiny and the chunk small (8 steps, or 1, 4, 64):
L = 33 spans five chunks, the last of one step, and L = 1 and L = 7 fit in one.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from vimc.ops.selective_scan import _triton_common, triton_chunked  # noqa: E402
from vimc.ops.selective_scan import triton as tri  # noqa: E402

from ._scan_cases import Case  # noqa: E402
from .test_triton import (  # noqa: E402
    _cotangents,
    _inputs,
    check_forward,
    check_forward_and_gradients,
)

pytestmark = pytest.mark.triton

CHUNKED = "chunked"
TEST_CHUNK = 8

# (case, chunk): every option on and off, both directions, groups, odd L, L = 1, L > chunk,
# channel blocks that do not divide the group (block_e 4 of E // G = 6 or 3), N not a power of 2
FWD_CASES = [
    (Case.bare(1, 4, 1, 1), TEST_CHUNK),
    (Case.bare(1, 5, 7, 16, softplus=True, D=True), TEST_CHUNK),
    (Case.bare(1, 6, 7, 5, G=2, reverse=True, z=True), TEST_CHUNK),
    (Case.bare(2, 3, 33, 1, bias=True), TEST_CHUNK),
    (Case(2, 12, 33, 5, G=2, reverse=True, block_e=4), TEST_CHUNK),
    (Case(1, 16, 33, 16, G=2), TEST_CHUNK),
    (Case(1, 6, 33, 5, reverse=True, block_e=2), 1),
    (Case(1, 6, 33, 5), 64),
    (Case(1, 4, 9, 5, dtype=torch.bfloat16), 4),
    (Case.bare(1, 4, 9, 5, reverse=True, D=True, z=True, dtype=torch.float16), 4),
]


def _id(param):
    return f"{param[0].id}-chunk{param[1]}" if isinstance(param, tuple) else str(param)


@pytest.mark.parametrize("param", FWD_CASES, ids=_id)
def test_chunked_forward_matches_reference(param):
    case, chunk = param
    check_forward(case, kernel=CHUNKED, chunk=chunk)


GRAD_CASES = [
    (Case.bare(1, 4, 1, 1), TEST_CHUNK),
    (Case(1, 12, 33, 5, G=2, reverse=True, block_e=4), TEST_CHUNK),
    (Case(2, 6, 17, 16, z=False, block_e=1), TEST_CHUNK),
    (Case.bare(1, 5, 7, 5, reverse=True, z=True, dlast=False), TEST_CHUNK),
    (Case.bare(2, 4, 9, 1, G=2, D=True, z=True), 4),
    (Case(1, 7, 33, 5, D=False, dlast=False), TEST_CHUNK),
    (Case(1, 6, 33, 5, reverse=True), 1),
    (Case(1, 6, 17, 3, G=3), 64),
    (Case(1, 4, 9, 5, dtype=torch.bfloat16), 4),
    (Case.bare(1, 4, 9, 5, reverse=True, D=True, z=True, dtype=torch.float16), 4),
]


@pytest.mark.parametrize("param", GRAD_CASES, ids=_id)
def test_chunked_gradients_match_autograd(param):
    """Every gradient, and the output and last state, against autograd through the float64
    reference; an absent input gets None, each gradient its input's dtype."""
    case, chunk = param
    check_forward_and_gradients(case, kernel=CHUNKED, chunk=chunk)


def test_chunked_kernels_are_reproducible():
    """Two runs give the same bits: dB and dC sum over a group's channels through per-program
    partials, not atomics (whose order a GPU does not fix)."""
    case = Case(1, 12, 17, 5, G=2, block_e=2)
    inputs = _inputs(case)
    dout, dlast = _cotangents(case)
    kw = dict(block_e=case.block_e, kernel=CHUNKED, chunk=4)

    def run():
        fwd = tri.selective_scan_fwd_triton(*inputs, case.softplus, case.reverse, **kw)
        bwd = tri.selective_scan_bwd_triton(dout, dlast, *inputs, case.softplus, case.reverse, **kw)
        return (*fwd, *bwd)

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_launchers_pick_the_kernel_by_rows(monkeypatch):
    """Up to CHUNKED_MAX_ROWS channel rows (Bt * E) run the chunked kernels, more the sequential
    ones, forward and backward (pre-pass and sweep) alike; ``kernel=`` overrides."""
    assert tri.kernel_for(1, 384) == "chunked"  # Vim-Ti, batch 1
    assert tri.kernel_for(1, tri.CHUNKED_MAX_ROWS) == "chunked"
    assert tri.kernel_for(1, tri.CHUNKED_MAX_ROWS + 1) == "sequential"
    assert tri.kernel_for(128, 384) == "sequential"  # Vim-Ti, batch 128
    assert tri.kernel_for(128, 384, "chunked") == "chunked"

    launched = []
    real = _triton_common.launch

    def spy(kernel, grid, *args, **kwargs):
        launched.append(kernel.fn.__name__)
        return real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_triton_common, "launch", spy)
    case = Case.bare(1, 4, 5, 3)
    inputs = _inputs(case)
    dout, _ = _cotangents(case)
    for limit, family in ((4, "_chunked"), (3, "_selective_scan")):
        monkeypatch.setattr(tri, "CHUNKED_MAX_ROWS", limit)
        launched.clear()
        tri.selective_scan_fwd_triton(*inputs, False, False)
        tri.selective_scan_bwd_triton(dout, None, *inputs, False, False)
        assert len(launched) == 3 and all(k.startswith(family) for k in launched), launched


@pytest.mark.parametrize("L", [1, 7, 197, 6085])
@pytest.mark.parametrize("N", [1, 16, 64, 256])
def test_default_tiles_fit_the_register_budget(L, N):
    """The default chunk is a power of two, no longer than L needs, and the tile within its
    budget (the budget test_triton_targets.py compiles without spills at N = 16)."""
    dims = (1, 384, L, N, 1)
    for backward, budget in ((False, triton_chunked.FWD_TILE), (True, triton_chunked.BWD_TILE)):
        block_e, block_n, chunk = triton_chunked.blocks(dims, None, None, backward)
        assert chunk & (chunk - 1) == 0 and chunk <= max(1, 2 ** (L - 1).bit_length())
        assert block_e * block_n * chunk <= max(budget, block_e * block_n)
