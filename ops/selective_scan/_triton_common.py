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

from ._alloc import new_output

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


def backward_buffers(dims, ins, n_eblocks: int, time_major_bc: bool) -> list:
    """Both backward kernels' outputs, in their argument order: du, ddelta, dz, then float32
    per-batch-row partials dA (Bt, E, N), dD and dbias (Bt, E), and per-channel-block partials
    dB and dC (Bt, G, n_eblocks, N, L), or (..., L, N) with ``time_major_bc``. Every element is
    written by the kernel (masked lanes are past N or L), so nothing is zero-filled. An absent
    input's buffer is None (see :func:`kernel_pointers`)."""
    Bt, E, L, N, G = dims
    u, delta, _, _, _, D, z, delta_bias = ins
    dev, f32 = u.device, torch.float32
    bc = (Bt, G, n_eblocks) + ((L, N) if time_major_bc else (N, L))
    return [
        new_output((Bt, E, L), u.dtype, dev),
        new_output((Bt, E, L), delta.dtype, dev),
        new_output((Bt, E, L), z.dtype, dev) if z is not None else None,
        new_output((Bt, E, N), f32, dev),
        new_output((Bt, E), f32, dev) if D is not None else None,
        new_output((Bt, E), f32, dev) if delta_bias is not None else None,
        new_output(bc, f32, dev),
        new_output(bc, f32, dev),
    ]


def kernel_pointers(tensors, placeholder) -> list:
    """``tensors`` as kernel arguments: an absent one (None) passes ``placeholder``, which the
    kernel never reads (its HAS_* flag is off)."""
    return [placeholder if t is None else t for t in tensors]


def reduce_backward(buffers, ins, time_major_bc: bool):
    """The gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) from :func:`backward_buffers`
    once the kernel has run: partials summed, each cast to its input's dtype."""
    du, ddelta, dz, dA_part, dD_part, dbias_part, dB_part, dC_part = buffers
    _, _, A, B, C, D, _, delta_bias = ins

    def bc(part, like):
        g = part.sum(2)
        return (
            (g.transpose(-1, -2).to(like.dtype).contiguous()) if time_major_bc else g.to(like.dtype)
        )

    dA = dA_part.sum(0).to(A.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, bc(dB_part, B), bc(dC_part, C), dD, dz, dbias


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
