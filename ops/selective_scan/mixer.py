"""A Vim mixer's core in one op: ``vimc::mixer_core_fwd``.

From the in_proj output ``xz`` (B, L, 2E) to the out_proj input (B, L, E): each direction's
depthwise conv and silu, x_proj, dt_proj and softplus, the scan with its D skip, and the mean
of the two gated by silu(z). :func:`mixer_core_composed` is the same computation from this
package's separate functions (:func:`conv1d_silu_pair`, ``F.linear``,
:func:`selective_scan_bidirectional` with dt_proj): what the op is wherever its C kernel does
not run, and its oracle in the tests.

Why one call (``vimc_mixer_fwd`` in cpu_kernel.c, CPU, float32, inference): the separate ops
write both directions' conv outputs and x_proj outputs to memory and read them back, and a
compiled graph calls four ops per layer for it (conv, two x_proj GEMMs, scan). The kernel walks
each (batch row, direction) in chunks of 16 tokens whose conv outputs and x_proj rows stay in
the thread's cache for the scan, and splits batch 1 by direction over two threads. On the
AVX2-only Zen 4 worker (ad hoc, one process, round robin): one layer 0.87x the separate ops'
time at batch 8 and 0.78x at batch 1 (per round); compiled Vim-Ti 0.94-0.95x at batch 1 and
0.94-0.97x at batch 8 (README, ninth session).

The C kernel takes E a multiple of its vector width (8 or 16 channels: every Vim size); the op
computes the composition elsewhere. No autograd formula: :func:`mixer_core` takes the
composition in grad mode, and ``BiMambaMixer``'s ``scan_form="core"`` its usual
"bidirectional" path wherever :func:`mixer_core_available` says no.
"""

from __future__ import annotations

import array
import ctypes
import functools

import torch
import torch.nn.functional as F

from . import _library, cpu, cpu_plans
from ._alloc import new_output
from ._checks import MAX_DT_RANK, check_storage
from .bidirectional import selective_scan_bidirectional
from .conv import conv1d_silu_pair

KERNEL = "vimc mixer kernel"
_ARGS = (
    "xz", "conv_weight", "conv_bias", "conv_weight_b", "conv_bias_b", "x_proj_weight",
    "x_proj_weight_b", "dt_proj_weight", "dt_proj_bias", "dt_proj_weight_b", "dt_proj_bias_b",
    "A", "A_b", "D", "D_b",
)  # fmt: skip


def _check_core(args) -> tuple[int, int, int, int, int, int]:
    """The op's arguments, each named where it is wrong -> (B, L, E, N, R, K)."""
    for name, t in zip(_ARGS, args):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{KERNEL}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{KERNEL}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.layout != torch.strided:
            raise ValueError(f"{KERNEL}: {name} must be a dense (strided) tensor, got {t.layout}")
    xz = args[0]
    if xz.dim() != 3 or xz.shape[2] % 2:
        raise ValueError(f"{KERNEL}: xz must be (B, L, 2E), got shape {tuple(xz.shape)}")
    B, L, E = xz.shape[0], xz.shape[1], xz.shape[2] // 2
    A = args[11]
    if A.dim() != 2 or A.shape[0] != E or A.shape[1] < 1:
        raise ValueError(f"{KERNEL}: A must be (E, N) = ({E}, N >= 1), got {tuple(A.shape)}")
    N = A.shape[1]
    dt_w = args[7]
    if dt_w.dim() != 2 or dt_w.shape[0] != E or dt_w.shape[1] < 1:
        raise ValueError(
            f"{KERNEL}: dt_proj_weight must be (E, R) = ({E}, R >= 1), got {tuple(dt_w.shape)}"
        )
    R = dt_w.shape[1]
    conv_w = args[1]
    if conv_w.dim() != 3 or conv_w.shape[:2] != (E, 1) or conv_w.shape[2] < 1:
        raise ValueError(
            f"{KERNEL}: conv_weight must be (E, 1, K) = ({E}, 1, K >= 1), got {tuple(conv_w.shape)}"
        )
    K = conv_w.shape[2]
    want = {
        "conv_weight": (E, 1, K), "conv_bias": (E,), "x_proj_weight": (R + 2 * N, E),
        "dt_proj_weight": (E, R), "dt_proj_bias": (E,), "A": (E, N), "D": (E,),
    }  # fmt: skip
    for name, t in zip(_ARGS[1:], args[1:]):
        shape = want[name.removesuffix("_b")]
        if tuple(t.shape) != shape:
            raise ValueError(f"{KERNEL}: {name} must have shape {shape}, got {tuple(t.shape)}")
        if t.device != xz.device:
            raise ValueError(f"{KERNEL}: {name} must be on xz's device {xz.device}, got {t.device}")
    return B, L, E, N, R, K


def _kernel_takes(args) -> bool:
    """Whether the C kernel takes these (checked or traced) arguments: CPU float32, the kernel
    loaded, E a multiple of its vector width, dt_proj's rank at most MAX_DT_RANK."""
    return (
        all(t.is_cpu and t.dtype == torch.float32 for t in args)
        and _kernel_ready()
        and (args[0].shape[-1] // 2) % cpu.LANES == 0
        and args[7].shape[-1] <= MAX_DT_RANK
    )


def mixer_core_composed(*args) -> torch.Tensor:
    """The op's computation from the package's separate functions (any device and dtype)."""
    xz, cw, cb, cw_b, cb_b, xp, xp_b, dtw, dtb, dtw_b, dtb_b, A, A_b, D, D_b = args
    E, N, R = A.shape[0], A.shape[1], dtw.shape[1]
    x, z = xz[..., :E], xz[..., E:]
    us = conv1d_silu_pair(x, cw, cb, cw_b, cb_b)
    scans = []
    for u, w in zip(us, (xp, xp_b)):
        x_dbl = F.linear(u, w.to(u.dtype))  # (B, L, R + 2N), in the activations' dtype
        scans.append((u.mT, x_dbl[..., :R].mT, x_dbl[..., R : R + N].mT, x_dbl[..., R + N :].mT))
    (u, dl, Bm, Cm), (u_b, dl_b, Bm_b, Cm_b) = scans
    y = selective_scan_bidirectional(
        u, dl, A, Bm, Cm, D, dtb, u_b, dl_b, A_b, Bm_b, Cm_b, D_b, dtb_b, z=z.mT,
        delta_softplus=True, delta_proj=dtw, delta_proj_b=dtw_b,
    )  # fmt: skip
    return y.mT.contiguous()


def mixer_core_fwd(
    xz: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    conv_weight_b: torch.Tensor,
    conv_bias_b: torch.Tensor,
    x_proj_weight: torch.Tensor,
    x_proj_weight_b: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    dt_proj_weight_b: torch.Tensor,
    dt_proj_bias_b: torch.Tensor,
    A: torch.Tensor,
    A_b: torch.Tensor,
    D: torch.Tensor,
    D_b: torch.Tensor,
) -> torch.Tensor:
    """The mixer's core on xz (B, L, 2E) (x then z along the last axis) and each direction's
    parameters as the mixer holds them (conv (E, 1, K) and (E,), x_proj (R + 2N, E), dt_proj
    (E, R) and (E,), A = -exp(A_log) (E, N), D (E,)) -> (B, L, E) in xz's dtype, contiguous:
    (y_f + y_b) / 2 * silu(z). The fused C kernel on CPU in float32, the composition
    elsewhere."""
    args = (
        xz, conv_weight, conv_bias, conv_weight_b, conv_bias_b, x_proj_weight, x_proj_weight_b,
        dt_proj_weight, dt_proj_bias, dt_proj_weight_b, dt_proj_bias_b, A, A_b, D, D_b,
    )  # fmt: skip
    planned = _planned_call(args)
    if planned is not None:
        return planned
    dims = _check_core(args)
    if xz.is_cpu:  # each inside its storage, before the kernel, a copy or a torch op reads it
        check_storage(KERNEL, zip(_ARGS, args))
    if not (_kernel_takes(args) and xz.numel() > 0):
        return mixer_core_composed(*args).to(xz.dtype)
    contiguous = [t.contiguous() for t in args]
    if all(c is t for c, t in zip(contiguous, args)):
        _CHECKED.remember(args, dims)  # a later call with this layout goes straight to the kernel
    return _run(contiguous, dims)


# cpu._MixerArgs is all 8-byte words, so a call packs it as one int64 array (as cpu._pack
# does the scan's): the word of each field, and of each op argument's pointer
_AT = {n: getattr(cpu._MixerArgs, n).offset // 8 for n, _ in cpu._MixerArgs._fields_}
_WORDS = ctypes.sizeof(cpu._MixerArgs) // 8
_FIELD_OF = {  # op argument -> (MixerArgs field, direction)
    "conv_weight": ("conv_w", 0), "conv_weight_b": ("conv_w", 1), "conv_bias": ("conv_b", 0),
    "conv_bias_b": ("conv_b", 1), "x_proj_weight": ("x_proj", 0),
    "x_proj_weight_b": ("x_proj", 1), "dt_proj_weight": ("dt_w", 0),
    "dt_proj_bias": ("dt_b", 0), "dt_proj_weight_b": ("dt_w", 1), "dt_proj_bias_b": ("dt_b", 1),
    "A": ("A", 0), "A_b": ("A", 1), "D": ("D", 0), "D_b": ("D", 1),
}  # fmt: skip
_PARAM_WORDS = [(_AT[_FIELD_OF[n][0]] + _FIELD_OF[n][1], i) for i, n in enumerate(_ARGS) if i]


assert [_AT[n] for n in ("xz", "B", "L", "E", "N", "R", "K", "nthreads")] == list(range(8))


@functools.lru_cache(maxsize=64)
def _scratch_floats(lib, L: int, E: int, N: int, R: int, K: int) -> tuple[int, int]:
    """``lib``'s scratch per thread and its shared part (the parameters' layouts), in floats:
    two ctypes calls saved per op call (the library is part of the key: LANES sizes them)."""
    return lib.vimc_mixer_scratch(L, E, N, R), lib.vimc_mixer_shared(E, N, R, K)


def _run(args, dims) -> torch.Tensor:
    """The C kernel on checked, contiguous CPU float32 arguments."""
    B, L, E, N, R, K = dims
    threads = cpu._threads(2 * B)  # tasks: a row each, or a (row, direction) each below
    out = new_output((B, L, E), torch.float32, args[0].device)
    y = new_output((2, B, L, E), torch.float32, out.device) if B < threads else None
    per_thread, shared = _scratch_floats(cpu._lib, L, E, N, R, K)
    scratch = cpu._scratch_buffer(per_thread * threads + shared)
    words = array.array("q", bytes(8 * _WORDS))
    words[0:8] = array.array("q", (args[0].data_ptr(), B, L, E, N, R, K, threads))
    for at, i in _PARAM_WORDS:
        words[at] = args[i].data_ptr()
    words[_AT["out"]], words[_AT["y"]] = out.data_ptr(), 0 if y is None else y.data_ptr()
    words[_AT["scratch"]], words[_AT["scratch_floats"]] = scratch.data_ptr(), per_thread
    words[_AT["shared"]] = scratch.data_ptr() + 4 * per_thread * threads  # after the threads'
    if cpu._lib.vimc_mixer_fwd(words.buffer_info()[0]) != 0:  # y and scratch alive until here
        raise RuntimeError(f"{KERNEL}: the C kernel refused the sizes mixer.py packed (a bug)")
    return out


_CHECKED = cpu_plans.CheckedLayouts()  # layouts whose full checks passed, with their sizes


def _planned_call(args: tuple):
    """The kernel's output for ``args`` if their layout passed the full checks before and every
    tensor lies inside its storage; else None (the caller runs the full path)."""
    dims = _CHECKED.lookup(args)
    return None if dims is None else _run(args, dims)


_CORE = _library.define(mixer_core_fwd)


@_library.register_fake(_CORE)
def _(*args):
    B, L, E, _, _, _ = _check_core(args)
    return args[0].new_empty((B, L, E))


def mixer_core(*args) -> torch.Tensor:
    """:func:`mixer_core_fwd`'s computation, differentiable: the op where
    :func:`mixer_core_available` says its C kernel runs, else the composition (which autograd
    differentiates and Inductor fuses)."""
    if mixer_core_available(args[0], args[1:]):
        return _CORE(*args)
    return mixer_core_composed(*args)


def mixer_core_available(xz: torch.Tensor, params) -> bool:
    """Whether :func:`mixer_core` on xz and these parameters (the op's order) runs the fused C
    kernel: grad mode off, every tensor CPU float32, the kernel loaded (read once per trace
    under torch.compile), E a multiple of its vector width, dt_proj's rank at most MAX_DT_RANK.
    Traceable: sizes, dtypes and devices are static in a graph."""
    return not torch.is_grad_enabled() and _kernel_takes((xz, *params))


@torch.compiler.assume_constant_result
def _kernel_ready() -> bool:
    """Whether the C kernel runs here, read once when a graph is traced (a constant there)."""
    return cpu.c_kernel_available()
