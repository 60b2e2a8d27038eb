"""The "plugin" lowering: the scans stay vimc nodes that vimc's ONNX Runtime plugin runs.

``to_onnx(scan="plugin")`` exports with ``to_exported_program(scan_form="plugin")``: one
``vimc::selective_scan_bidirectional_token_major`` op per Vim layer, which the translation
table makes one ``vimc.SelectiveScanBidirectional`` node (custom domain ``vimc``, opset 1).
It reads the mixer's token-major (batch, L, .) tensors, so no transposes surround it; a scan
without a partner direction stays a ``vimc.SelectiveScan`` node. Nothing is lowered: the file
is marked ``vimc.scan = plugin`` in its metadata, and everything else in it is standard.

vimc's ONNX Runtime plugin (ops/selective_scan/ort_plugin.c) runs both nodes with the same
fused C kernel eager vimc calls; stock runtimes cannot run such a file.
:func:`onnxruntime_session` (runtime.py) registers the plugin for files that need it.
"""

from __future__ import annotations

from pathlib import Path

from .names import SCAN_DOMAIN


def ort_plugin_path(march: str | None = "native") -> Path:
    """The shared library of vimc's ONNX Runtime plugin (built on first call, cached), which
    runs the ``vimc`` nodes of ``scan="plugin"`` files: pass it to
    ``SessionOptions.register_custom_ops_library`` (Python) or ``RegisterCustomOpsLibrary``
    (C/C++). Needs a C compiler and onnxruntime >= 1.17. Built for this machine's CPU, or
    for ``march`` (e.g. ``"x86-64-v3"``; None: the compiler's default target), see
    ``vimc.ops.selective_scan.ort_plugin.library_path``."""
    from vimc.ops.selective_scan.ort_plugin import library_path

    return library_path(march)


def uses_plugin(path) -> bool:
    """Whether the ONNX file ``path`` has nodes in vimc's domain (a ``scan="plugin"`` file)."""
    import onnx

    mp = onnx.load(str(path), load_external_data=False)
    return any(o.domain == SCAN_DOMAIN for o in mp.opset_import)
