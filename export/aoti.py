"""AOTInductor: a ``.pt2`` package that ``torch._inductor.aoti_load_package`` runs.

Where it runs:

- CPU packages: Inductor compiles the linears, norms and the rest to C++; each mixer's core
  (both directions' conv, x_proj, dt_proj, scan and gate) stays one call of the registered
  ``vimc::mixer_core_fwd`` op (an opaque op with a C kernel behind ctypes;
  ``scan_form="core"``, the default, as compiled models run), so the process that loads the
  package must ``import vimc`` first (``load_aoti`` does). ``scan_form="bidirectional"``
  keeps the four calls per layer it had before: ``vimc::conv1d_silu_pair_fwd``, two x_proj
  GEMMs and ``vimc::selective_scan_bidirectional_proj_fwd`` (both directions and their dt_proj
  linears); "core" records that form too where the core's kernel does not run.
- CUDA packages: on CUDA the model calls the ``triton_op`` twin of the scan, which Inductor
  sees into, so its Triton kernels are compiled into the package and the package needs no
  vimc Python registration at load time (untested on this project's CPU CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ._atomic import atomic_path, check_writable
from ._common import TORCH_EXPORT_LOCK, quiet_torch_export
from .program import to_exported_program


def to_aoti(
    model,
    path,
    *,
    example: torch.Tensor | None = None,
    dynamic_batch: bool = True,
    max_batch: int = 4096,
    freezing: bool = True,
    inductor_configs: dict | None = None,
    scan_form: str = "core",
) -> Path:
    """Compile ``model`` with AOTInductor into the package ``path`` (a ``.pt2`` file),
    written atomically. ``freezing`` constant-folds the weights into the package (faster on
    CPU). ``scan_form``: on CPU, one mixer core call per layer (:func:`to_exported_program`);
    ``"bidirectional"`` one scan call per layer for both directions, ``"per_direction"`` one
    ``vimc::selective_scan_fwd`` per direction. Returns the path."""
    if not str(path).endswith(".pt2"):
        raise ValueError(f"path must end with .pt2 (AOTInductor's package format), got {path!r}")
    check_writable(path, arg="path")
    ep = to_exported_program(
        model,
        example,
        dynamic_batch=dynamic_batch,
        max_batch=max_batch,
        scan_form=scan_form,
    )
    configs = {"freezing": bool(freezing), **(inductor_configs or {})}
    with atomic_path(path, arg="path") as tmp, TORCH_EXPORT_LOCK, quiet_torch_export():
        os.unlink(tmp)  # the packager writes the file itself
        torch._inductor.aoti_compile_and_package(
            ep, package_path=str(tmp), inductor_configs=configs
        )
    return Path(path)


def load_aoti(path, *, device_index: int = -1):
    """Load a package written by :func:`to_aoti`; returns a callable ``runner(x) -> logits``.
    Imports vimc first so the vimc ops a CPU package calls back into are registered."""
    import vimc.ops  # noqa: F401  (registers the vimc ops a CPU package calls)

    if not Path(path).is_file():
        raise ValueError(f"path: no AOTInductor package at {str(path)!r}")
    return torch._inductor.aoti_load_package(str(path), device_index=device_index)
