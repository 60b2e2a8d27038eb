"""FLOPs of a Vim: what ``torch.utils.flop_counter`` counts (matmuls and convolutions) plus the
selective scans, added analytically because the counter cannot see inside the op.

FLOPs here are 2 per multiply-add, as the counter reports them; papers' "FLOPs" are usually
multiply-adds (half these figures).
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from vimc.layers import mixer_forms


def scan_flops(model, batch: int, img_hw: tuple[int, int]) -> int:
    """FLOPs of the selective scans: per layer and direction, per (batch, channel, step), 7 per
    state element (delta*A, exp, *h, delta*u*B, +, *C, +) plus 10 (bias, softplus, delta*u,
    D skip, z gate)."""
    gh, gw = model.patch_embed.grid_for(img_hw)
    L = gh * gw + 1  # the patches and the class token
    c = model.config
    E, N = c.expand * c.embed_dim, c.d_state
    return 2 * c.depth * batch * E * L * (7 * N + 10)


def count_flops(model, img_hw: tuple[int, int], batch: int = 1) -> dict:
    """``{"counted", "scan", "total"}``: matmul/conv FLOPs from the counter, the scans'
    analytic FLOPs, and their sum. A model on the meta device runs on fake tensors, so any
    size costs nothing: no weights or activations are allocated."""
    on_meta = any(p.is_meta for p in model.parameters())
    mode = FakeTensorMode(allow_non_fake_inputs=True) if on_meta else contextlib.nullcontext()
    # the "core" scan form runs x_proj inside one op the counter cannot see into: count in the
    # form whose x_proj is a linear of its own (the scan op still hides dt_proj, 1-3% of all)
    with mixer_forms(model, scan_form="bidirectional"), mode:
        m = model.to_empty(device="cpu") if on_meta else model
        x = torch.zeros(batch, model.config.in_chans, *img_hw)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x)
    counted = int(counter.get_total_flops())
    scan = scan_flops(model, batch, img_hw)
    return {"counted": counted, "scan": scan, "total": counted + scan}


__all__ = ["count_flops", "scan_flops"]
