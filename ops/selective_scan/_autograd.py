"""The autograd formula shared by the forward ops (the opaque op and its triton_op twin): save the
inputs, and in backward call the matching backward op, which recomputes the states."""

from __future__ import annotations


def setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.delta_softplus, ctx.reverse = delta_softplus, reverse


def backward_with(bwd_op):
    """-> a register_autograd backward that runs ``bwd_op`` (a vimc::selective_scan_bwd*)."""

    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        grads = bwd_op(
            dout,  # any strides (the CUDA kernels make their own contiguous copies)
            dlast,
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            ctx.delta_softplus,
            ctx.reverse,
        )
        present = (u, delta, A, B, C, D, z, delta_bias)
        # an absent optional input got an empty placeholder gradient: autograd wants None
        return (*(g if t is not None else None for g, t in zip(grads, present)), None, None)

    return backward
