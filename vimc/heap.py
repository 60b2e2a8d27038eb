"""Freed memory kept in the process for the next forward, instead of handed back to the kernel.

A compiled Vim-Ti forward at batch 8 allocates and frees a few MB per op output (2.4 MB per
layer for the mixer core's, and, before that op, per output of every conv and scan call: 72
per forward) besides Inductor's own buffers. glibc's malloc hands
the top of its heap back to the kernel whenever more than its trim threshold lies free there
(by default twice the largest block freed so far: a few MB here), so the next forward faults
those pages in again. The project's workers are VMs whose virtio balloon reports free pages to
the host, which may reclaim them meanwhile. On the AVX2-only Zen 4 worker, a round robin of
compiled Vim-Ti and DeiT-Ti at batch 8 took 2,200-3,000 minor page faults per forward (most in
the scan's and the conv's output writes, before the mixer core op); with the thresholds below,
38-117 (benchmarks/model.py counts them per run, ``--heap default`` for glibc's own).

:func:`keep_freed_memory` raises glibc's trim threshold (freed memory stays in the heap up to
that much) and fixes its mmap threshold (blocks below it come from the heap, so they are
reused instead of unmapped on free). It is a process-wide setting, so vimc applies it only
where it owns the process: ``vimc serve`` replicas and ``vimc predict-folder`` actors (through
their :class:`~vimc.serve.predictor.Predictor`), and ``benchmarks/model.py``'s workers, where
it holds for both models alike. A library user opts in by calling it. PyTorch's own CPU
launcher (``torch.backends.xeon.run_cpu``) does the same job by preloading tcmalloc or
jemalloc; this needs no library installed. ``VIMC_KEEP_HEAP=0`` turns it off everywhere.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_MAX_MIB = 32  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
DEFAULT_TRIM_MIB = 256

_kept: tuple[int, int] | None = None  # (trim, mmap) MiB once applied in this process


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not glibc, or no confstr (Windows)
        return False


def keep_freed_memory(trim_mib: int = DEFAULT_TRIM_MIB, mmap_mib: int = MMAP_MAX_MIB) -> bool:
    """Keep up to ``trim_mib`` MiB of freed memory in glibc's heap, and serve blocks below
    ``mmap_mib`` MiB (at most 32) from it -> whether the setting now holds. False, changing
    nothing, where the C library is not glibc or ``VIMC_KEEP_HEAP=0`` is set."""
    global _kept
    limits = (("trim_mib", trim_mib, 0, 1 << 20), ("mmap_mib", mmap_mib, 1, MMAP_MAX_MIB))
    for name, value, low, high in limits:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(
                f"keep_freed_memory: {name} must be an int in [{low}, {high}], got {value!r}"
            )
    if os.environ.get("VIMC_KEEP_HEAP", "1") == "0" or not _glibc():
        return False
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success; setting either fixes both thresholds (no more dynamic ones)
    ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_mib << 20) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, trim_mib << 20) == 1 and ok
    if ok:
        _kept = (trim_mib, mmap_mib)
    return ok


def heap_policy() -> str:
    """What this process's heap does with freed memory, for result headers."""
    if _kept is None:
        return "the C library's default"
    return f"kept (glibc trim threshold {_kept[0]} MiB, mmap threshold {_kept[1]} MiB)"
