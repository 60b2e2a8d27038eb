"""Vim's depthwise convolutions over time (one per direction of a mixer), each followed by silu.

Three forms of the same numbers, which a mixer picks among (``BiMambaMixer.conv_form``):

- :func:`causal_conv1d` / :func:`anticausal_conv1d`: K shifted multiply-adds on token-major
  activations, pointwise ops that Inductor fuses into one loop ("shifted");
- :func:`conv1d_channel_major`: one ``F.conv1d`` per direction on (B, E, L) views, the form
  node-by-node exports record ("channel_major");
- :func:`conv1d_silu_pair`: both directions and their silu in one call of the fused C kernel
  (``vimc_conv_silu_pair`` in cpu_kernel.c) on CPU in float32 with grad mode off, the op
  ``vimc::conv1d_silu_pair_fwd``; elsewhere the shifted form ("fused").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _library, cpu, cpu_plans
from ._alloc import new_output
from ._checks import check_storage

KERNEL = "vimc conv kernel"
_ARGS = ("x", "weight", "bias", "weight_b", "bias_b")


def _shifted_sum(x, weight, bias, taps, pad, silu):
    """sum_k w[:, k] * xpad[:, off_k : off_k + L] (+ bias, silu) over token-major x (B, L, E),
    in float32 (float64 for float64 inputs), cast once."""
    L, ct = x.shape[1], torch.promote_types(x.dtype, torch.float32)  # float64 stays
    xp = F.pad(x.to(ct), (0, 0, *pad))
    # (K, E), a real copy: Inductor vectorizes over E only when each tap's weights are
    # contiguous (with weight[:, 0, k]'s stride of K it emits scalar code); a stack is
    # realized as its own buffer, a .contiguous() would be inlined away
    w = torch.stack(weight[:, 0, :].to(ct).unbind(1))
    out = None
    for k, off in taps:
        term = w[k] * xp[:, off : off + L]
        out = term if out is None else out + term
    if bias is not None:
        out = out + bias.to(ct)
    return (F.silu(out) if silu else out).to(x.dtype)


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool = False
) -> torch.Tensor:
    """Depthwise causal conv over time: out[t] = b + sum_k w[k] x[t - (K-1) + k] (left
    zero-padding K-1), optionally followed by silu; x token-major (B, L, E), weight (E, 1, K)
    as nn.Conv1d holds it. Written as K shifted multiply-adds, accumulated in float32 and
    rounded once (as the official fused kernel): pointwise ops that Inductor fuses into one
    loop, and no conv backend choice that would guard on the batch size."""
    K = weight.shape[-1]
    return _shifted_sum(x, weight, bias, [(k, k) for k in range(K)], (K - 1, 0), silu)


def anticausal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool = False
) -> torch.Tensor:
    """The backward direction's conv without flipping activations:
    ``flip(causal_conv1d(flip(x)))`` = right zero-padding K-1 and the kernel taken reversed,
    out[t] = b + sum_k w[k] x[t + (K-1) - k]; x token-major (B, L, E)."""
    K = weight.shape[-1]
    return _shifted_sum(
        x, weight, bias, [(k, K - 1 - k) for k in range(K - 1, -1, -1)], (0, K - 1), silu
    )


def conv1d_channel_major(
    xc: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, causal: bool, silu: bool
) -> torch.Tensor:
    """:func:`causal_conv1d` (or, with ``causal=False``, :func:`anticausal_conv1d`) as one
    ``F.conv1d`` on channel-major xc (B, E, L) -> (B, E, L) (``conv_form="channel_major"``):
    the form exports translated node by node (ONNX, TensorRT) ask for, one ``Conv`` node per
    direction instead of K shifted copies, products and sums (faster in ONNX Runtime:
    benchmarks/onnx_conv.py, results in benchmarks/results/onnx_conv-*.md)."""
    K = weight.shape[-1]
    ct = torch.promote_types(xc.dtype, torch.float32)
    w = weight.to(ct) if causal else weight.to(ct).flip(-1)
    pad = (K - 1, 0) if causal else (0, K - 1)
    b = None if bias is None else bias.to(ct)
    out = F.conv1d(F.pad(xc.to(ct), pad), w, b, groups=xc.shape[1])
    return (F.silu(out) if silu else out).to(xc.dtype)


def _check_pair(x, weight, bias, weight_b, bias_b) -> tuple[int, int, int, int]:
    """The fused op's arguments, each named where it is wrong -> (B, L, E, K)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{KERNEL}: x must be a (B, L, E) tensor, got {got}")
    B, L, E = x.shape
    for name, w in (("weight", weight), ("weight_b", weight_b)):
        if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[:2] != (E, 1):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(f"{KERNEL}: {name} must be (E, 1, K) = ({E}, 1, K), got {got}")
    if weight.shape != weight_b.shape:
        raise ValueError(
            f"{KERNEL}: weight_b must have weight's shape {tuple(weight.shape)}, "
            f"got {tuple(weight_b.shape)}"
        )
    if weight.shape[2] < 1:
        raise ValueError(f"{KERNEL}: weight must have at least one tap (K >= 1), got K = 0")
    for name, b in (("bias", bias), ("bias_b", bias_b)):
        if b is not None and (not isinstance(b, torch.Tensor) or b.shape != (E,)):
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"{KERNEL}: {name} must be None or ({E},), got {got}")
    named = [(n, t) for n, t in zip(_ARGS, (x, weight, bias, weight_b, bias_b)) if t is not None]
    for name, t in named:
        if not t.dtype.is_floating_point:
            raise ValueError(f"{KERNEL}: {name} must be a floating-point tensor, got {t.dtype}")
    if any(t.device != x.device for _, t in named):
        raise ValueError(f"{KERNEL}: every argument must be on x's device {x.device}")
    return B, L, E, weight.shape[2]


def _shifted_pair(x, weight, bias, weight_b, bias_b):
    """Both directions in the shifted form: what the pair is wherever the C kernel is not."""
    return causal_conv1d(x, weight, bias, silu=True), anticausal_conv1d(
        x, weight_b, bias_b, silu=True
    )


def _c_dtypes(*ts) -> bool:
    """Whether these are what the C kernel takes: CPU float32 (None for an absent bias)."""
    return all(t is None or (t.is_cpu and t.dtype == torch.float32) for t in ts)


def _c_ready(*ts) -> bool:
    """Whether the C kernel takes these: CPU float32, and the kernel built or loaded."""
    return _c_dtypes(*ts) and cpu.c_kernel_available()


def conv1d_silu_pair_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_b: torch.Tensor,
    bias_b: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(silu(causal_conv1d(x, weight, bias)), silu(anticausal_conv1d(x, weight_b, bias_b))) on
    token-major x (B, L, E) -> two (B, L, E) tensors in x's dtype, contiguous. The fused C
    kernel on CPU in float32; the shifted form elsewhere. No autograd formula (see
    :func:`conv1d_silu_pair`)."""
    args = (x, weight, bias, weight_b, bias_b)
    planned = _planned_call(args)
    if planned is not None:
        return planned
    B, L, E, K = _check_pair(*args)
    if x.numel() == 0 or not _c_ready(*args):
        return tuple(u.contiguous() for u in _shifted_pair(x, weight, bias, weight_b, bias_b))
    # inside its storage, each, before a copy below reads it
    check_storage(KERNEL, zip(_ARGS, (x, weight, bias, weight_b, bias_b)))
    if x.stride(2) != 1:
        x = x.contiguous()  # the kernel reads a row's channels adjacent
    params = [weight.reshape(E, K), bias, weight_b.reshape(E, K), bias_b]
    if args[0] is x and all(p is None or p.is_contiguous() for p in params):
        _CHECKED.remember(args, (B, L, E, K))  # a later call with this layout: the kernel
    params = [p if p is None or p.is_contiguous() else p.contiguous() for p in params]
    return _run(x, (B, L, E, K), params)


def _run(x, dims, params) -> tuple[torch.Tensor, torch.Tensor]:
    """The C kernel on checked arguments: x with unit channel stride, params (E, K) weights and
    (E,) biases (or None), contiguous."""
    B, L, E, K = dims
    out, out_b = (new_output((B, L, E), torch.float32, x.device) for _ in range(2))
    ptr = [None if p is None else p.data_ptr() for p in params]
    threads = cpu._threads(B * L)  # the scan's rule: torch's count, at most one per row, 64
    status = cpu._lib.vimc_conv_silu_pair(
        x.data_ptr(), B, L, E, x.stride(0), x.stride(1), ptr[0], ptr[1], ptr[2], ptr[3], K,
        out.data_ptr(), out_b.data_ptr(), threads,
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"{KERNEL}: the C kernel refused its arguments (out of memory?)")
    return out, out_b


# Layouts whose full checks passed. A compiled Vim graph calls the op 24 times per forward with
# one layout; on an AVX2-only Zen 4 a batch-1 op call took 93-95 us this way against 111 us with
# every check (ad hoc).
_CHECKED = cpu_plans.CheckedLayouts()


def _planned_call(args: tuple):
    """The kernel's outputs for ``args`` if their layout passed the full checks before and
    every tensor lies inside its storage; else None (the caller runs the full path)."""
    dims = _CHECKED.lookup(args)
    if dims is None:
        return None
    x, weight, bias, weight_b, bias_b = args
    E, K = dims[2], dims[3]
    return _run(x, dims, (weight.view(E, K), bias, weight_b.view(E, K), bias_b))


_PAIR = _library.define(conv1d_silu_pair_fwd)


@_library.register_fake(_PAIR)
def _(x, weight, bias, weight_b, bias_b):
    B, L, E, _ = _check_pair(x, weight, bias, weight_b, bias_b)
    return x.new_empty((B, L, E)), x.new_empty((B, L, E))


def conv1d_silu_pair(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_b: torch.Tensor,
    bias_b: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Vim mixer's two convolutions with silu: (silu(causal_conv1d(x, weight, bias)),
    silu(anticausal_conv1d(x, weight_b, bias_b))), x token-major (B, L, E), weights (E, 1, K)
    as nn.Conv1d holds them. With grad mode off one ``vimc::conv1d_silu_pair_fwd`` call (the
    fused C kernel on CPU in float32); with grad mode on the shifted form, which autograd
    differentiates. Under torch.compile the op goes into the graph only where its C kernel
    runs (every tensor CPU float32, kernel available); elsewhere the shifted form, which
    Inductor fuses into one loop (on GPUs too), is better than the op's eager fallback."""
    if torch.is_grad_enabled():
        return _shifted_pair(x, weight, bias, weight_b, bias_b)
    # _c_ready's test, with the kernel's availability read once per trace (not traceable)
    if torch.compiler.is_compiling() and not (
        _c_dtypes(x, weight, bias, weight_b, bias_b) and _kernel_ready()
    ):
        return _shifted_pair(x, weight, bias, weight_b, bias_b)
    return _PAIR(x, weight, bias, weight_b, bias_b)


@torch.compiler.assume_constant_result
def _kernel_ready() -> bool:
    """Whether the C kernel runs here, read once when a graph is traced (a constant there)."""
    return cpu.c_kernel_available()
