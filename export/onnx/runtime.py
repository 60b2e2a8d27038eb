"""Running an exported file in ONNX Runtime: a session (with vimc's plugin registered when the
file needs it) and a call from torch tensors to torch tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from .plugin import ort_plugin_path, uses_plugin


def onnxruntime_session(
    path,
    *,
    threads: int | None = None,
    providers=None,
    spinning: bool | None = None,
    plugin: bool | None = None,
):
    """An ``onnxruntime.InferenceSession`` for ``path`` with full graph optimization.
    ``spinning=False`` stops ONNX Runtime's idle threads from busy-waiting after each run
    (its default keeps them spinning, which is fastest when it owns the machine but takes
    the cores from whatever runs next in the process). ``plugin``: register vimc's plugin
    (:func:`ort_plugin_path`); default: when the file has ``vimc`` nodes, which reads the file
    once more before ONNX Runtime does (pass True or False to skip that)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ValueError(f"path: no ONNX file at {str(path)!r}")
    opts = ort.SessionOptions()
    if plugin or (plugin is None and uses_plugin(path)):
        opts.register_custom_ops_library(str(ort_plugin_path()))
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def run_onnxruntime(session, x: torch.Tensor) -> torch.Tensor:
    """Run a session on a torch tensor; returns the first output as a torch tensor."""
    name = session.get_inputs()[0].name
    arr = x.detach().cpu()
    if arr.dtype == torch.bfloat16:
        raise TypeError("ONNX Runtime takes no bfloat16 numpy input; use float32 or float16")
    return torch.from_numpy(session.run(None, {name: arr.numpy()})[0])
