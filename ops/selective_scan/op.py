"""Registration of the selective scan in the ``vimc`` torch.library namespace.

Two ops, ``vimc::selective_scan_fwd`` and ``vimc::selective_scan_bwd``, each with a fake (meta)
kernel, joined by ``register_autograd``: forward and backward both trace into graphs with
``fullgraph=True``, ``torch.export`` keeps one node per scan, and AOTInductor calls back into
these kernels. The kernel behind an op is picked by device: the fused CPU kernel (cpu.py) or the
Triton kernels (triton.py) on CUDA. On CUDA the public function routes to the ``triton_op``
twins registered in triton.py, which Inductor can see into and AOTInductor can embed; on a
machine without a GPU driver Inductor cannot compile a ``triton_op`` at all, so CPU tensors
always take the opaque op. The ops are defined through a plain ``torch.library.Library``
(_library.py says why not ``@custom_op``).

``selective_scan`` validates its arguments (_checks.py) before anything is traced or launched;
the ops check them again, for callers of ``torch.ops.vimc.*`` who skip this function: the CPU
entry points and the Triton launchers, and the fake kernels, which the dispatcher also runs for
a call with a meta tensor among real ones.
"""

from __future__ import annotations

import torch

from . import _library, cpu
from ._autograd import backward_with, setup_context
from ._checks import KERNEL, MAX_D_STATE, check_scan_args
from .cpu_plans import OpSpec, PlannedOp

__all__ = ["MAX_D_STATE", "selective_scan", "selective_scan_bwd", "selective_scan_fwd"]


def _state_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _fake_state(u: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """The last state a fake kernel promises: (Bt, E, N) in the state dtype."""
    return u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=_state_dtype(u))


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


def _like(result: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``result`` in the layout of ``torch.empty_like(t)``, the one the fake kernels promise
    (compiled graphs assert those strides)."""
    if result.shape == t.shape and result.stride() == t.stride():
        return result
    return torch.empty_like(t, dtype=result.dtype).copy_(result)


def _grouped(M: torch.Tensor) -> torch.Tensor:
    """B or C as the ops take it: (Bt, G, N, L), a view (G = 1) of an ungrouped (Bt, N, L)."""
    return M if M.dim() == 4 else M.unsqueeze(1)


def _contiguous(*ts):
    return [None if t is None else t.contiguous() for t in ts]


def _kernel_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    if u.is_cuda:
        from .triton import selective_scan_fwd_triton

        out, last = selective_scan_fwd_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )
        return out, last.to(_state_dtype(u))  # float64 inputs: computed in float32 on CUDA
    return cpu.selective_scan_fwd_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def _kernel_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    if u.is_cuda:
        from .triton import selective_scan_bwd_triton

        return selective_scan_bwd_triton(
            dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )
    return cpu.selective_scan_bwd_cpu(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
    )


def selective_scan_fwd(
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
    """u, delta, z (Bt, E, L); A (E, N); B, C (Bt, G, N, L); D, delta_bias (E,); any strides.
    Returns (out in u's dtype and layout, last state (Bt, E, N) contiguous, float32; float64
    for float64 u)."""
    planned = _FWD_PLANS.run((u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse))
    if planned is not None:
        return planned
    out, last = _kernel_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return _like(out, u), last.contiguous()


# the CPU calls after the first of each argument layout (cpu_plans.py)
_FWD_PLANS = PlannedOp(
    OpSpec(
        check=lambda a: check_scan_args(*a[:8], who=KERNEL, grouped_only=True),
        ins=(0, 1, 2, 3, 4, 5, 6, 7),
        softplus=8,
        reverse=9,
    )
)


_FWD = _library.define(selective_scan_fwd)
# The same kernel with no autograd formula, for eager calls with grad mode off: an op's Python
# autograd kernel runs on every call, grad mode or not. Traced graphs keep _FWD, the one name
# every export route translates.
_FWD_NOGRAD = _library.define(selective_scan_fwd, "selective_scan_fwd_nograd")


@_library.register_fake(_FWD, _FWD_NOGRAD)
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, who=KERNEL, grouped_only=True, fake=True)
    return torch.empty_like(u), _fake_state(u, A)


def selective_scan_bwd(
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
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each shaped, typed and laid
    out like its input; an absent optional input gets an empty tensor (ops cannot return
    None)."""
    grads = _kernel_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    like = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(_empty(u) if g is None else _like(g, t) for g, t in zip(grads, like))


_BWD = _library.define(selective_scan_bwd)


@_library.register_fake(_BWD)
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    check_scan_args(
        *(u, delta, A, B, C, D, z, delta_bias),
        dout=dout,
        dlast=dlast,
        who=KERNEL,
        grouped_only=True,
        fake=True,
    )
    like = (u, delta, A, B, C, D, z, delta_bias)
    return tuple(torch.empty_like(t) if t is not None else _empty(u) for t in like)


_library.register_autograd(_FWD, backward_with(_BWD), setup_context)


# ---------------------------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------------------------


def _use_triton_op(u: torch.Tensor) -> bool:
    # float64 keeps the opaque op, whose contract returns a float64 state
    if u.device.type != "cuda" or u.dtype == torch.float64:
        return False
    from . import triton as _triton

    return _triton.triton_op_available()


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    reverse=False,
):
    """The selective scan of Mamba, as mamba_ssm's ``selective_scan_fn`` computes it.

    Shapes: u, delta, z (Bt, E, L); A (E, N); B, C (Bt, N, L) or grouped (Bt, G, N, L) with G
    dividing E; D, delta_bias (E,). ``reverse=True`` runs the recurrence from t = L-1 down to 0
    (Vim's backward direction without flip copies). Arithmetic and state are float32 (float64
    for float64 inputs); ``out`` has u's dtype and layout. Any strides are accepted: on CPU
    the kernel reads them in place, so token-major views of (Bt, L, E) activations, as a
    mixer's linears produce them, cost no copy. With ``return_last_state`` returns
    ``(out, last_state)``, the state after the last step taken, shape (Bt, E, N).
    Differentiable in every tensor argument; compiles with ``fullgraph=True``.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    args = (u, delta, A, _grouped(B), _grouped(C), D, z, delta_bias)
    args = (*args, bool(delta_softplus), bool(reverse))
    if _use_triton_op(u):
        # the triton_op twin's kernels take contiguous rows
        args = (*_contiguous(*args[:8]), *args[8:])
        out, last = torch.ops.vimc.selective_scan_fwd_cuda(*args)
    elif torch.is_grad_enabled() or torch.compiler.is_compiling():  # constants when traced
        out, last = _FWD(*args)
    else:
        out, last = _FWD_NOGRAD(*args)
    return (out, last) if return_last_state else out


if torch.cuda.is_available():  # register the triton_op twins, so saved CUDA graphs load
    from . import triton as _triton  # noqa: F401
