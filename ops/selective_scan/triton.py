"""The selective scan on CUDA: two families of Triton kernels, chosen by shape, and their
``triton_op`` registration.

- triton_sequential.py: each program keeps the state of 16 channels on chip and walks the
  sequence step by step. Many channel rows (Bt * E, a large batch) fill the GPU with programs.
- triton_chunked.py: time scanned in parallel inside each program (``tl.associative_scan``
  over chunks, the state carried across them), one program per channel row: the latency
  kernel for few rows, where the sequential one would leave most SMs idle.
- _triton_common.py: the tile, parameters, softplus and launch both share.

The launchers below validate their arguments (_checks.py), then run the chunked kernels for at
most ``CHUNKED_MAX_ROWS`` channel rows and the sequential ones above; ``kernel=`` forces
either. op.py routes CUDA tensors to the ``triton_op`` twins registered at the end of this
file, ``vimc::selective_scan_fwd_cuda`` / ``_bwd_cuda``, which Inductor can see into and
AOTInductor can embed.

Registers, spills and shared memory per GPU target: tests/ops/test_triton_targets.py prints
them. Speed: benchmarks/gpu.py, with results in benchmarks/results/ once a GPU has run it.
"""

from __future__ import annotations

import os

import torch

from . import triton_chunked, triton_sequential
from ._alloc import new_output
from ._autograd import backward_with, setup_context
from ._checks import check_scan_args
from ._triton_common import HAS_TRITON, WHO, check_pow2, contiguous_rows

_HAS_TRITON = HAS_TRITON  # the name the tests read

CHUNK = triton_sequential.CHUNK  # the sequential backward's default chunk (the tests' name)

# Channel rows (Bt * E) up to which the chunked kernels run; the sequential ones run above.
# A first guess, to be set from GPU measurements (benchmarks/gpu.py times both kernels at
# batch 1, 8 and 128): at this bound the sequential forward launches Bt * E / 16 = 256
# programs, two per SM of a 132-SM GPU, and fewer below it, where most of the GPU would idle.
CHUNKED_MAX_ROWS = 4096
KERNELS = ("sequential", "chunked")


def triton_op_available() -> bool:
    """True when the Triton kernels can be compiled here: triton imports, a CUDA device is
    present, and we are not under TRITON_INTERPRET (which runs on CPU tensors only)."""
    if not HAS_TRITON or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    try:
        return torch.cuda.is_available()
    except Exception:  # a broken driver install must not break the CPU path
        return False


def kernel_for(Bt: int, E: int, kernel: str | None = None) -> str:
    """Which kernel family scans Bt * E channel rows: ``kernel`` if given, else by
    ``CHUNKED_MAX_ROWS``."""
    if kernel is None:
        return "chunked" if Bt * E <= CHUNKED_MAX_ROWS else "sequential"
    if kernel not in KERNELS:
        raise ValueError(f"{WHO}: kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def selective_scan_fwd_triton(
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    reverse,
    *,
    block_e: int | None = None,
    kernel: str | None = None,
    chunk: int | None = None,
):
    """-> (out in u's dtype, last_state float32 (Bt, E, N)). B, C are (Bt, G, N, L); any
    strides. ``kernel``: "sequential" or "chunked" (default: by shape); ``block_e`` and
    ``chunk`` (powers of two) override the kernel's channel block and, for the chunked
    kernel, its chunk of steps."""
    dims = check_scan_args(u, delta, A, B, C, D, z, delta_bias, who=WHO, grouped_only=True)
    kernel = kernel_for(dims.Bt, dims.E, kernel)
    if chunk is not None:
        check_pow2("chunk", chunk)
    out = new_output((dims.Bt, dims.E, dims.L), u.dtype, u.device)
    if dims.Bt * dims.E == 0:
        return out, new_output((dims.Bt, dims.E, dims.N), torch.float32, u.device)
    ins = contiguous_rows(u, delta, A, B, C, D, z, delta_bias)
    if kernel == "chunked":
        last = triton_chunked.forward(dims, ins, delta_softplus, reverse, block_e, chunk, out=out)
    else:
        last = triton_sequential.forward(dims, ins, delta_softplus, reverse, block_e, out=out)
    return out, last


def selective_scan_bwd_triton(
    dout,
    dlast,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    reverse,
    *,
    block_e: int | None = None,
    kernel: str | None = None,
    chunk: int | None = None,
):
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), each shaped and typed like its input,
    None where the optional input was None. Any strides. ``kernel``, ``block_e``: as the
    forward's; ``chunk`` (a power of two) overrides the kernel's backward chunk (the
    sequential one's CHUNK)."""
    dims = check_scan_args(
        u, delta, A, B, C, D, z, delta_bias, dout=dout, dlast=dlast, who=WHO, grouped_only=True
    )
    kernel = kernel_for(dims.Bt, dims.E, kernel)
    if chunk is not None:
        check_pow2("chunk", chunk)
    if dims.Bt * dims.E * dims.L == 0:  # nothing to scan: every gradient is zero
        ins = (u, delta, A, B, C, D, z, delta_bias)
        return tuple(None if t is None else torch.zeros_like(t) for t in ins)
    dout, dlast, *ins = contiguous_rows(dout, dlast, u, delta, A, B, C, D, z, delta_bias)
    args = (dims, dout, dlast, ins, delta_softplus, reverse, block_e)
    if kernel == "chunked":
        return triton_chunked.backward(*args, chunk)
    return triton_sequential.backward(*args, triton_sequential.CHUNK if chunk is None else chunk)


# ---------------------------------------------------------------------------------------------
# op registration: triton_op twins of vimc::selective_scan_fwd / _bwd (op.py)
# ---------------------------------------------------------------------------------------------

_GRADS = tuple[(torch.Tensor,) * 8]  # (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)

if HAS_TRITON:

    @torch.library.triton_op("vimc::selective_scan_fwd_cuda", mutates_args=())
    def selective_scan_fwd_cuda(
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
        """Same contract as vimc::selective_scan_fwd; the kernels are visible to Inductor."""
        return selective_scan_fwd_triton(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )

    @torch.library.triton_op("vimc::selective_scan_bwd_cuda", mutates_args=())
    def selective_scan_bwd_cuda(
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
    ) -> _GRADS:
        """Same contract as vimc::selective_scan_bwd: an absent input gets an empty gradient."""
        grads = selective_scan_bwd_triton(
            dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )
        return tuple(u.new_empty(0) if g is None else g for g in grads)

    torch.library.register_autograd(
        "vimc::selective_scan_fwd_cuda",
        backward_with(torch.ops.vimc.selective_scan_bwd_cuda),
        setup_context=setup_context,
    )
