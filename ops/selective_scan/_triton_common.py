"""What both Triton kernel families share: one program's tile of channels and state, its
parameters, softplus, the time index of a step, and the launch.

triton_sequential.py (a time loop per program) and triton_chunked.py (time scanned in parallel
inside a program) tile the work the same way, so these helpers serve both: one program owns
(batch row b, group g, a block of BLOCK_E channels of g) and every state index of them. The
launch goes through :func:`launch`, one place that a test can intercept to see what the
launchers would run (tests/ops/test_triton_targets.py compiles exactly that for real GPUs).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the CPU path needs no triton; nothing below is then defined
    HAS_TRITON = False

WHO = "selective_scan (triton)"  # how the launchers' argument errors name themselves


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` through ``torch.library.wrap_triton``, which makes the
    launch visible to Inductor and torch.export inside a ``triton_op`` (in eager mode, and for
    an interpreted kernel, it launches directly)."""
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def contiguous_rows(*ts):
    """The kernels index (Bt, E, L) rows and (E, N) tables densely: contiguous copies where
    needed (none for what already is)."""
    return [None if t is None else t.contiguous() for t in ts]


def check_pow2(name: str, value: int) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{WHO}: {name} must be a power of two, got {value}")
    return value


if HAS_TRITON:

    @triton.jit
    def softplus(x):
        # max(x, 0) + log1p(exp(-|x|)): exp never overflows; log1p(w) as
        # log(1 + w) * w / ((1 + w) - 1) keeps tiny w accurate (no log1p in tl)
        w = tl.exp(-tl.abs(x))
        onep = 1.0 + w
        den = onep - 1.0
        l1p = tl.where(den == 0.0, w, tl.log(onep) * w / tl.where(den == 0.0, 1.0, den))
        return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + l1p)

    @triton.jit
    def step_time(s, L, REVERSE: tl.constexpr):
        """The time index of the scan's step s (a scalar or a tensor): s, or L - 1 - s in
        reverse."""
        t = s
        if REVERSE:
            t = L - 1 - s
        return t

    @triton.jit
    def program_tile(E, L, N, G, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        """This program's tile: batch row b and group g (program_id(1) = b * G + g), a block of
        BLOCK_E channels of g (program_id(0)), every state index -> (e (BLOCK_E,) channel
        indices, n (BLOCK_N,) state indices, mask_e, mask_n, be (BLOCK_E,) index of (b, e) in
        (Bt, E), bc (BLOCK_N,) offset of each state row of B and C in (Bt, G, N, L)); e, be
        and bc in int64, so offsets past 2**31 elements do not wrap."""
        pid_bg = tl.program_id(1)
        b = pid_bg // G
        g = pid_bg % G
        le = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)  # channel index in the group
        e = (g * (E // G) + le).to(tl.int64)
        n = tl.arange(0, BLOCK_N)
        bc = (pid_bg.to(tl.int64) * N + n) * L
        return e, n, le < E // G, n < N, b.to(tl.int64) * E + e, bc

    @triton.jit
    def load_params(
        A_ptr,  # (E, N)
        D_ptr,  # (E,); read only when HAS_D
        bias_ptr,  # (E,) delta_bias; read only when HAS_BIAS
        e,
        n,
        N,
        mask_e,
        mask_n,
        HAS_D: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_E: tl.constexpr,
    ):
        """-> (A (BLOCK_E, BLOCK_N), D (BLOCK_E,), delta_bias (BLOCK_E,)), float32; 0 where
        absent or masked. A padding lane gets A = 0 and (the kernels see to it) d = 0: its
        state stays 0."""
        mask_en = mask_e[:, None] & mask_n[None, :]
        A = tl.load(A_ptr + e[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(tl.float32)
        Dv = tl.zeros((BLOCK_E,), dtype=tl.float32)
        bias = tl.zeros((BLOCK_E,), dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + e, mask=mask_e, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + e, mask=mask_e, other=0.0).to(tl.float32)
        return A, Dv, bias
