"""vimc.export: deployment routes (installed from the export/ folder), one module per route.

- ``to_exported_program`` (program.py): the torch.export graph every route starts from.
- ``to_aoti`` / ``load_aoti`` (aoti.py): an AOTInductor ``.pt2`` package.
- ``to_onnx`` (the onnx/ package): an ONNX file of standard operators only (the scan as a
  ``Scan`` loop), or with ``scan="plugin"`` vimc nodes that vimc's ONNX Runtime plugin runs
  (``ort_plugin_path``); ``onnxruntime_session`` runs either.
- ``to_tensorrt`` / ``trtexec_command`` (tensorrt.py): torch-tensorrt with the scan as a plugin.
- ``compare`` (parity.py): parity of backends against float32 eager.
- cli.py: ``vimc export``, ``vimc parity`` and ``vimc ort-plugin`` (``add_export_parser``,
  ``add_parity_parser``, ``add_ort_plugin_parser``).

Heavy imports (onnx, onnxscript, onnxruntime, torch_tensorrt) happen inside the functions.
"""

from .aoti import load_aoti, to_aoti
from .onnx import onnxruntime_session, ort_plugin_path, to_onnx
from .parity import BACKENDS, ParityReport, ParityRow, compare, metrics
from .program import to_exported_program
from .tensorrt import tensorrt_unavailable_reason, to_tensorrt, trtexec_command

__all__ = [
    "BACKENDS",
    "ParityReport",
    "ParityRow",
    "compare",
    "load_aoti",
    "metrics",
    "onnxruntime_session",
    "ort_plugin_path",
    "tensorrt_unavailable_reason",
    "to_aoti",
    "to_exported_program",
    "to_onnx",
    "to_tensorrt",
    "trtexec_command",
]
