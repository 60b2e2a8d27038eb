"""The chunked Triton kernels: time scanned in parallel inside each program, for few channel rows.

At batch 1 Vim-Ti's scan has 384 channel rows. The sequential kernels (triton_sequential.py)
give each program 16 of them and walk all L steps one after another: 24 programs on a GPU of
over a hundred SMs, each a chain of L dependent steps. mamba_ssm's CUDA kernel instead scans
time in parallel inside a block, over chunks of up to 2048 steps, the state carried from chunk
to chunk. These kernels are that formulation in Triton; triton.py picks them for few rows.

Each step is an affine map of the state, h -> a_t h + x_t with a_t = exp(d_t A) and
x_t = d_t u_t B_t (reference.py's recurrence), and affine maps compose associatively: (a1, x1)
then (a2, x2) is (a1 a2, a2 x1 + x2). So the states of a chunk of CHUNK steps are one
``tl.associative_scan`` over its (a, x) pairs: h_s = P_s h_in + X_s, with (P_s, X_s) the
composition of the chunk's steps up to s and h_in the state entering the chunk. A program owns
(batch row, group, BLOCK_E channels) as the sequential kernels do, and holds a
(BLOCK_E, BLOCK_N, CHUNK) tile; the forward's BLOCK_E = 1 gives one program per channel row.

Backward. The adjoint of the states runs the other way, g_s = dy_s C_s + a_{s+1} g_{s+1}: the
same kind of recurrence, scanned with ``reverse=True`` over (a_{s+1}, dy_s C_s) pairs, a_{s+1}
computed from the next step's delta as loaded from memory (a tile cannot shift its registers).
Per chunk, last to first: the states, recomputed from the chunk's checkpoint by the forward's
own ``_chunk_states`` (the pre-pass is the forward kernel with STORE_CHUNKS); then the
adjoints; then every gradient from both. dA and ddelta need a_s h_{s-1}, the state before each
step, which a tile holds only shifted by one: it is h_s - x_s, as mamba_ssm's backward computes
it. dB and dC sum over the channels of a group through one partial per program, summed by the
launcher, as in the sequential kernels: no atomics, so gradients are reproducible run to run.

The scan combines steps in a tree, so the rounding is not the sequential kernels'; both are
held to the same float64-reference tolerances (tests/ops/test_triton_chunked.py).
"""

from __future__ import annotations

import torch

from . import _triton_common as common
from ._alloc import new_output
from ._triton_common import HAS_TRITON, check_pow2

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton_common import load_params, program_tile, softplus, step_time

# Register budgets: fp32 values per (BLOCK_E, BLOCK_N, CHUNK) tile. The backward holds more
# tiles live (states, decays, adjoints) than the forward. CHUNK follows from them (a power of
# two, no longer than the sequence needs); tests/ops/test_triton_targets.py holds the kernels
# to no register spills at N = 16 with these.
FWD_TILE = 2048
BWD_TILE = 1024
# Channels per program. One in the forward: the most programs for the few rows this kernel
# serves. Four in the backward: its dB and dC partials take (Bt * E / BLOCK_E, N, L) floats.
FWD_BLOCK_E = 1
BWD_BLOCK_E = 4
# Warps per program. The backward's pre-pass runs with the backward's, so that it tiles its
# scans as the backward's recompute does (the same layouts, the same rounding).
FWD_WARPS = 4
BWD_WARPS = 8


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _affine(a1, x1, a2, x2):
        """Two steps h -> a h + x, first (a1, x1) then (a2, x2), as one step."""
        return a1 * a2, a2 * x1 + x2

    @triton.jit
    def _chunk_steps(c, L, SHIFT: tl.constexpr, CHUNK: tl.constexpr, REVERSE: tl.constexpr):
        """The steps of chunk c, each moved SHIFT (0 or 1) steps on -> (t (CHUNK,) time indices,
        0 where not valid; valid (CHUNK,): the step exists and is in the chunk)."""
        j = tl.arange(0, CHUNK) + SHIFT
        s = c * CHUNK + j
        valid = (j < CHUNK) & (s < L)
        return tl.where(valid, step_time(s, L, REVERSE), 0), valid

    @triton.jit
    def _load_rows(ptr, rows, t, mask_rows, valid):
        """ptr[rows[i] + t[j]] as float32, (len(rows), CHUNK); 0 where masked."""
        mask = mask_rows[:, None] & valid[None, :]
        return tl.load(ptr + rows[:, None] + t[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _load_delta(
        delta_ptr, row, t, mask_e, valid, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr
    ):
        """-> (x = delta + bias, d = softplus(x) or x, 0 where masked), (BLOCK_E, CHUNK)."""
        x = _load_rows(delta_ptr, row, t, mask_e, valid)
        if HAS_BIAS:
            x += bias[:, None]
        d = x
        if SOFTPLUS:
            d = softplus(x)
        return x, tl.where(mask_e[:, None] & valid[None, :], d, 0.0)

    @triton.jit
    def _chunk_states(h_in, A, d, u, Bm):
        """The state after each step of a chunk -> (h, a, x), each (BLOCK_E, BLOCK_N, CHUNK):
        h_s = a_s h_{s-1} + x_s from h_in (BLOCK_E, BLOCK_N), the state entering the chunk,
        with a_s = exp(d_s A) and x_s = d_s u_s B_s; A (BLOCK_E, BLOCK_N), d and u
        (BLOCK_E, CHUNK), Bm (BLOCK_N, CHUNK). A masked step (d = 0, u B = 0) is the identity,
        a = 1 and x = 0, so padding past L leaves the state as it was."""
        a = tl.exp(d[:, None, :] * A[:, :, None])
        x = (d * u)[:, None, :] * Bm[None, :, :]
        a_in, x_in = tl.associative_scan((a, x), axis=2, combine_fn=_affine)
        return a_in * h_in[:, :, None] + x_in, a, x

    @triton.jit
    def _column(v, j, CHUNK: tl.constexpr):
        """v[:, :, j] of a (BLOCK_E, BLOCK_N, CHUNK) tile (a sum of one value and zeros: exact)."""
        cols = tl.arange(0, CHUNK)
        return tl.sum(tl.where(cols[None, None, :] == j, v, 0.0), axis=2)

    @triton.jit
    def _readout(h, Cm, u, Dv, HAS_D: tl.constexpr):
        """<h_s, C_s> + D u_s, the output before the gate: (BLOCK_E, BLOCK_N, CHUNK),
        (BLOCK_N, CHUNK), (BLOCK_E, CHUNK), (BLOCK_E,) -> (BLOCK_E, CHUNK)."""
        y = tl.sum(h * Cm[None, :, :], axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        return y

    @triton.jit(do_not_specialize=["L"])
    def _chunked_fwd_kernel(
        u_ptr,  # (Bt, E, L) input, any float dtype
        delta_ptr,  # (Bt, E, L) before bias and softplus, any float dtype
        A_ptr,  # (E, N)
        B_ptr,  # (Bt, G, N, L)
        C_ptr,  # (Bt, G, N, L)
        D_ptr,  # (E,); a placeholder when not HAS_D
        z_ptr,  # (Bt, E, L); a placeholder when not HAS_Z
        bias_ptr,  # (E,) delta_bias; a placeholder when not HAS_BIAS
        out_ptr,  # (Bt, E, L) output in u's dtype; a placeholder when not STORE_OUT
        last_ptr,  # (Bt, E, N) float32 state after the last step
        chk_ptr,  # (Bt, E, cdiv(L, CHUNK), N) float32 state entering each chunk; placeholder when not STORE_CHUNKS
        E,
        L,
        N,
        G,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        REVERSE: tl.constexpr,
        STORE_OUT: tl.constexpr,
        STORE_CHUNKS: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        e, n, mask_e, mask_n, be, bc = program_tile(E, L, N, G, BLOCK_E, BLOCK_N)
        mask_en = mask_e[:, None] & mask_n[None, :]
        A, Dv, bias = load_params(
            A_ptr, D_ptr, bias_ptr, e, n, N, mask_e, mask_n, HAS_D, HAS_BIAS, BLOCK_E
        )
        row = be * L  # (BLOCK_E,) offset of each channel's time row in (Bt, E, L)
        n_chunks = tl.cdiv(L, CHUNK)

        h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        for c in range(0, n_chunks):
            if STORE_CHUNKS:  # chk[b, e, c, :]
                chk = (be * n_chunks + c) * N
                tl.store(chk_ptr + chk[:, None] + n[None, :], h, mask=mask_en)
            t, valid = _chunk_steps(c, L, 0, CHUNK, REVERSE)
            u = _load_rows(u_ptr, row, t, mask_e, valid)
            _, d = _load_delta(delta_ptr, row, t, mask_e, valid, bias, HAS_BIAS, SOFTPLUS)
            Bm = _load_rows(B_ptr, bc, t, mask_n, valid)
            hs, _, _ = _chunk_states(h, A, d, u, Bm)
            if STORE_OUT:
                y = _readout(hs, _load_rows(C_ptr, bc, t, mask_n, valid), u, Dv, HAS_D)
                if HAS_Z:
                    zt = _load_rows(z_ptr, row, t, mask_e, valid)
                    y = y * zt * tl.sigmoid(zt)
                mask = mask_e[:, None] & valid[None, :]
                out = out_ptr + row[:, None] + t[None, :]
                tl.store(out, y.to(out_ptr.dtype.element_ty), mask=mask)
            h = _column(hs, CHUNK - 1, CHUNK)  # padding steps kept it: the chunk's last state
        tl.store(last_ptr + (be * N)[:, None] + n[None, :], h, mask=mask_en)

    @triton.jit(do_not_specialize=["L"])
    def _chunked_bwd_kernel(
        u_ptr,  # (Bt, E, L) input, any float dtype
        delta_ptr,  # (Bt, E, L) before bias and softplus
        A_ptr,  # (E, N)
        B_ptr,  # (Bt, G, N, L)
        C_ptr,  # (Bt, G, N, L)
        D_ptr,  # (E,); a placeholder when not HAS_D
        z_ptr,  # (Bt, E, L); a placeholder when not HAS_Z
        bias_ptr,  # (E,); a placeholder when not HAS_BIAS
        dout_ptr,  # (Bt, E, L) cotangent of out
        dlast_ptr,  # (Bt, E, N) cotangent of the last state; a placeholder when not HAS_DLAST
        chk_ptr,  # (Bt, E, cdiv(L, CHUNK), N) float32 state entering each chunk (from the pre-pass)
        du_ptr,  # (Bt, E, L) in u's dtype
        ddelta_ptr,  # (Bt, E, L) in delta's dtype
        dz_ptr,  # (Bt, E, L) in z's dtype; a placeholder when not HAS_Z
        dA_part_ptr,  # (Bt, E, N) float32, summed over Bt by the launcher
        dD_part_ptr,  # (Bt, E) float32; a placeholder when not HAS_D
        dbias_part_ptr,  # (Bt, E) float32; a placeholder when not HAS_BIAS
        dB_part_ptr,  # (Bt, G, n_eblocks, N, L) float32, summed over blocks by the launcher
        dC_part_ptr,  # (Bt, G, n_eblocks, N, L) float32
        E,
        L,
        N,
        G,
        HAS_D: tl.constexpr,
        HAS_Z: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        HAS_DLAST: tl.constexpr,
        SOFTPLUS: tl.constexpr,
        REVERSE: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCK_E: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        e, n, mask_e, mask_n, be, bc = program_tile(E, L, N, G, BLOCK_E, BLOCK_N)
        mask_en = mask_e[:, None] & mask_n[None, :]
        A, Dv, bias = load_params(
            A_ptr, D_ptr, bias_ptr, e, n, N, mask_e, mask_n, HAS_D, HAS_BIAS, BLOCK_E
        )
        row = be * L
        state = (be * N)[:, None] + n[None, :]  # (BLOCK_E, BLOCK_N) offsets in (Bt, E, N)
        program = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
        part = program * N * L  # this program's (N, L) slice of dB_part and dC_part
        n_chunks = tl.cdiv(L, CHUNK)

        # dh: the adjoint of the state entering the chunk after this one (of the last state,
        # dlast, before the first chunk is taken), all its uses in
        dh = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        if HAS_DLAST:
            dh = tl.load(dlast_ptr + state, mask=mask_en, other=0.0).to(tl.float32)
        dA = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        dD = tl.zeros((BLOCK_E,), dtype=tl.float32)
        dbias = tl.zeros((BLOCK_E,), dtype=tl.float32)

        for cc in range(0, n_chunks):
            c = n_chunks - 1 - cc
            t, valid = _chunk_steps(c, L, 0, CHUNK, REVERSE)
            mask = mask_e[:, None] & valid[None, :]
            u = _load_rows(u_ptr, row, t, mask_e, valid)
            x, d = _load_delta(delta_ptr, row, t, mask_e, valid, bias, HAS_BIAS, SOFTPLUS)
            Bm = _load_rows(B_ptr, bc, t, mask_n, valid)
            Cm = _load_rows(C_ptr, bc, t, mask_n, valid)
            # 1) the chunk's states, recomputed from its checkpoint by the forward's own code
            chk = chk_ptr + ((be * n_chunks + c) * N)[:, None] + n[None, :]
            h_in = tl.load(chk, mask=mask_en, other=0.0)
            hs, a, xs = _chunk_states(h_in, A, d, u, Bm)

            # dy = d loss / d (<h, C> + D u): the gate's share taken out
            go = _load_rows(dout_ptr, row, t, mask_e, valid)
            dy = go
            if HAS_Z:
                zt = _load_rows(z_ptr, row, t, mask_e, valid)
                sg = tl.sigmoid(zt)
                dy = go * zt * sg
                y = _readout(hs, Cm, u, Dv, HAS_D)
                gz = go * y * sg * (1.0 + zt * (1.0 - sg))
                tl.store(
                    dz_ptr + row[:, None] + t[None, :], gz.to(dz_ptr.dtype.element_ty), mask=mask
                )

            # 2) the adjoints g_s = dy_s C_s + a_{s+1} g_{s+1}, last step to first. a_{s+1} is
            # 1 at the chunk's last step (dh carries its successor's decay) and past the end
            t1, valid1 = _chunk_steps(c, L, 1, CHUNK, REVERSE)
            _, d1 = _load_delta(delta_ptr, row, t1, mask_e, valid1, bias, HAS_BIAS, SOFTPLUS)
            a1 = tl.exp(d1[:, None, :] * A[:, :, None])
            p, q = tl.associative_scan(
                (a1, dy[:, None, :] * Cm[None, :, :]), axis=2, combine_fn=_affine, reverse=True
            )
            g = q + p * dh[:, :, None]
            dh = _column(a * g, 0, CHUNK)  # through the chunk's first decay, to the chunk before

            # 3) the gradients. a_s h_{s-1} = h_s - x_s: the state before each step, decayed
            gh = g * (hs - xs)  # d loss / d (d_s A)
            dd = tl.sum(gh * A[:, :, None] + g * u[:, None, :] * Bm[None, :, :], axis=1)
            dA += tl.sum(gh * d[:, None, :], axis=2)
            gu = tl.sum(g * Bm[None, :, :], axis=1) * d
            if HAS_D:
                gu += dy * Dv[:, None]
                dD += tl.sum(dy * u, axis=1)
            nt = n[:, None] * L + t[None, :]  # (BLOCK_N, CHUNK) offsets in this program's part
            mask_nt = mask_n[:, None] & valid[None, :]
            tl.store(dB_part_ptr + part + nt, tl.sum(g * (d * u)[:, None, :], axis=0), mask=mask_nt)
            tl.store(dC_part_ptr + part + nt, tl.sum(hs * dy[:, None, :], axis=0), mask=mask_nt)
            if SOFTPLUS:
                dd = tl.where(x > 20.0, dd, dd * tl.sigmoid(x))
            dd = tl.where(mask, dd, 0.0)
            dbias += tl.sum(dd, axis=1)
            rows_t = row[:, None] + t[None, :]
            tl.store(du_ptr + rows_t, gu.to(du_ptr.dtype.element_ty), mask=mask)
            tl.store(ddelta_ptr + rows_t, dd.to(ddelta_ptr.dtype.element_ty), mask=mask)

        tl.store(dA_part_ptr + state, dA, mask=mask_en)
        if HAS_D:
            tl.store(dD_part_ptr + be, dD, mask=mask_e)
        if HAS_BIAS:
            tl.store(dbias_part_ptr + be, dbias, mask=mask_e)


# ---------------------------------------------------------------------------------------------
# launch
# ---------------------------------------------------------------------------------------------


def blocks(dims, block_e: int | None, chunk: int | None, backward: bool):
    """-> (BLOCK_E, BLOCK_N, CHUNK) for a scan of ``dims``; ``block_e`` and ``chunk`` (powers
    of two) override the defaults, which fill the tile budget with at most the steps L needs."""
    Bt, E, L, N, G = dims
    block_n = triton.next_power_of_2(N)
    if block_e is None:
        block_e = min(BWD_BLOCK_E if backward else FWD_BLOCK_E, triton.next_power_of_2(E // G))
    check_pow2("block_e", block_e)
    if chunk is None:
        budget = (BWD_TILE if backward else FWD_TILE) // (block_e * block_n)
        chunk = max(1, min(budget, triton.next_power_of_2(max(L, 1))))
    check_pow2("chunk", chunk)
    return block_e, block_n, chunk


def forward(
    dims, ins, delta_softplus, reverse, block_e=None, chunk=None, out=None, chk=None, warps=None
):
    """One launch of the forward kernel on ``ins`` (u, delta, A, B, C, D, z, delta_bias,
    contiguous): writes ``out`` unless None and, given ``chk``, the state entering every
    ``chunk`` steps -> the last state, float32 (Bt, E, N). ``warps``: per program (default
    FWD_WARPS)."""
    Bt, E, L, N, G = dims
    u, delta, A, B, C, D, z, delta_bias = ins
    last = new_output((Bt, E, N), torch.float32, u.device)
    block_e, block_n, chunk = blocks(dims, block_e, chunk, backward=False)
    common.launch(
        _chunked_fwd_kernel,
        (triton.cdiv(E // G, block_e), Bt * G),
        u,
        delta,
        A,
        B,
        C,
        *common.kernel_pointers((D, z, delta_bias, out), u),  # u: an unread placeholder
        last,
        u if chk is None else chk,
        E,
        L,
        N,
        G,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        REVERSE=bool(reverse),
        STORE_OUT=out is not None,
        STORE_CHUNKS=chk is not None,
        CHUNK=chunk,
        BLOCK_E=block_e,
        BLOCK_N=block_n,
        num_warps=FWD_WARPS if warps is None else warps,
    )
    return last


def backward(dims, dout, dlast, ins, delta_softplus, reverse, block_e=None, chunk=None):
    """The gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of a scan of Bt * E * L > 0
    steps; ``dout``, ``dlast`` and ``ins`` contiguous, as :func:`forward` takes them."""
    Bt, E, L, N, G = dims
    u, delta, A, B, C, D, z, delta_bias = ins
    dev, f32 = u.device, torch.float32
    block_e, block_n, chunk = blocks(dims, block_e, chunk, backward=True)
    # 1) pre-pass: the state entering every chunk, tiled as the backward recomputes it
    n_chunks = triton.cdiv(L, chunk)
    chk = new_output((Bt, E, n_chunks, N), f32, dev)
    no_readout = (*ins[:5], None, None, delta_bias)  # D and z only shape out, not stored here
    forward(dims, no_readout, delta_softplus, reverse, block_e, chunk, chk=chk, warps=BWD_WARPS)
    # 2) backward sweep
    n_eblocks = triton.cdiv(E // G, block_e)
    grads = common.backward_buffers(dims, ins, n_eblocks, time_major_bc=False)
    common.launch(
        _chunked_bwd_kernel,
        (n_eblocks, Bt * G),
        *common.kernel_pointers(ins, u),  # u: an unread placeholder
        dout,
        u if dlast is None else dlast,
        chk,
        *common.kernel_pointers(grads, u),
        E,
        L,
        N,
        G,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        HAS_DLAST=dlast is not None,
        SOFTPLUS=bool(delta_softplus),
        REVERSE=bool(reverse),
        CHUNK=chunk,
        BLOCK_E=block_e,
        BLOCK_N=block_n,
        num_warps=BWD_WARPS,
    )
    return common.reduce_backward(grads, ins, time_major_bc=False)
