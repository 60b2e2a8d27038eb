"""The sequential Triton kernels: each program walks the whole sequence, one step at a time.

Algorithm: the sequential scan of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (2023), section 3.3 and its CUDA kernel (mamba_ssm ``selective_scan``), with the
recompute-in-backward of its "hardware-aware algorithm": no (Bt, E, L, N) state ever reaches
memory. The recurrence is the one of reference.py::

    d_t = softplus(delta_t + bias)            (both optional)
    h_t = exp(d_t A) h_{t-1} + d_t u_t B_t    (t = 0..L-1, or L-1..0 with reverse)
    out = (<h_t, C_t> + D u_t) * silu(z_t)    (D and z optional)

One program owns (batch row b, group g, a block of BLOCK_E channels of that group) and keeps the
(BLOCK_E, BLOCK_N) state in registers for the whole sequence: the channels of one program share
B_t and C_t, so those load once per step as a (BLOCK_N,) vector and broadcast. Many channel
rows (a large batch) fill the GPU with programs; a few leave most of it idle, which is what
triton_chunked.py is for (triton.py picks between them).

Backward, chunked in time (CHUNK steps; any L):
  1. a pre-pass (the forward kernel with STORE_OUT off) writes the state entering every chunk,
     (Bt, E, cdiv(L, CHUNK), N): L / CHUNK times smaller than the full state history;
  2. the backward kernel walks the chunks last to first; per chunk it recomputes the CHUNK
     states from the checkpoint into a per-program scratch (CHUNK, BLOCK_E, BLOCK_N) that stays
     in L1/L2, then sweeps them backwards carrying the adjoint dh in registers across chunks.
dB_t and dC_t sum over the channels of a group: each program reduces over its channel block in
registers and writes one (L, N) partial per channel block, which the launcher sums. A partial
buffer instead of atomics keeps gradients deterministic (bitwise reproducible run to run) and
costs little: Vim-Ti has E / BLOCK_E = 384 / 16 = 24 blocks in its one group. dA, dD, dbias
(sums over the batch) go to per-row partials the same way.

The per-step work lives in small ``@triton.jit`` helpers (``_scan_step``, ``_load_step``,
``_decay``, ``_readout``) that the forward kernel, the pre-pass and the backward all call: the
backward recomputes the forward's states with the very code that computed them.

Registers, spills and shared memory per GPU target: tests/ops/test_triton_targets.py prints
them; speed: benchmarks/gpu.py (results in benchmarks/results/ once a GPU has run it).
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

# steps per backward chunk. The scratch holds CHUNK states per program (Bt*E*N*CHUNK floats in
# all) and the checkpoints Bt*E*N*L/CHUNK: 16 keeps both well below the Bt*E*N*L history
CHUNK = 16
MAX_BLOCK_TILE = 1024  # BLOCK_E * BLOCK_N fp32 values per state tile: a register budget


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _load_step(
        u_rows,  # (BLOCK_E,) pointers to each channel's row of u, (Bt, E, L)
        delta_rows,  # (BLOCK_E,) pointers to each channel's row of delta, (Bt, E, L)
        B_rows,  # (BLOCK_N,) pointers to each state row of B, (Bt, G, N, L)
        t,
        bias,  # (BLOCK_E,) float32
        mask_e,
        mask_n,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
    ):
        """Step t's inputs, float32 -> (u_t, x_t = delta_t + bias, d_t = softplus(x_t) or x_t,
        B_t): (BLOCK_E,) but B_t (BLOCK_N,); d_t is 0 on padding channels."""
        ut = tl.load(u_rows + t, mask=mask_e, other=0.0).to(tl.float32)
        x = tl.load(delta_rows + t, mask=mask_e, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += bias
        d = x
        if SOFTPLUS:
            d = softplus(x)
        d = tl.where(mask_e, d, 0.0)
        B_t = tl.load(B_rows + t, mask=mask_n, other=0.0).to(tl.float32)
        return ut, x, d, B_t

    @triton.jit
    def _decay(d, A):
        """exp(d_t A): (BLOCK_E,), (BLOCK_E, BLOCK_N) -> (BLOCK_E, BLOCK_N)."""
        return tl.exp(d[:, None] * A)

    @triton.jit
    def _scan_step(
        h,  # (BLOCK_E, BLOCK_N) float32 state after step t - 1
        A,  # (BLOCK_E, BLOCK_N) float32
        bias,  # (BLOCK_E,) float32
        u_rows,  # (BLOCK_E,) pointers into u, as _load_step's
        delta_rows,  # (BLOCK_E,) pointers into delta
        B_rows,  # (BLOCK_N,) pointers into B
        t,
        mask_e,
        mask_n,
        HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr,
    ):
        """h_t = exp(d_t A) h_{t-1} + d_t u_t B_t -> (h_t, u_t). The forward, its chunk pre-pass
        and the backward's recompute all step through this function, so the states the backward
        recomputes are the forward's, bit for bit (test_triton.py holds it to that)."""
        ut, x, d, B_t = _load_step(
            u_rows, delta_rows, B_rows, t, bias, mask_e, mask_n, HAS_BIAS, SOFTPLUS
        )
        return _decay(d, A) * h + (d * ut)[:, None] * B_t[None, :], ut

    @triton.jit
    def _readout(h, C_t, ut, Dv, HAS_D: tl.constexpr):
        """<h_t, C_t> + D u_t, the output before the gate: (BLOCK_E, BLOCK_N), (BLOCK_N,),
        (BLOCK_E,), (BLOCK_E,) -> (BLOCK_E,)."""
        y = tl.sum(h * C_t[None, :], axis=1)
        if HAS_D:
            y += Dv * ut
        return y

    # --- the kernels ---------------------------------------------------------------------------

    @triton.jit(do_not_specialize=["L"])
    def _selective_scan_fwd_kernel(
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
        u_rows, delta_rows, B_rows = u_ptr + row, delta_ptr + row, B_ptr + bc
        n_chunks = tl.cdiv(L, CHUNK)

        h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        for c in range(0, n_chunks):
            if STORE_CHUNKS:  # chk[b, e, c, :]
                chk = (be * n_chunks + c) * N
                tl.store(chk_ptr + chk[:, None] + n[None, :], h, mask=mask_en)
            for i in range(0, tl.minimum(CHUNK, L - c * CHUNK)):
                t = step_time(c * CHUNK + i, L, REVERSE)
                h, ut = _scan_step(
                    h, A, bias, u_rows, delta_rows, B_rows, t, mask_e, mask_n, HAS_BIAS, SOFTPLUS
                )
                if STORE_OUT:
                    C_t = tl.load(C_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
                    y = _readout(h, C_t, ut, Dv, HAS_D)
                    if HAS_Z:
                        zt = tl.load(z_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                        y = y * zt * tl.sigmoid(zt)
                    tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=mask_e)
        tl.store(last_ptr + (be * N)[:, None] + n[None, :], h, mask=mask_en)

    @triton.jit(do_not_specialize=["L"])
    def _selective_scan_bwd_kernel(
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
        scratch_ptr,  # (Bt * G * n_eblocks, CHUNK, BLOCK_E, BLOCK_N) float32, one slice per program
        du_ptr,  # (Bt, E, L) in u's dtype
        ddelta_ptr,  # (Bt, E, L) in delta's dtype
        dz_ptr,  # (Bt, E, L) in z's dtype; a placeholder when not HAS_Z
        dA_part_ptr,  # (Bt, E, N) float32, summed over Bt by the launcher
        dD_part_ptr,  # (Bt, E) float32; a placeholder when not HAS_D
        dbias_part_ptr,  # (Bt, E) float32; a placeholder when not HAS_BIAS
        dB_part_ptr,  # (Bt, G, n_eblocks, L, N) float32, summed over blocks by the launcher
        dC_part_ptr,  # (Bt, G, n_eblocks, L, N) float32
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
        u_rows, delta_rows, B_rows = u_ptr + row, delta_ptr + row, B_ptr + bc
        state = (be * N)[:, None] + n[None, :]  # (BLOCK_E, BLOCK_N) offsets in (Bt, E, N)
        program = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
        part = program * L * N  # this program's (L, N) slice of dB_part and dC_part
        scratch = scratch_ptr + program * (CHUNK * BLOCK_E * BLOCK_N)  # (CHUNK, BLOCK_E, BLOCK_N)
        tile = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]  # offsets in one scratch step
        n_chunks = tl.cdiv(L, CHUNK)

        dh = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)  # adjoint of the state
        if HAS_DLAST:
            dh = tl.load(dlast_ptr + state, mask=mask_en, other=0.0).to(tl.float32)
        dA = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        dD = tl.zeros((BLOCK_E,), dtype=tl.float32)
        dbias = tl.zeros((BLOCK_E,), dtype=tl.float32)

        for cc in range(0, n_chunks):
            c = n_chunks - 1 - cc
            steps = tl.minimum(CHUNK, L - c * CHUNK)
            chk = (be * n_chunks + c) * N
            h0 = tl.load(chk_ptr + chk[:, None] + n[None, :], mask=mask_en, other=0.0)
            # the sweep of the chunk after this one may still be reading the scratch
            tl.debug_barrier()
            # 1) the chunk's states, recomputed from its checkpoint by the forward's own step
            h = h0
            for i in range(0, steps):
                t = step_time(c * CHUNK + i, L, REVERSE)
                h, ut = _scan_step(
                    h, A, bias, u_rows, delta_rows, B_rows, t, mask_e, mask_n, HAS_BIAS, SOFTPLUS
                )
                tl.store(scratch + i * (BLOCK_E * BLOCK_N) + tile, h)
            # replicated elements are stored by one thread and may be read back by another
            tl.debug_barrier()
            # 2) swept last to first, the adjoint dh carried across steps and chunks
            for j in range(0, steps):
                i = steps - 1 - j
                t = step_time(c * CHUNK + i, L, REVERSE)
                ut, x, d, B_t = _load_step(
                    u_rows, delta_rows, B_rows, t, bias, mask_e, mask_n, HAS_BIAS, SOFTPLUS
                )
                C_t = tl.load(C_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
                go = tl.load(dout_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                ht = tl.load(scratch + i * (BLOCK_E * BLOCK_N) + tile)
                hp = tl.load(scratch + tl.maximum(i - 1, 0) * (BLOCK_E * BLOCK_N) + tile)
                hprev = tl.where(i > 0, hp, h0)

                # dy = d loss / d (<h, C> + D u): the gate's share taken out
                dy = go
                if HAS_Z:
                    zt = tl.load(z_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                    sg = tl.sigmoid(zt)
                    dy = go * zt * sg
                    y = _readout(ht, C_t, ut, Dv, HAS_D)
                    gz = go * y * sg * (1.0 + zt * (1.0 - sg))
                    tl.store(dz_ptr + row + t, gz.to(dz_ptr.dtype.element_ty), mask=mask_e)
                decay = _decay(d, A)
                dhn = dh + dy[:, None] * C_t[None, :]  # adjoint of h_t, all its uses in
                gh = dhn * decay * hprev  # d loss / d (d * A)
                dd = tl.sum(gh * A + dhn * ut[:, None] * B_t[None, :], axis=1)
                dA += gh * d[:, None]
                gu = tl.sum(dhn * B_t[None, :], axis=1) * d
                if HAS_D:
                    gu += dy * Dv
                    dD += dy * ut
                dh = dhn * decay

                dBt = tl.sum(dhn * (d * ut)[:, None], axis=0)
                dCt = tl.sum(ht * dy[:, None], axis=0)
                tl.store(dB_part_ptr + part + t * N + n, dBt, mask=mask_n)
                tl.store(dC_part_ptr + part + t * N + n, dCt, mask=mask_n)

                if SOFTPLUS:
                    dd = tl.where(x > 20.0, dd, dd * tl.sigmoid(x))
                dd = tl.where(mask_e, dd, 0.0)
                dbias += dd
                tl.store(du_ptr + row + t, gu.to(du_ptr.dtype.element_ty), mask=mask_e)
                tl.store(ddelta_ptr + row + t, dd.to(ddelta_ptr.dtype.element_ty), mask=mask_e)

        tl.store(dA_part_ptr + state, dA, mask=mask_en)
        if HAS_D:
            tl.store(dD_part_ptr + be, dD, mask=mask_e)
        if HAS_BIAS:
            tl.store(dbias_part_ptr + be, dbias, mask=mask_e)


# ---------------------------------------------------------------------------------------------
# launch
# ---------------------------------------------------------------------------------------------


def blocks(E: int, G: int, N: int, block_e: int | None):
    """-> (BLOCK_E, BLOCK_N, num_warps) for a scan of E channels in G groups with state size N;
    ``block_e`` (a power of two) overrides the channel block."""
    block_n = triton.next_power_of_2(N)
    if block_e is None:
        # a 16-channel block keeps many programs in flight for small batches; narrower when N
        # is large so that the state tile stays within MAX_BLOCK_TILE
        block_e = max(1, min(16, MAX_BLOCK_TILE // block_n, triton.next_power_of_2(E // G)))
    check_pow2("block_e", block_e)
    # about two state elements per thread: the backward keeps several (BLOCK_E, BLOCK_N) tiles
    # live (state, adjoint, dA, decay), and with more per thread ptxas spills registers
    # (tests/ops/test_triton_targets.py prints what it reports)
    return block_e, block_n, max(1, min(8, block_e * block_n // 64))


def forward(dims, ins, delta_softplus, reverse, block_e, out=None, chk=None, chunk=CHUNK):
    """One launch of the forward kernel on ``ins`` (u, delta, A, B, C, D, z, delta_bias,
    contiguous): writes ``out`` unless None and, given ``chk``, the state entering every
    ``chunk`` steps -> the last state, float32 (Bt, E, N)."""
    Bt, E, L, N, G = dims
    u, delta, A, B, C, D, z, delta_bias = ins
    last = new_output((Bt, E, N), torch.float32, u.device)
    block_e, block_n, num_warps = blocks(E, G, N, block_e)
    common.launch(
        _selective_scan_fwd_kernel,
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
        num_warps=num_warps,
    )
    return last


def backward(dims, dout, dlast, ins, delta_softplus, reverse, block_e, chunk=CHUNK):
    """The gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) of a scan of Bt * E * L > 0
    steps; ``dout``, ``dlast`` and ``ins`` contiguous, as :func:`forward` takes them."""
    Bt, E, L, N, G = dims
    u, delta, A, B, C, D, z, delta_bias = ins
    dev, f32 = u.device, torch.float32
    # 1) pre-pass: the state entering every chunk, so the backward recomputes chunk by chunk
    n_chunks = triton.cdiv(L, chunk)
    chk = new_output((Bt, E, n_chunks, N), f32, dev)
    no_readout = (*ins[:5], None, None, delta_bias)  # D and z only shape out, not stored here
    forward(dims, no_readout, delta_softplus, reverse, block_e, chk=chk, chunk=chunk)
    # 2) backward sweep
    block_e, block_n, num_warps = blocks(E, G, N, block_e)
    n_eblocks = triton.cdiv(E // G, block_e)
    scratch = torch.empty((Bt * G * n_eblocks, chunk, block_e, block_n), dtype=f32, device=dev)
    grads = common.backward_buffers(dims, ins, n_eblocks, time_major_bc=True)
    common.launch(
        _selective_scan_bwd_kernel,
        (n_eblocks, Bt * G),
        *common.kernel_pointers(ins, u),  # u: an unread placeholder
        dout,
        u if dlast is None else dlast,
        chk,
        scratch,
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
        num_warps=num_warps,
    )
    return common.reduce_backward(grads, ins, time_major_bc=True)
