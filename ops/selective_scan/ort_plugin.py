"""vimc's ONNX Runtime plugin: the custom-op library that runs ``to_onnx(scan="custom")`` files.

``ort_plugin.c`` implements the ``vimc.SelectiveScan`` and ``vimc.SelectiveScanBidirectional``
nodes with the fused CPU kernel (``cpu_kernel.c``) on ONNX Runtime's intra-op thread pool.
:func:`library_path` builds it on first use (about a second, cached like the kernel) and
returns the shared library's path, for ``SessionOptions.register_custom_ops_library`` or a
C/C++ program's ``RegisterCustomOpsLibrary``. It needs onnxruntime >= 1.17 (C API 17) and is
built with ``-march=native``: copy it only to machines with this CPU's instruction set.
"""

from __future__ import annotations

import threading
from pathlib import Path

from . import _cbuild

DOMAIN = "vimc"
OPS = ("SelectiveScan", "SelectiveScanBidirectional")

_path: Path | None = None
_lock = threading.Lock()


def library_path() -> Path:
    """Path of the plugin library, built on first call. Raises RuntimeError (with the
    compiler's message) where no C compiler can build it."""
    global _path
    with _lock:
        if _path is None:
            variants = [["-march=native", "-fvisibility=hidden"], ["-fvisibility=hidden"], []]
            _path = _cbuild.build(
                "ort_plugin.c", "vimc_ort_plugin", variants, includes=["cpu_kernel.c"]
            )
    return _path
