"""Vim's two directions in one op: ``vimc::selective_scan_bidirectional_fwd``.

A Vim mixer runs a forward and a reverse scan over one shape, gates both with the same
``silu(z)`` and averages them. As one CPU kernel call that is one op dispatch instead of two
(each tens of microseconds; benchmarks/bidirectional.py measures it), one gate instead of
two, and no separate add-and-halve pass over the outputs.

Contract: ``(selective_scan(u, ..., z=z) + selective_scan(u_b, ..., z=z, reverse=True)) / 2``,
the two scans' arguments of equal shapes. Backward runs ``vimc::selective_scan_bwd`` once per
direction (the gradient of a mean of two gated scans is half of each one's), so it needs no
kernel of its own. With grad mode off the public function calls
``vimc::selective_scan_bidirectional_fwd_nograd`` instead, the same kernel registered without
an autograd formula (whose Python kernel would otherwise run on every call). On CUDA, for
float64, and while ``torch.export`` traces, the public function calls :func:`selective_scan`
twice instead: exported programs keep one ``vimc::selective_scan_fwd`` node per direction,
which the ONNX and TensorRT routes translate. :func:`export_scan_form` picks another form for
an export: ``"bidirectional"`` keeps the one-call op (AOTInductor CPU packages, which call
vimc's kernels back, use it); ``"token_major"`` records
``vimc::selective_scan_bidirectional_token_major``, the same computation on the (Bt, L, .)
tensors the mixer's linears produce (the ONNX plugin form: its graph then has no transposes
around the scan, since the mixer's ``.mT`` and the op's cancel).
"""

from __future__ import annotations

import contextlib
import inspect
import threading

import torch

from . import _library, cpu
from .op import (
    _FLOATS,
    _fake_state,
    _grouped,
    _kernel_fwd,
    _like,
    _state_dtype,
    _validate,
    selective_scan,
)

_DIRECTION = ("u", "delta", "A", "B", "C", "D", "delta_bias")


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
    last state of each direction (Bt, E, N))."""
    fwd = (u, delta, A, B, C, D, delta_bias)
    bwd = (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    if u.is_cpu and u.dtype != torch.float64 and cpu.c_kernel_available():
        out, last, last_b = cpu._fwd_c(*fwd[:6], z, fwd[6], delta_softplus, False, pair=bwd)
        return _like(out, u), last, last_b
    out, last = _kernel_fwd(*fwd[:6], z, fwd[6], delta_softplus, False)
    out_b, last_b = _kernel_fwd(*bwd[:6], z, bwd[6], delta_softplus, True)
    mean = (out.to(_state_dtype(u)) + out_b.to(_state_dtype(u))) * 0.5
    return _like(mean.to(u.dtype), u), last.contiguous(), last_b.contiguous()


_BIDIR = _library.define(selective_scan_bidirectional_fwd)
# The same kernel with no autograd formula, called when grad mode is off: an op's Python
# autograd kernel runs on every call, grad mode or not, and costs about 17 us here
# (benchmarks/bidirectional.py, "dispatch" rows); inference makes one call per layer.
_BIDIR_NOGRAD = _library.define(
    selective_scan_bidirectional_fwd, "selective_scan_bidirectional_fwd_nograd"
)


@_library.register_fake(_BIDIR, _BIDIR_NOGRAD)
def _(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, sp):
    return torch.empty_like(u), _fake_state(u, A), _fake_state(u, A)


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


def selective_scan_bidirectional_token_major(*args) -> torch.Tensor:
    """:func:`selective_scan_bidirectional_fwd` on token-major tensors: u, delta, z (Bt, L, E);
    B, C (Bt, L, N) (one group); A (E, N); D, delta_bias (E,). -> out (Bt, L, E). Inference
    only (no autograd formula): exports record it, see :func:`export_scan_form`. Its
    signature is selective_scan_bidirectional_fwd's (set below), returning one tensor."""
    ins = []
    for name, x in zip(_PARAMETERS, args):
        if x is not None and name.removesuffix("_b") in ("u", "delta", "z"):
            x = x.mT  # (Bt, L, E) -> (Bt, E, L) view
        elif x is not None and name.removesuffix("_b") in ("B", "C"):
            x = x.mT.unsqueeze(1)  # (Bt, L, N) -> (Bt, 1, N, L) view
        ins.append(x)
    out, _, _ = selective_scan_bidirectional_fwd(*ins)
    return _like(out.mT, args[0])


_SIGNATURE = inspect.signature(selective_scan_bidirectional_fwd)
_PARAMETERS = list(_SIGNATURE.parameters)
selective_scan_bidirectional_token_major.__signature__ = _SIGNATURE.replace(
    return_annotation="torch.Tensor"
)
_TOKEN_MAJOR = _library.define(selective_scan_bidirectional_token_major)


@_library.register_fake(_TOKEN_MAJOR)
def _(u, delta, A, B, C, D, delta_bias, u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z, sp):
    return torch.empty_like(u)


# how torch.export records a mixer's scans (see export_scan_form)
EXPORT_FORMS = ("per_direction", "bidirectional", "token_major")
_export_form = "per_direction"
_export_lock = threading.RLock()


@contextlib.contextmanager
def export_scan_form(form: str):
    """Within this block, ``torch.export`` records :func:`selective_scan_bidirectional` on
    CPU as ``form``: ``"per_direction"`` (the default outside any block), two
    ``vimc::selective_scan_fwd`` nodes, which the ONNX standard-op and TensorRT routes
    translate node by node; ``"bidirectional"``, one ``vimc::selective_scan_bidirectional_fwd*``
    node, for programs that run vimc's own kernels (CPU AOTInductor packages);
    ``"token_major"``, one ``vimc::selective_scan_bidirectional_token_major`` node on the
    mixer's (Bt, L, .) tensors (ungrouped B and C; else per direction), for the ONNX plugin
    form. The form is a module flag, not a context variable, because Dynamo (strict export)
    reads a global as a guarded constant but cannot trace ``ContextVar.get``. Blocks hold one
    lock, so exports inside them run one at a time, each seeing its own form (and
    torch.export's tracer, which fails when two threads trace at once, is never shared). A
    ``torch.export`` call made outside any block while another thread holds one may see that
    block's form."""
    global _export_form
    if form not in EXPORT_FORMS:
        raise ValueError(f"form must be one of {EXPORT_FORMS}, got {form!r}")
    with _export_lock:
        old, _export_form = _export_form, form
        try:
            yield
        finally:
            _export_form = old


def exporting_node_by_node() -> bool:
    """Whether ``torch.export`` is tracing for a route that translates the graph node by node
    (forms ``"per_direction"`` and ``"token_major"``: ONNX, TensorRT), not one that compiles
    it with vimc's kernels (``"bidirectional"``: AOTInductor)."""
    return torch.compiler.is_exporting() and _export_form != "bidirectional"


def _call_form(u: torch.Tensor, B: torch.Tensor) -> str:
    """How a call runs: "split" (two :func:`selective_scan` calls), "fused" (the one-call op)
    or "token_major" (its token-major twin, during exports in that form)."""
    if not u.is_cpu or u.dtype == torch.float64:
        return "split"
    if not torch.compiler.is_exporting():
        return "fused"
    if _export_form == "token_major" and B.dim() == 3:
        return "token_major"
    return "fused" if _export_form == "bidirectional" else "split"


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
):
    """``(selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus) +
    selective_scan(u_b, ..., z, delta_bias_b, delta_softplus, reverse=True)) / 2``: the two
    directions of a Vim mixer, each with its own parameters (``*_b`` for the reverse one),
    sharing the gate ``z``. Shapes as :func:`selective_scan`'s; both directions' arguments
    must have equal shapes. One op call on CPU (see the module doc); differentiable in every
    tensor argument; compiles with ``fullgraph=True``."""
    fwd = (u, delta, A, B, C, D, delta_bias)
    bwd = (u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b)
    _validate(*fwd[:6], z, fwd[6])  # then each *_b must be a floating tensor of x's shape
    for name, x, y in zip(_DIRECTION, fwd, bwd):
        if y is not None and not (isinstance(y, torch.Tensor) and y.dtype in _FLOATS):
            raise TypeError(
                f"selective_scan_bidirectional: {name}_b must be a floating torch.Tensor, "
                f"got {getattr(y, 'dtype', type(y).__name__)}"
            )
        if (x is None) != (y is None) or (x is not None and x.shape != y.shape):
            raise ValueError(
                f"selective_scan_bidirectional: {name} and {name}_b must have equal shapes "
                f"(or both be None), got {None if x is None else tuple(x.shape)} and "
                f"{None if y is None else tuple(y.shape)}"
            )
    form = _call_form(u, B)
    if form == "split":
        out = selective_scan(*fwd[:6], z, fwd[6], delta_softplus)
        out_b = selective_scan(*bwd[:6], z, bwd[6], delta_softplus, reverse=True)
        return (out + out_b) / 2
    if form == "token_major":  # the mixer passes .mT views: these .mT cancel them in the graph
        t = lambda x: None if x is None else x.mT  # noqa: E731
        return _TOKEN_MAJOR(
            t(u), t(delta), A, t(B), t(C), D, delta_bias,
            t(u_b), t(delta_b), A_b, t(B_b), t(C_b), D_b, delta_bias_b,
            t(z), bool(delta_softplus),
        ).mT  # fmt: skip
    op = _BIDIR if torch.is_grad_enabled() else _BIDIR_NOGRAD  # a constant to torch.compile
    out, _, _ = op(
        u, delta, A, _grouped(B), _grouped(C), D, delta_bias,
        u_b, delta_b, A_b, _grouped(B_b), _grouped(C_b), D_b, delta_bias_b,
        z, bool(delta_softplus),
    )  # fmt: skip
    return out
