"""The selective scan as a plain recurrence: the oracle every kernel is tested against.

Math (vim.md, "The selective scan"; mamba_ssm's ``selective_scan_ref``)::

    delta = softplus(delta + delta_bias)           # both optional
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t
    y_t   = <h_t, C_t> + D * u_t,   out = y * silu(z)

Arithmetic runs in float32, or in float64 when any floating input is float64, so the same
function is both the float32 behaviour of the official code and a float64 oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus as the official kernels compute it: log1p(exp(x)) for x <= 20, else x."""
    return torch.where(x <= 20.0, torch.log1p(torch.exp(torch.clamp(x, max=20.0))), x)


def _expand_groups(M: torch.Tensor, E: int) -> torch.Tensor:
    """(Bt, N, L) or (Bt, G, N, L) -> (Bt, E, N, L): channel e reads group e // (E // G)."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(M.shape[0], E, M.shape[1], M.shape[2])
    G = M.shape[1]
    return M.repeat_interleave(E // G, dim=1)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
):
    """Per-step loop over time. Shapes: u, delta, z (Bt, E, L); A (E, N); B, C (Bt, N, L) or
    (Bt, G, N, L); D, delta_bias (E,). Returns ``out`` in u's dtype, and with
    ``return_last_state`` also the state after the last step taken, (Bt, E, N) in the compute
    dtype (after t = 0 when ``reverse``)."""
    dtype_in = u.dtype
    ct = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    Bt, E, L = u.shape
    u_, dt = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = softplus(dt)
    A_ = A.to(ct)
    B_ = _expand_groups(B.to(ct), E)  # (Bt, E, N, L)
    C_ = _expand_groups(C.to(ct), E)
    h = u_.new_zeros(Bt, E, A.shape[1])
    if L == 0:  # no step ties the inputs into autograd: an empty scan's gradients are zeros
        h = h + 0 * (A_ + B_.sum(-1) + C_.sum(-1) + (dt.sum(-1) + u_.sum(-1))[..., None])
    ys = [None] * L
    steps = range(L - 1, -1, -1) if reverse else range(L)
    for t in steps:
        h = (
            torch.exp(dt[:, :, t, None] * A_) * h
            + (dt[:, :, t] * u_[:, :, t])[:, :, None] * B_[..., t]
        )
        ys[t] = (h * C_[..., t]).sum(-1)
    y = torch.stack(ys, dim=-1) if L > 0 else h[..., :0]  # (Bt, E, 0), in the graph
    out = y if D is None else y + u_ * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out
