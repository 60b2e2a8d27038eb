"""ONNX: a Vim as an ONNX file, its selective scans in standard operators or as plugin nodes.

The route, one module per stage (read them in this order):

1. names.py: the graph's input/output names, the ``vimc`` domain's nodes, the lowerings
   ``to_onnx(scan=...)`` takes and their old spellings.
2. translation.py: ``torch.export`` (export/program.py) -> ``torch.onnx.export(dynamo=True)``
   with a translation table that turns each of vimc's scan ops into a ``vimc`` node.
3. builder.py: the node builder and graph walks the lowerings use.
4. The lowerings (``scan=``), each exponent ``delta * A`` <= 0 and nothing exponentiated over
   a cumulative sum:
   - step.py, ``"step"``: each ``vimc.SelectiveScan`` placeholder becomes an ONNX ``Scan``
     whose body runs one recurrence step on cache-sized tensors;
   - paired.py, ``"paired"`` (the default): as "step", with a layer's two directions in one
     ``Scan``: half the loop iterations;
   - plugin.py, ``"plugin"``: one ``vimc.SelectiveScanBidirectional`` node per layer, run by
     vimc's ONNX Runtime plugin (stock runtimes cannot run it).
5. exporter.py: :func:`to_onnx` and :func:`export_onnx_proto`, which run the stages,
   ``onnx.checker`` and the atomic write.
6. runtime.py: :func:`onnxruntime_session` (registers the plugin for files that need it) and
   :func:`run_onnxruntime`.

Which lowering is fastest where: README, "The scan in ONNX" (benchmarks/onnx_scan.py and
benchmarks/export.py, results in benchmarks/results/).

Inputs and outputs: ``pixel_values`` (batch, 3, H, W) float -> ``logits`` (batch,
num_classes); the batch axis is the symbol ``batch`` unless ``dynamic_batch=False``.
"""

from __future__ import annotations

import warnings

from .builder import iter_nodes, nonstandard_nodes
from .exporter import export_onnx_proto, to_onnx
from .names import (
    BATCH_AXIS,
    BIDIR_OP,
    DEFAULT_SCAN,
    INPUT_NAME,
    MIN_OPSET,
    MIXER_OP,
    OUTPUT_NAME,
    SCAN_DOMAIN,
    SCAN_LOWERINGS,
    SCAN_OP,
    STANDARD_LOWERINGS,
    STEP_UNROLL,
    read_scan_lowering,
    resolve_lowering,
)
from .paired import lower_scan_pair, lower_scans, scan_pairs
from .plugin import ort_plugin_path, uses_plugin
from .runtime import onnxruntime_session, run_onnxruntime
from .step import lower_scan_node

__all__ = [
    "BATCH_AXIS",
    "BIDIR_OP",
    "MIXER_OP",
    "DEFAULT_SCAN",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "SCAN_DOMAIN",
    "SCAN_LOWERINGS",
    "SCAN_OP",
    "STANDARD_LOWERINGS",
    "STEP_UNROLL",
    "export_onnx_proto",
    "iter_nodes",
    "lower_scan_node",
    "lower_scan_pair",
    "lower_scans",
    "nonstandard_nodes",
    "onnxruntime_session",
    "ort_plugin_path",
    "read_scan_lowering",
    "resolve_lowering",
    "run_onnxruntime",
    "scan_pairs",
    "to_onnx",
    "uses_plugin",
]

# the names of these tuples before the lowerings were renamed, for one release
_OLD_NAMES = {"SCAN_FORMULATIONS": "SCAN_LOWERINGS", "LOWERINGS": "STANDARD_LOWERINGS"}


def __getattr__(name: str):
    if name in _OLD_NAMES:
        new = _OLD_NAMES[name]
        warnings.warn(
            f"vimc.export.onnx.{name} is deprecated and will be removed in the next release; "
            f"use {new}",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
