"""Triton kernels for the selective scan (Mamba's S6 recurrence) on CUDA.

Algorithm: the sequential scan of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (2023), section 3.3 and its CUDA kernel (mamba_ssm ``selective_scan``), with the
recompute-in-backward of its "hardware-aware algorithm": no (Bt, E, L, N) state ever reaches
memory. The recurrence is the one of reference.py::

    d_t = softplus(delta_t + bias)            (both optional)
    h_t = exp(d_t A) h_{t-1} + d_t u_t B_t    (t = 0..L-1, or L-1..0 with reverse)
    out = (<h_t, C_t> + D u_t) * silu(z_t)    (D and z optional)

One program owns (batch row b, group g, a block of BLOCK_E channels of that group) and keeps the
(BLOCK_E, BLOCK_N) state in registers for the whole sequence: the channels of one program share
B_t and C_t, so those load once per step as a (BLOCK_N,) vector and broadcast.

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

Not measured on a GPU yet (the table of sequence length vs time belongs here once it is).
"""

from __future__ import annotations

import os

import torch

from ._alloc import new_output
from ._autograd import backward_with, setup_context

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # the CPU path needs no triton; the ops below are then not registered
    _HAS_TRITON = False

# steps per backward chunk. The scratch holds CHUNK states per program (Bt*E*N*CHUNK floats in
# all) and the checkpoints Bt*E*N*L/CHUNK: 16 keeps both well below the Bt*E*N*L history
CHUNK = 16
MAX_BLOCK_TILE = 1024  # BLOCK_E * BLOCK_N fp32 values per state tile: a register budget


def triton_op_available() -> bool:
    """True when the Triton kernels can be compiled here: triton imports, a CUDA device is
    present, and we are not under TRITON_INTERPRET (which runs on CPU tensors only)."""
    if not _HAS_TRITON or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    try:
        return torch.cuda.is_available()
    except Exception:  # a broken driver install must not break the CPU path
        return False


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------

if _HAS_TRITON:

    @triton.jit
    def _softplus(x):
        # max(x, 0) + log1p(exp(-|x|)): exp never overflows; log1p(w) as
        # log(1 + w) * w / ((1 + w) - 1) keeps tiny w accurate (no log1p in tl)
        w = tl.exp(-tl.abs(x))
        onep = 1.0 + w
        den = onep - 1.0
        l1p = tl.where(den == 0.0, w, tl.log(onep) * w / tl.where(den == 0.0, 1.0, den))
        return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + l1p)

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
        pid_e = tl.program_id(0)
        pid_bg = tl.program_id(1)
        b = pid_bg // G
        g = pid_bg % G
        EG = E // G
        le = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)  # channel index inside the group
        mask_e = le < EG
        e = (g * EG + le).to(tl.int64)
        n = tl.arange(0, BLOCK_N)
        mask_n = n < N
        mask_en = mask_e[:, None] & mask_n[None, :]

        # padding lanes get A = 0 and d*u*B = 0, so their state stays exactly 0
        A = tl.load(A_ptr + e[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + e, mask=mask_e, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + e, mask=mask_e, other=0.0).to(tl.float32)
        row = (b.to(tl.int64) * E + e) * L  # (BLOCK_E,) start of each channel's time row
        bc = (pid_bg.to(tl.int64) * N + n) * L  # (BLOCK_N,) start of each state row of B, C
        n_chunks = tl.cdiv(L, CHUNK)

        h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        for c in range(0, n_chunks):
            if STORE_CHUNKS:
                chk = ((b.to(tl.int64) * E + e) * n_chunks + c) * N
                tl.store(chk_ptr + chk[:, None] + n[None, :], h, mask=mask_en)
            s0 = c * CHUNK
            for i in range(0, tl.minimum(CHUNK, L - s0)):
                if REVERSE:
                    t = L - 1 - (s0 + i)
                else:
                    t = s0 + i
                ut = tl.load(u_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                d = tl.load(delta_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    d += bias
                if SOFTPLUS:
                    d = _softplus(d)
                B_t = tl.load(B_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
                h = tl.exp(d[:, None] * A) * h + (d * ut)[:, None] * B_t[None, :]
                if STORE_OUT:
                    C_t = tl.load(C_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
                    y = tl.sum(h * C_t[None, :], axis=1)
                    if HAS_D:
                        y += Dv * ut
                    if HAS_Z:
                        zt = tl.load(z_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                        y = y * zt * tl.sigmoid(zt)
                    tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=mask_e)
        last = (b.to(tl.int64) * E + e) * N
        tl.store(last_ptr + last[:, None] + n[None, :], h, mask=mask_en)

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
        pid_e = tl.program_id(0)
        pid_bg = tl.program_id(1)
        n_eblocks = tl.num_programs(0)
        b = pid_bg // G
        g = pid_bg % G
        EG = E // G
        le = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
        mask_e = le < EG
        e = (g * EG + le).to(tl.int64)
        n = tl.arange(0, BLOCK_N)
        mask_n = n < N
        mask_en = mask_e[:, None] & mask_n[None, :]

        A = tl.load(A_ptr + e[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + e, mask=mask_e, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + e, mask=mask_e, other=0.0).to(tl.float32)
        row = (b.to(tl.int64) * E + e) * L
        bc = (pid_bg.to(tl.int64) * N + n) * L
        be = b.to(tl.int64) * E + e  # (BLOCK_E,) index of (b, e) in (Bt, E)
        part = ((pid_bg.to(tl.int64) * n_eblocks + pid_e) * L) * N  # this block's (L, N) partial
        tile = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
        scratch = scratch_ptr + (pid_bg.to(tl.int64) * n_eblocks + pid_e) * (
            CHUNK * BLOCK_E * BLOCK_N
        )
        n_chunks = tl.cdiv(L, CHUNK)

        if HAS_DLAST:
            dh = tl.load(dlast_ptr + be[:, None] * N + n[None, :], mask=mask_en, other=0.0).to(
                tl.float32
            )
        else:
            dh = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        dA = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
        dD = tl.zeros((BLOCK_E,), dtype=tl.float32)
        dbias = tl.zeros((BLOCK_E,), dtype=tl.float32)

        for cc in range(0, n_chunks):
            c = n_chunks - 1 - cc
            s0 = c * CHUNK
            steps = tl.minimum(CHUNK, L - s0)
            h0 = tl.load(
                chk_ptr + ((be * n_chunks + c) * N)[:, None] + n[None, :], mask=mask_en, other=0.0
            )
            # the sweep of the chunk after this one may still be reading the scratch
            tl.debug_barrier()
            h = h0
            for i in range(0, steps):
                if REVERSE:
                    t = L - 1 - (s0 + i)
                else:
                    t = s0 + i
                ut = tl.load(u_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                d = tl.load(delta_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    d += bias
                if SOFTPLUS:
                    d = _softplus(d)
                B_t = tl.load(B_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
                h = tl.exp(d[:, None] * A) * h + (d * ut)[:, None] * B_t[None, :]
                tl.store(scratch + i * (BLOCK_E * BLOCK_N) + tile, h)
            # replicated elements are stored by one thread and may be read back by another
            tl.debug_barrier()
            for j in range(0, steps):
                i = steps - 1 - j
                if REVERSE:
                    t = L - 1 - (s0 + i)
                else:
                    t = s0 + i
                ut = tl.load(u_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                x = tl.load(delta_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    x += bias
                if SOFTPLUS:
                    d = _softplus(x)
                else:
                    d = x
                d = tl.where(mask_e, d, 0.0)
                B_t = tl.load(B_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
                C_t = tl.load(C_ptr + bc + t, mask=mask_n, other=0.0).to(tl.float32)
                go = tl.load(dout_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                ht = tl.load(scratch + i * (BLOCK_E * BLOCK_N) + tile)
                hp = tl.load(scratch + tl.maximum(i - 1, 0) * (BLOCK_E * BLOCK_N) + tile)
                hprev = tl.where(i > 0, hp, h0)

                # dy = d loss / d (<h, C> + D u): the gate's share taken out
                if HAS_Z:
                    zt = tl.load(z_ptr + row + t, mask=mask_e, other=0.0).to(tl.float32)
                    sg = tl.sigmoid(zt)
                    dy = go * zt * sg
                    yfull = tl.sum(ht * C_t[None, :], axis=1)
                    if HAS_D:
                        yfull += Dv * ut
                    gz = go * yfull * sg * (1.0 + zt * (1.0 - sg))
                    tl.store(dz_ptr + row + t, gz.to(dz_ptr.dtype.element_ty), mask=mask_e)
                else:
                    dy = go
                decay = tl.exp(d[:, None] * A)
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

        tl.store(dA_part_ptr + be[:, None] * N + n[None, :], dA, mask=mask_en)
        if HAS_D:
            tl.store(dD_part_ptr + be, dD, mask=mask_e)
        if HAS_BIAS:
            tl.store(dbias_part_ptr + be, dbias, mask=mask_e)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


def _launch(kernel):
    # wrap_triton makes the launch visible to Inductor / export inside a triton_op; in eager
    # mode (and for an interpreted kernel) it launches directly
    return torch.library.wrap_triton(kernel)


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"selective_scan (triton): u must be (Bt, E, L), got {tuple(u.shape)}")
    Bt, E, L = u.shape
    if A.dim() != 2 or A.shape[0] != E:
        raise ValueError(
            f"selective_scan (triton): A must be (E, N) with E = {E}, got {tuple(A.shape)}"
        )
    N = A.shape[1]
    if B.dim() != 4 or B.shape[0] != Bt or B.shape[2] != N or B.shape[3] != L:
        raise ValueError(
            f"selective_scan (triton): B must be (Bt, G, N, L) = ({Bt}, G, {N}, {L}), "
            f"got {tuple(B.shape)}"
        )
    G = B.shape[1]
    if G < 1 or E % G:
        raise ValueError(f"selective_scan (triton): G = {G} must divide E = {E}")
    if C.shape != B.shape:
        raise ValueError(
            f"selective_scan (triton): C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}"
        )
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(
                f"selective_scan (triton): {name} must have u's shape "
                f"{tuple(u.shape)}, got {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (E,):
            raise ValueError(
                f"selective_scan (triton): {name} must be (E,) = ({E},), got {tuple(t.shape)}"
            )
    if N > 256:
        raise ValueError(f"selective_scan (triton): N = {N} > 256 does not fit on chip")
    for name, t in (
        ("u", u),
        ("delta", delta),
        ("A", A),
        ("B", B),
        ("C", C),
        ("D", D),
        ("z", z),
        ("delta_bias", delta_bias),
    ):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"selective_scan (triton): {name} must be contiguous")
    return Bt, E, L, N, G


def _blocks(E: int, G: int, N: int, block_e: int | None):
    block_n = triton.next_power_of_2(N)
    if block_e is None:
        # a 16-channel block keeps many programs in flight for small batches; narrower when N
        # is large so that the state tile stays within MAX_BLOCK_TILE
        block_e = max(1, min(16, MAX_BLOCK_TILE // block_n, triton.next_power_of_2(E // G)))
    elif block_e < 1 or block_e & (block_e - 1):
        raise ValueError(f"selective_scan (triton): block_e must be a power of two, got {block_e}")
    # about 2 state elements per thread: at 4 the backward needs ~220 registers on sm_90
    # (ptxas -v), at 2 about 128, without spills
    num_warps = max(1, min(8, block_e * block_n // 64))
    return block_e, block_n, num_warps


def selective_scan_fwd_triton(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, *, block_e: int | None = None
):
    """-> (out in u's dtype, last_state float32 (Bt, E, N)). B, C are (Bt, G, N, L)."""
    Bt, E, L, N, G = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    out = new_output((Bt, E, L), u.dtype, u.device)
    last = new_output((Bt, E, N), torch.float32, u.device)
    if Bt * E == 0:
        return out, last
    block_e, block_n, num_warps = _blocks(E, G, N, block_e)
    grid = (triton.cdiv(E // G, block_e), Bt * G)
    _launch(_selective_scan_fwd_kernel)[grid](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else u,
        z if z is not None else u,
        delta_bias if delta_bias is not None else u,
        out,
        last,
        u,
        E,
        L,
        N,
        G,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        REVERSE=bool(reverse),
        STORE_OUT=True,
        STORE_CHUNKS=False,
        CHUNK=CHUNK,
        BLOCK_E=block_e,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return out, last


def selective_scan_bwd_triton(
    dout,
    dlast,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    reverse,
    *,
    block_e: int | None = None,
    chunk: int | None = None,
):
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each shaped and typed like its input,
    None where the optional input was None. ``chunk`` (a power of two) overrides CHUNK."""
    Bt, E, L, N, G = _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if tuple(dout.shape) != (Bt, E, L):
        raise ValueError(
            f"selective_scan (triton): dout must be {(Bt, E, L)}, got {tuple(dout.shape)}"
        )
    if dlast is not None and tuple(dlast.shape) != (Bt, E, N):
        raise ValueError(
            f"selective_scan (triton): dlast must be {(Bt, E, N)}, got {tuple(dlast.shape)}"
        )
    chunk = CHUNK if chunk is None else chunk
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"selective_scan (triton): chunk must be a power of two, got {chunk}")
    dout = dout.contiguous()
    dlast = None if dlast is None else dlast.contiguous()
    dev, f32 = u.device, torch.float32
    du = new_output((Bt, E, L), u.dtype, dev)
    ddelta = new_output((Bt, E, L), delta.dtype, dev)
    dz = new_output((Bt, E, L), z.dtype, dev) if z is not None else None
    if Bt * E * L == 0:  # nothing to scan: every gradient is zero (and nothing to launch)
        zeros = [
            torch.zeros_like(t) if t is not None else None
            for t in (u, delta, A, B, C, D, z, delta_bias)
        ]
        return tuple(zeros)

    block_e, block_n, num_warps = _blocks(E, G, N, block_e)
    n_eblocks = triton.cdiv(E // G, block_e)
    n_chunks = triton.cdiv(L, chunk)
    grid = (n_eblocks, Bt * G)
    placeholder = u
    # 1) pre-pass: the state entering every chunk, so the backward recomputes chunk by chunk
    chk = new_output((Bt, E, n_chunks, N), f32, dev)
    last = torch.empty((Bt, E, N), dtype=f32, device=dev)
    _launch(_selective_scan_fwd_kernel)[grid](
        u,
        delta,
        A,
        B,
        C,
        placeholder,
        placeholder,
        delta_bias if delta_bias is not None else placeholder,
        placeholder,
        last,
        chk,
        E,
        L,
        N,
        G,
        HAS_D=False,
        HAS_Z=False,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        REVERSE=bool(reverse),
        STORE_OUT=False,
        STORE_CHUNKS=True,
        CHUNK=chunk,
        BLOCK_E=block_e,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    # 2) backward sweep
    scratch = torch.empty((Bt * G * n_eblocks, chunk, block_e, block_n), dtype=f32, device=dev)
    dA_part = new_output((Bt, E, N), f32, dev)
    dD_part = new_output((Bt, E), f32, dev) if D is not None else placeholder
    dbias_part = new_output((Bt, E), f32, dev) if delta_bias is not None else placeholder
    dB_part = new_output((Bt, G, n_eblocks, L, N), f32, dev)
    dC_part = new_output((Bt, G, n_eblocks, L, N), f32, dev)
    _launch(_selective_scan_bwd_kernel)[grid](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else placeholder,
        z if z is not None else placeholder,
        delta_bias if delta_bias is not None else placeholder,
        dout,
        dlast if dlast is not None else placeholder,
        chk,
        scratch,
        du,
        ddelta,
        dz if dz is not None else placeholder,
        dA_part,
        dD_part,
        dbias_part,
        dB_part,
        dC_part,
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
    dA = dA_part.sum(0).to(A.dtype)
    dB = dB_part.sum(2).transpose(-1, -2).to(B.dtype).contiguous()
    dC = dC_part.sum(2).transpose(-1, -2).to(C.dtype).contiguous()
    dD = dD_part.sum(0).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias


# ---------------------------------------------------------------------------------------------
# op registration: triton_op twins of vimc::selective_scan_fwd / _bwd (op.py)
# ---------------------------------------------------------------------------------------------


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


if _HAS_TRITON:

    @torch.library.triton_op("vimc::selective_scan_fwd_cuda", mutates_args=())
    def selective_scan_fwd_cuda(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
        reverse: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as vimc::selective_scan_fwd; the kernels are visible to Inductor."""
        return selective_scan_fwd_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )

    @torch.library.triton_op("vimc::selective_scan_bwd_cuda", mutates_args=())
    def selective_scan_bwd_cuda(
        dout: torch.Tensor,
        dlast: torch.Tensor | None,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None,
        z: torch.Tensor | None,
        delta_bias: torch.Tensor | None,
        delta_softplus: bool,
        reverse: bool,
    ) -> tuple[
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
    ]:
        """Same contract as vimc::selective_scan_bwd: an absent input gets an empty gradient."""
        grads = selective_scan_bwd_triton(
            dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )
        return tuple(g if g is not None else _empty(u) for g in grads)

    torch.library.register_autograd(
        "vimc::selective_scan_fwd_cuda",
        backward_with(torch.ops.vimc.selective_scan_bwd_cuda),
        setup_context=setup_context,
    )
