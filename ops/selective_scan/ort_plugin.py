"""vimc's ONNX Runtime plugin: the custom-op library that runs ``to_onnx(scan="plugin")`` files.

``ort_plugin.c`` implements the ``vimc.SelectiveScan``, ``vimc.SelectiveScanBidirectional`` and
``vimc.MixerCore`` nodes with the fused CPU kernels (``cpu_kernel.c``) on ONNX Runtime's
intra-op thread pool.
:func:`library_path` builds it on first use (cached like the kernel) and
returns the shared library's path, for ``SessionOptions.register_custom_ops_library`` or a
C/C++ program's ``RegisterCustomOpsLibrary``. It needs onnxruntime >= 1.17 (C API 17). By
default it is the one for this machine's CPU: the best prebuilt variant the CPU runs where the
package carries them (a wheel: see setup.py), else built for it (``-march=native``); ``march``
names another target, to copy to machines of that kind.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from . import _cbuild

_VISIBILITY = "-fvisibility=hidden"  # the library exports RegisterCustomOps alone

_paths: dict[str | None, Path] = {}
_lock = threading.Lock()


def _prebuilt(march: str | None) -> Path | None:
    """The package's prebuilt plugin for ``march`` ("native": the best level this CPU runs)."""
    if march == "native":
        found = _cbuild.prebuilt("vimc_ort_plugin")
        return found[0] if found else None
    path = _cbuild.HERE / _cbuild.PREBUILT_DIR / f"vimc_ort_plugin-{march}.so"
    return path if march is not None and not _cbuild.sanitizing() and path.exists() else None


def library_path(march: str | None = "native") -> Path:
    """Path of the plugin library, built on first call for each ``march``: ``"native"`` (this
    CPU; where the compiler does not know -march=native, its default target), a target the C
    compiler knows (``"x86-64-v3"`` runs on any AVX2 x86 machine, ``"x86-64"`` on any x86-64
    one, ``"armv8-a"`` on 64-bit Arm), or None for the compiler's default target. Raises
    ValueError for a malformed ``march`` and RuntimeError, with the compiler's message, where
    it cannot be built (no C compiler, a target the compiler rejects)."""
    if march is not None and not (isinstance(march, str) and re.fullmatch(r"[\w.+-]+", march)):
        raise ValueError(f"march: expected a -march target such as 'native', got {march!r}")
    with _lock:
        if march not in _paths:
            found = _prebuilt(march)
            if found is not None:
                _paths[march] = found
                return found
            if march == "native":
                variants = [["-march=native", _VISIBILITY], [_VISIBILITY], []]
            elif march is None:
                variants = [[_VISIBILITY], []]
            else:  # asked for by name: no silent fallback to another target
                variants = [[f"-march={march}", _VISIBILITY]]
            stem = "vimc_ort_plugin" + ("" if march in ("native", None) else f"_{march}")
            _paths[march] = _cbuild.build("ort_plugin.c", stem, variants, includes=["cpu_kernel.c"])
    return _paths[march]
