"""Output allocation shared by every kernel, with a switch that fills outputs with NaN first.

Tests turn poisoning on so that any element a kernel forgets to write shows up as NaN instead
of as leftover memory that happens to look plausible.
"""

from __future__ import annotations

import contextlib
import os

import torch

_poison = os.environ.get("VIMC_POISON_OUTPUTS", "") == "1"


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


@contextlib.contextmanager
def poison_outputs(enabled: bool = True):
    """Within this block, kernel outputs start as NaN rather than uninitialized memory."""
    global _poison
    old, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = old


def new_output_like(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty_like(like, dtype=dtype)``: like's layout (what the fake kernels return)."""
    if _poison:
        return torch.full_like(like, float("nan"), dtype=dtype)
    return torch.empty_like(like, dtype=dtype)
