"""The selective scan's one input validator, run by every entry point before a kernel reads memory.

- ``selective_scan`` (op.py) and ``selective_scan_bidirectional`` run it before anything is
  traced, so bad input is a ``ValueError``/``TypeError`` naming the argument instead of an error
  deep inside a compiled graph.
- The Triton launchers (triton.py) and the C kernel's argument packing (cpu.py) run it again:
  ``torch.ops.vimc.*`` called directly skip the public function, and a shape the kernel's loops
  trust would be a read out of bounds rather than an error.

The kernels take B and C grouped, (Bt, G, N, L); the public function also takes (Bt, N, L).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# The largest state size N. The Triton kernels keep each channel's N state values on chip for
# the whole scan, and past this they do not fit; every entry point holds to the same limit, so
# that no input runs on one device and fails on another.
MAX_D_STATE = 256

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ScanDims(NamedTuple):
    """The sizes of one scan: batch rows, channels, steps, state size, groups of B and C."""

    Bt: int
    E: int
    L: int
    N: int
    G: int


def _tensor(who: str, name: str, t, ndim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise TypeError(
            f"{who}: {name} must be a floating tensor "
            f"(float16, bfloat16, float32 or float64), got {t.dtype}"
        )
    if t.dim() != ndim:
        raise ValueError(
            f"{who}: {name} must have {ndim} dimensions {what}, got shape {tuple(t.shape)}"
        )


def _shape(who: str, name: str, t: torch.Tensor, expected: tuple, what: str) -> None:
    if t.shape != expected:
        raise ValueError(
            f"{who}: {name} must have shape {what} = {tuple(expected)}, got {tuple(t.shape)}"
        )


def _groups(who: str, name: str, M, Bt: int, E: int, N: int, L: int, grouped_only: bool) -> int:
    """Checks B or C; -> its group count G (1 for an ungrouped (Bt, N, L))."""
    if not grouped_only and isinstance(M, torch.Tensor) and M.dim() != 4:
        if M.dim() != 3:
            raise ValueError(
                f"{who}: {name} must have shape (Bt, N, L) = {(Bt, N, L)} or (Bt, G, N, L); got "
                f"{tuple(M.shape)} (time-invariant (E, N) B/C is not supported)"
            )
        _tensor(who, name, M, 3, "(Bt, N, L)")
        _shape(who, name, M, (Bt, N, L), "(Bt, N, L)")
        return 1
    _tensor(who, name, M, 4, "(Bt, G, N, L)")
    G = M.shape[1]
    if G < 1 or E % G:
        raise ValueError(
            f"{who}: {name} of shape (Bt, G, N, L) needs G to divide E = {E}, got G = {G}"
        )
    _shape(who, name, M, (Bt, G, N, L), "(Bt, G, N, L)")
    return G


def check_scan_args(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    *,
    dout=None,
    dlast=None,
    who: str = "selective_scan",
    grouped_only: bool = False,
) -> ScanDims:
    """Checks a scan's arguments -> their sizes. u, delta, z (Bt, E, L); A (E, N) with
    1 <= N <= MAX_D_STATE; B, C (Bt, G, N, L) with G dividing E, or also (Bt, N, L) unless
    ``grouped_only``; D, delta_bias (E,); a backward's dout (Bt, E, L) and dlast (Bt, E, N).
    Every tensor floating and on one device, cpu or cuda. Errors start with ``who``."""
    _tensor(who, "u", u, 3, "(Bt, E, L)")
    Bt, E, L = u.shape
    _tensor(who, "delta", delta, 3, "(Bt, E, L)")
    _shape(who, "delta", delta, (Bt, E, L), "(Bt, E, L) like u")
    _tensor(who, "A", A, 2, "(E, N)")
    if A.shape[0] != E:
        raise ValueError(
            f"{who}: A must have shape (E, N) with E = {E} (u.shape[1]), got {tuple(A.shape)}"
        )
    N = A.shape[1]
    if not 1 <= N <= MAX_D_STATE:
        raise ValueError(
            f"{who}: the state size N = A.shape[1] must be in [1, {MAX_D_STATE}] for the "
            f"kernels, got {N}"
        )
    G = _groups(who, "B", B, Bt, E, N, L, grouped_only)
    _groups(who, "C", C, Bt, E, N, L, grouped_only)
    if B.shape != C.shape:
        raise ValueError(
            f"{who}: B and C must have the same shape, got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    named = [("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)]
    for name, t, shape, what in (
        ("D", D, (E,), "(E,)"),
        ("delta_bias", delta_bias, (E,), "(E,)"),
        ("z", z, (Bt, E, L), "(Bt, E, L) like u"),
        ("dout", dout, (Bt, E, L), "(Bt, E, L) like u"),
        ("dlast", dlast, (Bt, E, N), "(Bt, E, N)"),
    ):
        if t is not None:
            _tensor(who, name, t, len(shape), what)
            _shape(who, name, t, shape, what)
            named.append((name, t))
    device = u.device
    if any(t.device != device for _, t in named):
        listing = ", ".join(f"{n} on {t.device}" for n, t in named)
        raise ValueError(f"{who}: all tensors must be on one device, got {listing}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{who}: u.device must be cpu or cuda, got {device}")
    return ScanDims(Bt, E, L, N, G)
