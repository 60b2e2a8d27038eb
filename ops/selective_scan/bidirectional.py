"""Vim's two directions in one op: ``vimc::selective_scan_bidirectional_fwd``.

A Vim mixer runs a forward and a reverse scan over one shape, gates both with the same
``silu(z)`` and averages them. As one CPU kernel call that is one op dispatch instead of two
(benchmarks/bidirectional.py measures the difference), one gate instead of two, and no
separate add-and-halve pass over the outputs.

Contract: ``(selective_scan(u, ..., z=z) + selective_scan(u_b, ..., z=z, reverse=True)) / 2``,
the two scans' arguments of equal shapes. Backward runs ``vimc::selective_scan_bwd`` once per
direction (the gradient of a mean of two gated scans is half of each one's), so it needs no
kernel of its own. With grad mode off the public function calls
``vimc::selective_scan_bidirectional_fwd_nograd`` instead, the same kernel registered without
an autograd formula (whose Python kernel would otherwise run on every call). On CUDA and for
float64 it calls :func:`selective_scan` twice instead (no fused kernel there).

:func:`selective_scan_bidirectional_token_major` is the same computation on the (Bt, L, .)
tensors a mixer's linears produce, as one op, ``vimc::selective_scan_bidirectional_token_major``
(inference only). Which of these a model calls is the model's choice (``BiMambaMixer.scan_form``);
these functions compute one thing however they are traced.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from . import _library, cpu
from ._checks import DIRECTION, KERNEL, check_scan_pair, check_storage
from .cpu_plans import OpSpec, PlannedOp
from .op import _fake_state, _grouped, _kernel_fwd, _like, _state_dtype, selective_scan


def selective_scan_bidirectional_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    u_b: torch.Tensor,
    delta_b: torch.Tensor,
    A_b: torch.Tensor,
    B_b: torch.Tensor,
    C_b: torch.Tensor,
    D_b: torch.Tensor | None,
    delta_bias_b: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two scans (the second reversed) averaged and gated -> (out in u's dtype and layout,
    last state of each direction (Bt, E, N)). Checks both directions (the kernel sizes the
    second by the first)."""
    planned = _PAIR_PLANS.run(
        (u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z,
         delta_softplus)
    )  # fmt: skip
    if planned is not None:
        return planned
    fwd = (u, delta, A, B, C, D, delta_bias)
    bwd = (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    dims = check_scan_pair(fwd, bwd, z, who=KERNEL, grouped_only=True)
    if u.is_cpu and u.dtype != torch.float64 and cpu.c_kernel_available():
        out, last, last_b = cpu._fwd_c(dims, *fwd[:6], z, fwd[6], delta_softplus, False, pair=bwd)
        return _like(out, u), last, last_b
    if u.is_cpu:  # named as the pair's arguments before the scans check each as a first one
        check_storage(KERNEL, zip((*DIRECTION, "z"), (*fwd, z)))
        check_storage(KERNEL, zip((k + "_b" for k in DIRECTION), bwd))
    out, last = _kernel_fwd(*fwd[:6], z, fwd[6], delta_softplus, False)
    out_b, last_b = _kernel_fwd(*bwd[:6], z, bwd[6], delta_softplus, True)
    mean = (out.to(_state_dtype(u)) + out_b.to(_state_dtype(u))) * 0.5
    return _like(mean.to(u.dtype), u), last.contiguous(), last_b.contiguous()


# the op kernels' calls after the first of each argument layout (cpu_plans.py): the same
# checks on a first call, the kernel's input order (u, delta, A, B, C, D, z, bias) after
_PAIR_PLANS = PlannedOp(
    OpSpec(
        check=lambda a: check_scan_pair(a[0:7], a[7:14], a[14], who=KERNEL, grouped_only=True),
        ins=(0, 1, 2, 3, 4, 5, 14, 6),
        softplus=15,
        pair_ins=(7, 8, 9, 10, 11, 12, None, 13),
    )
)
_PROJ_PLANS = PlannedOp(
    OpSpec(
        check=lambda a: check_scan_pair(
            a[0:7], a[8:15], a[16], who=KERNEL, grouped_only=True, proj=(a[7], a[15])
        ),
        ins=(0, 1, 2, 3, 4, 5, 16, 6),
        softplus=17,
        proj=7,
        pair_ins=(8, 9, 10, 11, 12, 13, None, 14),
        pair_proj=15,
        last_states=False,
    )
)
_BIDIR = _library.define(selective_scan_bidirectional_fwd)
# The same kernel with no autograd formula, called when grad mode is off: an op's Python
# autograd kernel runs on every call, grad mode or not (benchmarks/bidirectional.py times it,
# "dispatch" rows); inference makes one call per layer.
_BIDIR_NOGRAD = _library.define(
    selective_scan_bidirectional_fwd, "selective_scan_bidirectional_fwd_nograd"
)


@_library.register_fake(_BIDIR, _BIDIR_NOGRAD)
def _(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, sp):
    fwd, bwd = (u, delta, A, B, C, D, delta_bias), (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    check_scan_pair(fwd, bwd, z, who=KERNEL, grouped_only=True, fake=True)
    return torch.empty_like(u), _fake_state(u, A), _fake_state(u, A)


def selective_scan_bidirectional_proj_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_proj: torch.Tensor,
    u_b: torch.Tensor,
    delta_b: torch.Tensor,
    A_b: torch.Tensor,
    B_b: torch.Tensor,
    C_b: torch.Tensor,
    D_b: torch.Tensor | None,
    delta_bias_b: torch.Tensor | None,
    delta_proj_b: torch.Tensor,
    z: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """:func:`selective_scan_bidirectional_fwd` with each direction's dt_proj applied in the
    kernel: ``delta`` is the projection's input (Bt, R, L) and the raw delta is
    ``delta_proj @ delta`` (E, R) x (Bt, R, L), never materialized on the fused CPU path ->
    out in u's dtype and layout. Inference only (no autograd formula)."""
    planned = _PROJ_PLANS.run(
        (u, delta, A, B, C, D, delta_bias, delta_proj, u_b, delta_b, A_b, B_b, C_b, D_b,
         delta_bias_b, delta_proj_b, z, delta_softplus)
    )  # fmt: skip
    if planned is not None:
        return planned[0]
    fwd = (u, delta, A, B, C, D, delta_bias)
    bwd = (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    proj = (delta_proj, delta_proj_b)
    dims = check_scan_pair(fwd, bwd, z, who=KERNEL, grouped_only=True, proj=proj)
    if u.is_cpu and u.dtype == torch.float32 and cpu.c_kernel_available():
        out, _, _ = cpu._fwd_c(
            dims, *fwd[:6], z, fwd[6], delta_softplus, False, pair=bwd,
            delta_proj=delta_proj, pair_proj=delta_proj_b, last_states=False,
        )  # fmt: skip
        return _like(out, u)
    if u.is_cpu:  # the projections below read these before any kernel check does
        check_storage(KERNEL, (("delta", delta), ("delta_proj", delta_proj)))
        check_storage(KERNEL, (("delta_b", delta_b), ("delta_proj_b", delta_proj_b)))
    out, _, _ = selective_scan_bidirectional_fwd(
        u, _project(delta, delta_proj), A, B, C, D, delta_bias,
        u_b, _project(delta_b, delta_proj_b), A_b, B_b, C_b, D_b, delta_bias_b,
        z, delta_softplus,
    )  # fmt: skip
    return out


def _project(delta: torch.Tensor, delta_proj: torch.Tensor) -> torch.Tensor:
    """(E, R) x (Bt, R, L) -> (Bt, E, L) as a view of token-major (Bt, L, E) memory, the layout a
    mixer's dt_proj linear gives the scans; in float32 (float64 if either is), as the fused
    kernel computes it."""
    ct = torch.promote_types(torch.promote_types(delta.dtype, delta_proj.dtype), torch.float32)
    return F.linear(delta.mT.to(ct), delta_proj.to(ct)).mT


_BIDIR_PROJ = _library.define(selective_scan_bidirectional_proj_fwd)


@_library.register_fake(_BIDIR_PROJ)
def _(u, delta, A, B, C, D, delta_bias, delta_proj, u_b, delta_b, A_b, B_b, C_b, D_b,
      delta_bias_b, delta_proj_b, z, sp):  # fmt: skip
    fwd, bwd = (u, delta, A, B, C, D, delta_bias), (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    check_scan_pair(fwd, bwd, z, who=KERNEL, grouped_only=True, fake=True,
                    proj=(delta_proj, delta_proj_b))  # fmt: skip
    return torch.empty_like(u)


def _setup_context(ctx, inputs, output):
    *tensors, ctx.delta_softplus = inputs
    ctx.save_for_backward(*tensors)


def _backward(ctx, dout, dlast, dlast_b):
    *both, z = ctx.saved_tensors
    half = dout * 0.5  # d mean / d each direction's gated output
    grads = []
    for args, dl, reverse in ((both[:7], dlast, False), (both[7:], dlast_b, True)):
        u, delta, A, B, C, D, bias = args
        g = torch.ops.vimc.selective_scan_bwd(
            half, dl, u, delta, A, B, C, D, z, bias, ctx.delta_softplus, reverse
        )  # (du, ddelta, dA, dB, dC, dD, dz, dbias)
        grads.append(g)
    present = (*both, z)
    dz = grads[0][6] + grads[1][6] if z is not None else None
    flat = [g[i] for g in grads for i in (0, 1, 2, 3, 4, 5, 7)] + [dz]
    # an absent optional input got an empty placeholder gradient: autograd wants None
    return (*(g if t is not None else None for g, t in zip(flat, present)), None)


_library.register_autograd(_BIDIR, _backward, _setup_context)


def _channel_major(args, who: str) -> list:
    """The token-major op's arguments (selective_scan_bidirectional_fwd's order) as views the
    channel-major checks and kernel take: u, delta, z (Bt, L, E) -> (Bt, E, L); B, C (Bt, L, N)
    -> (Bt, N, L). A sequence of another rank is refused first: a grouped (Bt, L, G, N) B
    would otherwise be read as another layout."""
    ins = []
    for name, x in zip(_PARAMETERS, args):
        kind = name.removesuffix("_b")
        if isinstance(x, torch.Tensor) and kind in ("u", "delta", "z", "B", "C"):
            if x.dim() != 3:
                want = "(Bt, L, N)" if kind in ("B", "C") else "(Bt, L, E)"
                raise ValueError(f"{who}: {name} must be {want}, got shape {tuple(x.shape)}")
            x = x.mT
        ins.append(x)
    return ins


def _token_major_kernel(*args) -> torch.Tensor:
    """The token-major op's kernel: u, delta, z (Bt, L, E); B, C (Bt, L, N) (one group); A
    (E, N); D, delta_bias (E,) -> out (Bt, L, E), through the channel-major kernel on (Bt, E, L)
    views. Its signature is selective_scan_bidirectional_fwd's (set below), returning one
    tensor."""
    ins = _channel_major(args, KERNEL)
    for i in (3, 4, 10, 11):  # B, C, B_b, C_b: (Bt, N, L) -> (Bt, 1, N, L), as the kernel takes
        if isinstance(ins[i], torch.Tensor):
            ins[i] = ins[i].unsqueeze(1)
    out, _, _ = selective_scan_bidirectional_fwd(*ins)
    return _like(out.mT, args[0])


_SIGNATURE = inspect.signature(selective_scan_bidirectional_fwd)
_PARAMETERS = list(_SIGNATURE.parameters)
_token_major_kernel.__signature__ = _SIGNATURE.replace(return_annotation="torch.Tensor")
_TOKEN_MAJOR = _library.define(_token_major_kernel, "selective_scan_bidirectional_token_major")


@_library.register_fake(_TOKEN_MAJOR)
def _(*args):
    ins = _channel_major(args, KERNEL)
    check_scan_pair(tuple(ins[:7]), tuple(ins[7:14]), ins[14], who=KERNEL, fake=True)
    return torch.empty_like(args[0])


def selective_scan_bidirectional(
    u,
    delta,
    A,
    B,
    C,
    D,
    delta_bias,
    u_b,
    delta_b,
    A_b,
    B_b,
    C_b,
    D_b,
    delta_bias_b,
    z=None,
    delta_softplus=False,
    delta_proj=None,
    delta_proj_b=None,
):
    """``(selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus) +
    selective_scan(u_b, ..., z, delta_bias_b, delta_softplus, reverse=True)) / 2``: the two
    directions of a Vim mixer, each with its own parameters (``*_b`` for the reverse one),
    sharing the gate ``z``. Shapes as :func:`selective_scan`'s; both directions' arguments
    must have equal shapes. One op call on CPU (see the module doc); differentiable in every
    tensor argument; compiles with ``fullgraph=True``.

    ``delta_proj`` and ``delta_proj_b`` (E, R), both or neither: each delta is then a dt_proj
    linear's input (Bt, R, L) and the scans take ``delta_proj @ delta`` (Bt, E, L). With grad
    mode off on CPU in float32 the fused kernel applies it per step (one
    ``vimc::selective_scan_bidirectional_proj_fwd`` call) instead of a skinny matmul writing
    a (Bt, E, L) tensor; elsewhere it is that matmul."""
    fwd = (u, delta, A, B, C, D, delta_bias)
    bwd = (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    proj = (delta_proj, delta_proj_b)
    check_scan_pair(fwd, bwd, z, who="selective_scan_bidirectional", proj=proj)
    if delta_proj is not None:
        if u.is_cpu and u.dtype == torch.float32 and not torch.is_grad_enabled():
            return _BIDIR_PROJ(
                u, delta, A, _grouped(B), _grouped(C), D, delta_bias, delta_proj,
                u_b, delta_b, A_b, _grouped(B_b), _grouped(C_b), D_b, delta_bias_b, delta_proj_b,
                z, bool(delta_softplus),
            )  # fmt: skip
        fwd = (u, _project(delta, delta_proj), *fwd[2:])
        bwd = (u_b, _project(delta_b, delta_proj_b), *bwd[2:])
    if not u.is_cpu or u.dtype == torch.float64:  # no fused kernel: two scans
        out = selective_scan(*fwd[:6], z, fwd[6], delta_softplus)
        out_b = selective_scan(*bwd[:6], z, bwd[6], delta_softplus, reverse=True)
        return (out + out_b) / 2
    op = _BIDIR if torch.is_grad_enabled() else _BIDIR_NOGRAD  # a constant to torch.compile
    grouped = [(*d[:3], _grouped(d[3]), _grouped(d[4]), *d[5:]) for d in (fwd, bwd)]
    out, _, _ = op(*grouped[0], *grouped[1], z, bool(delta_softplus))
    return out


def selective_scan_bidirectional_token_major(
    u,
    delta,
    A,
    B,
    C,
    D,
    delta_bias,
    u_b,
    delta_b,
    A_b,
    B_b,
    C_b,
    D_b,
    delta_bias_b,
    z=None,
    delta_softplus=False,
):
    """:func:`selective_scan_bidirectional` on token-major tensors, as one
    ``vimc::selective_scan_bidirectional_token_major`` op: u, delta, z (Bt, L, E); B, C
    (Bt, L, N) (one group); A (E, N); D, delta_bias (E,) -> (Bt, L, E). A mixer whose linears
    produce (Bt, L, .) activations calls it without transposing anything, so a graph that
    records it (an export) has no transposes around the scan. Inference only: no autograd
    formula (use :func:`selective_scan_bidirectional` to train)."""
    args = (u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z)
    who = "selective_scan_bidirectional_token_major"
    ins = _channel_major(args, who)  # the checks see (Bt, E, L) and (Bt, N, L)
    check_scan_pair(tuple(ins[:7]), tuple(ins[7:14]), ins[14], who=who)
    return _TOKEN_MAJOR(*args, bool(delta_softplus))
