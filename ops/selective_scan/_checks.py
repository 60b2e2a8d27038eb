"""The selective scan's one input validator, run by every entry point before a kernel reads memory.

- ``selective_scan`` (op.py) and ``selective_scan_bidirectional`` run it before anything is
  traced, so bad input is a ``ValueError``/``TypeError`` naming the argument instead of an error
  deep inside a compiled graph.
- The ops' own kernels run it again: the CPU entry points (cpu.py), the bidirectional and
  token-major ops (bidirectional.py), the Triton launchers (triton.py), and every fake (meta)
  kernel. ``torch.ops.vimc.*`` is public API that AOTInductor and ONNX graphs call without the
  public function, and a shape, device or storage the kernel's loops trust would be a read out
  of bounds rather than an error. A fake kernel checks too because the dispatcher sends a call
  with any meta tensor among CPU ones to it, and its "result" would be uninitialized memory.

The kernels take B and C grouped, (Bt, G, N, L); the public function also takes (Bt, N, L).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# The largest state size N. The Triton kernels keep each channel's N state values on chip for
# the whole scan, and past this they do not fit; every entry point holds to the same limit, so
# that no input runs on one device and fails on another.
MAX_D_STATE = 256
# The largest rank R of a dt_proj the CPU kernel applies itself (cpu_kernel.c's MAX_R): the
# item's projection rows sit in a fixed stack buffer. Vim-B's is 48.
MAX_DT_RANK = 64

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

KERNEL = "vimc scan kernel"  # how the ops' own checks name themselves in errors

# Vim's two directions, in the order the bidirectional ops take each one's arguments
DIRECTION = ("u", "delta", "A", "B", "C", "D", "delta_bias")


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
    if t.layout != torch.strided:  # sparse and other layouts have no strides to hand a kernel
        raise TypeError(f"{who}: {name} must be a dense (strided) tensor, got {t.layout}")
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
    delta_proj=None,
    who: str = "selective_scan",
    grouped_only: bool = False,
    fake: bool = False,
) -> ScanDims:
    """Checks a scan's arguments -> their sizes. u, delta, z (Bt, E, L); A (E, N) with
    1 <= N <= MAX_D_STATE; B, C (Bt, G, N, L) with G dividing E, or also (Bt, N, L) unless
    ``grouped_only``; D, delta_bias (E,); a backward's dout (Bt, E, L) and dlast (Bt, E, N).
    Every tensor floating, dense, and on one device: cpu or cuda, or also meta for a ``fake``
    (meta) kernel's check. Any size but N may be 0. Errors start with ``who``. With
    ``delta_proj`` (E, R), 1 <= R <= MAX_DT_RANK, delta is the projection's input (Bt, R, L)."""
    _tensor(who, "u", u, 3, "(Bt, E, L)")
    Bt, E, L = u.shape
    if delta_proj is None:
        _tensor(who, "delta", delta, 3, "(Bt, E, L)")
        _shape(who, "delta", delta, (Bt, E, L), "(Bt, E, L) like u")
    else:
        _tensor(who, "delta_proj", delta_proj, 2, "(E, R)")
        R = delta_proj.shape[1]
        if delta_proj.shape[0] != E or not 1 <= R <= MAX_DT_RANK:
            raise ValueError(
                f"{who}: delta_proj must have shape (E, R) with E = {E} (u.shape[1]) and R in "
                f"[1, {MAX_DT_RANK}], got {tuple(delta_proj.shape)}"
            )
        _tensor(who, "delta", delta, 3, "(Bt, R, L)")
        _shape(who, "delta", delta, (Bt, R, L), "(Bt, R, L), delta_proj's input")
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
    if delta_proj is not None:
        named.append(("delta_proj", delta_proj))
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
    if device.type not in (("cpu", "cuda", "meta") if fake else ("cpu", "cuda")):
        raise ValueError(f"{who}: u.device must be cpu or cuda, got {device}")
    return ScanDims(Bt, E, L, N, G)


def check_scan_pair(
    fwd: tuple,
    bwd: tuple,
    z,
    *,
    who: str,
    grouped_only: bool = False,
    fake: bool = False,
    proj: tuple = (None, None),
) -> ScanDims:
    """Vim's two directions: ``fwd`` and ``bwd`` each (u, delta, A, B, C, D, delta_bias), one
    gate ``z``, and optionally ``proj`` = (delta_proj, delta_proj_b), both (E, R) (each delta
    then (Bt, R, L), see :func:`check_scan_args`). The forward direction as
    :func:`check_scan_args` checks it; then each ``*_b`` must be a dense floating tensor of its
    twin's shape (or both None), on u's device: a kernel sizes both directions by the first.
    -> the sizes of each direction."""
    dims = check_scan_args(
        *fwd[:6], z, fwd[6], who=who, grouped_only=grouped_only, fake=fake, delta_proj=proj[0]
    )
    device = fwd[0].device
    pairs = zip((*DIRECTION, "delta_proj"), (*fwd, proj[0]), (*bwd, proj[1]))
    for name, x, y in pairs:
        if (x is None) != (y is None):
            raise ValueError(
                f"{who}: {name} and {name}_b must have equal shapes (or both be None), got "
                f"{None if x is None else tuple(x.shape)} and "
                f"{None if y is None else tuple(getattr(y, 'shape', ()))}"
            )
        if y is None:
            continue
        if not isinstance(y, torch.Tensor) or y.dtype not in FLOATS:
            raise TypeError(
                f"{who}: {name}_b must be a floating torch.Tensor, "
                f"got {getattr(y, 'dtype', type(y).__name__)}"
            )
        if y.layout != torch.strided:
            raise TypeError(f"{who}: {name}_b must be a dense (strided) tensor, got {y.layout}")
        if y.shape != x.shape:
            raise ValueError(
                f"{who}: {name} and {name}_b must have equal shapes (or both be None), got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if y.device != device:
            raise ValueError(
                f"{who}: all tensors must be on one device, got u on {device} and {name}_b on "
                f"{y.device}"
            )
    return dims


def check_storage(who: str, named) -> None:
    """Each (name, tensor) of ``named`` (None and empty ones skipped) lies inside its storage: a
    view whose storage was shrunk afterwards (``untyped_storage().resize_()``) still has its
    old sizes and strides, and a kernel that trusts them reads memory that is no longer the
    tensor's. Run by the CPU kernels (C and torch) before they read; torch's own ops do not
    check."""
    for name, t in named:
        if t is None or t.numel() == 0:
            continue
        end = storage_end(t)
        nbytes = t.untyped_storage().nbytes()
        if end > nbytes:
            raise ValueError(
                f"{who}: {name} reaches past the end of its storage (its last element is "
                f"byte {end} of a {nbytes}-byte storage): was the storage resized after the "
                f"tensor was made?"
            )


def storage_end(t: torch.Tensor) -> int:
    """Bytes of its storage that a nonempty ``t`` reaches: one past its last element."""
    end = t.storage_offset()  # becomes one past the last element, in elements
    if t.is_contiguous():
        end += t.numel()
    else:  # a plain loop: a generator and sum() cost more than the arithmetic (per scan)
        end += 1
        for size, stride in zip(t.shape, t.stride()):
            end += (size - 1) * stride
    return end * t.element_size()
