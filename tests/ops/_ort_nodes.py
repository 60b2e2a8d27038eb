"""One-node ONNX graphs of vimc's plugin nodes, their sessions and feeds: shared by the plugin's
tests (test_ort_plugin.py) and its bad-input table (test_bad_input.py). onnx and onnxruntime are
imported when first used, so importing this module never skips a test file."""

from __future__ import annotations

import numpy as np
import torch

from ._scan_cases import DIRECTION, Case, make_inputs

SCAN = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")  # vimc.SelectiveScan's inputs
BIDIR = (*DIRECTION, *(k + "_b" for k in DIRECTION), "z")  # vimc.SelectiveScanBidirectional's
MIXER = (  # vimc.MixerCore's inputs: vimc::mixer_core_fwd's arguments
    "xz", "conv_weight", "conv_bias", "conv_weight_b", "conv_bias_b", "x_proj_weight",
    "x_proj_weight_b", "dt_proj_weight", "dt_proj_bias", "dt_proj_weight_b", "dt_proj_bias_b",
    "A", "A_b", "D", "D_b",
)  # fmt: skip


def node_model(op_type, feeds: dict, outputs: dict, attrs: dict, input_names: list[str]):
    """One ``vimc.<op_type>`` node; ``input_names`` in schema order, "" for an absent one."""
    from onnx import TensorProto, helper

    elem = {
        np.dtype(np.float32): TensorProto.FLOAT,
        np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.int64): TensorProto.INT64,
    }
    node = helper.make_node(op_type, input_names, list(outputs), domain="vimc", name="n", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(k, elem[v.dtype], v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outputs],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("vimc", 1)]
    )


def session(mp, plugin, threads=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(plugin))
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(mp.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_poisoned(sess, feeds: dict, outputs: dict) -> dict:
    """Run with each output bound to a NaN-filled buffer of its expected shape."""
    io = sess.io_binding()
    for k, v in feeds.items():
        io.bind_cpu_input(k, v)
    bufs = {k: np.full(shape, np.nan, np.float32) for k, shape in outputs.items()}
    for k, buf in bufs.items():
        io.bind_output(k, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
    sess.run_with_iobinding(io)
    return {k: torch.from_numpy(v) for k, v in bufs.items()}


def as_numpy(t):
    return t.detach().contiguous().numpy()


def scan_io(c: Case, last_state: bool = True):
    """A vimc.SelectiveScan node's inputs for ``c`` -> (inputs as tensors, feeds, input names
    with "" for an absent one, outputs name -> shape, attributes)."""
    ins = make_inputs(c)
    for k in ("B", "C"):
        if ins[k].dim() == 3:  # the node takes the grouped (Bt, G, N, L) form only
            ins[k] = ins[k].unsqueeze(1)
    feeds = {k: as_numpy(v) for k, v in ins.items() if v is not None}
    names = [k if ins[k] is not None else "" for k in SCAN]
    outputs = {"out": (c.Bt, c.E, c.L)}
    if last_state:
        outputs["last_state"] = (c.Bt, c.E, c.N)
    attrs = dict(delta_softplus=int(c.softplus), reverse=int(c.reverse))
    return ins, feeds, names, outputs, attrs


def bidir_io(ins: dict):
    """make_pair's inputs as the node takes them: the sequences (u, delta, z, B, C and their
    *_b) token-major, (Bt, ..., L) -> (Bt, L, ...); -> (feeds, input names, "" if absent)."""
    seq = {"u", "delta", "B", "C", "z"}
    feeds = {
        k: as_numpy(v.movedim(-1, 1)) if k.removesuffix("_b") in seq else as_numpy(v)
        for k, v in ins.items()
        if v is not None
    }
    return feeds, [k if ins[k] is not None else "" for k in BIDIR]


def mixer_io(args) -> tuple[dict, dict]:
    """A vimc.MixerCore node's feeds (float32, from mixer_core's arguments) and its output's
    shape, for node_model(..., list(MIXER))."""
    B, L, E2 = args[0].shape
    return {k: as_numpy(t.float()) for k, t in zip(MIXER, args)}, {"out": (B, L, E2 // 2)}
