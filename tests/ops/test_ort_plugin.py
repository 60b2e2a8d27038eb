"""vimc's ONNX Runtime plugin (ort_plugin.c) node by node, against float64 reference scans:
one-node ONNX graphs run with outputs bound to NaN-filled buffers, so an element the plugin
never writes fails; shapes, optional inputs, threads, and the errors it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vimc.ops import selective_scan_reference

from ..tolerances import OTHER_TARGET_BUILD, SCAN_REL_ERR
from ._scan_cases import (
    DIRECTION,
    Case,
    describe_mismatch,
    make_inputs,
    make_pair,
    pair_reference,
    rel_err,
)

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


@pytest.fixture(scope="module")
def plugin(ort_plugin):
    return str(ort_plugin)


def _node_model(op_type, feeds: dict, outputs: dict, attrs: dict, input_names: list[str]):
    """One ``vimc.<op_type>`` node; ``input_names`` in schema order, "" for an absent one."""
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
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


def _session(mp, plugin, threads=None):
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(plugin)
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(mp.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run_poisoned(sess, feeds: dict, outputs: dict) -> dict:
    """Run with each output bound to a NaN-filled buffer of its expected shape."""
    io = sess.io_binding()
    for k, v in feeds.items():
        io.bind_cpu_input(k, v)
    bufs = {k: np.full(shape, np.nan, np.float32) for k, shape in outputs.items()}
    for k, buf in bufs.items():
        io.bind_output(k, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
    sess.run_with_iobinding(io)
    return {k: torch.from_numpy(v) for k, v in bufs.items()}


def _np(t):
    return t.detach().contiguous().numpy()


# ---------------------------------------------------------------------------------------------
# vimc.SelectiveScan: one scan, channel-major, mamba's signature
# ---------------------------------------------------------------------------------------------

SCAN = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

SCAN_CASES = [
    Case(),
    Case(reverse=True),
    Case(Bt=1, E=16, L=1, N=16),
    Case(E=13, L=29, N=3),  # a partial block of 8 channels
    Case(E=12, L=17, N=4, G=3, reverse=True),
    Case(E=9, L=13, N=6, D=False, z=False, bias=False),
    Case(E=8, L=20, N=2, softplus=False, bias=False, reverse=True),
    Case(Bt=9, E=64, L=7, N=4),  # 72 blocks of 8 channels: more than the 64 chunks
]


def _scan_io(c: Case, last_state: bool = True):
    ins = make_inputs(c)
    for k in ("B", "C"):
        if ins[k].dim() == 3:  # the node takes the grouped (Bt, G, N, L) form only
            ins[k] = ins[k].unsqueeze(1)
    feeds = {k: _np(v) for k, v in ins.items() if v is not None}
    names = [k if ins[k] is not None else "" for k in SCAN]
    outputs = {"out": (c.Bt, c.E, c.L)}
    if last_state:
        outputs["last_state"] = (c.Bt, c.E, c.N)
    attrs = dict(delta_softplus=int(c.softplus), reverse=int(c.reverse))
    return ins, feeds, names, outputs, attrs


@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("c", SCAN_CASES, ids=lambda c: c.id)
def test_scan_node_matches_reference(plugin, c, threads):
    ins, feeds, names, outputs, attrs = _scan_io(c)
    sess = _session(_node_model("SelectiveScan", feeds, outputs, attrs, names), plugin, threads)
    got = _run_poisoned(sess, feeds, outputs)
    x = {k: None if v is None else v.to(torch.float64) for k, v in ins.items()}
    ref, ref_last = selective_scan_reference(
        *(x[k] for k in SCAN), c.softplus, return_last_state=True, reverse=c.reverse
    )
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(got["out"], ref) <= tol, describe_mismatch(got["out"], ref, tol)
    last = got["last_state"]
    assert rel_err(last, ref_last) <= tol, describe_mismatch(last, ref_last, tol)


def test_scan_node_without_last_state_output(plugin):
    c = Case(E=12, L=9, N=4)
    ins, feeds, names, outputs, attrs = _scan_io(c, last_state=False)
    sess = _session(_node_model("SelectiveScan", feeds, outputs, attrs, names), plugin)
    out = _run_poisoned(sess, feeds, outputs)["out"]
    ref = selective_scan_reference(*(ins[k] for k in SCAN), c.softplus)
    assert rel_err(out, ref) <= SCAN_REL_ERR[torch.float32][0]


# ---------------------------------------------------------------------------------------------
# vimc.SelectiveScanBidirectional: a Vim mixer's two scans, token-major
# ---------------------------------------------------------------------------------------------

BIDIR = (*DIRECTION, *(k + "_b" for k in DIRECTION), "z")

BIDIR_CASES = [
    Case(),
    Case(Bt=1, E=16, L=1, N=16),
    Case(E=13, L=29, N=3),
    Case(E=9, L=13, N=6, D=False, z=False, bias=False),
    Case(E=8, L=20, N=2, softplus=False, bias=False),
    Case(Bt=9, E=64, L=7, N=4),
]


def _bidir_io(ins: dict):
    """make_pair's inputs as the node takes them: the sequences (u, delta, z, B, C and their
    *_b) token-major, (Bt, ..., L) -> (Bt, L, ...); -> (feeds, input names, "" if absent)."""
    seq = {"u", "delta", "B", "C", "z"}
    feeds = {
        k: _np(v.movedim(-1, 1)) if k.removesuffix("_b") in seq else _np(v)
        for k, v in ins.items()
        if v is not None
    }
    return feeds, [k if ins[k] is not None else "" for k in BIDIR]


@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("c", BIDIR_CASES, ids=lambda c: c.id)
def test_bidirectional_node_matches_reference(plugin, c, threads):
    ins = make_pair(c)
    feeds, names = _bidir_io(ins)
    outputs = {"out": (c.Bt, c.L, c.E)}
    mp = _node_model(
        "SelectiveScanBidirectional", feeds, outputs, {"delta_softplus": int(c.softplus)}, names
    )
    out = _run_poisoned(_session(mp, plugin, threads), feeds, outputs)["out"]
    ref = pair_reference(ins, c.softplus).movedim(-1, 1)
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(out, ref) <= tol, describe_mismatch(out, ref, tol)


# ---------------------------------------------------------------------------------------------
# bad input: an error naming the argument, never a crash or a wrong answer
# ---------------------------------------------------------------------------------------------


def _run_expecting(plugin, mp, feeds, match):
    sess = _session(mp, plugin)
    with pytest.raises(Exception, match=match):
        sess.run(None, feeds)


@pytest.mark.parametrize(
    "name,shape,match",
    [
        ("delta", (2, 12, 32), r"delta must have shape \(2, 12, 33\)"),
        ("C", (2, 1, 4, 33), r"C must have shape \(2, 1, 5, 33\)"),
        ("D", (11,), r"D must have shape \(12\)"),
        ("A", (12, 5, 1), r"A must have 2 dimensions, got 3"),
        ("B", (2, 5, 5, 33), r"B's group count G = 5 must divide E = 12"),
    ],
    ids=["delta", "C", "D", "A-rank", "B-groups"],
)
def test_scan_node_names_a_bad_shape(plugin, name, shape, match):
    c = Case()
    ins, feeds, names, outputs, attrs = _scan_io(c)
    feeds[name] = np.zeros(shape, np.float32)
    if name == "B":
        feeds["C"] = np.zeros(shape, np.float32)
    mp = _node_model("SelectiveScan", feeds, outputs, attrs, names)
    _run_expecting(plugin, mp, feeds, "vimc.SelectiveScan: " + match)


def test_bidirectional_node_wants_D_for_both_directions_or_neither(plugin):
    c = Case(E=8, L=5, N=3)
    ins = make_pair(c)
    ins["D_b"] = None
    feeds, names = _bidir_io(ins)
    mp = _node_model("SelectiveScanBidirectional", feeds, {"out": None}, {}, names)
    _run_expecting(plugin, mp, feeds, "D and delta_bias must each be given for both directions")


def test_float64_input_is_refused_when_the_session_is_made(plugin):
    c = Case(E=8, L=5, N=3)
    ins, feeds, names, outputs, attrs = _scan_io(c)
    feeds["u"] = feeds["u"].astype(np.float64)
    mp = _node_model("SelectiveScan", feeds, outputs, attrs, names)
    with pytest.raises(Exception, match="SelectiveScan"):
        _session(mp, plugin)


# ---------------------------------------------------------------------------------------------
# builds for other machines: the same numbers from a library built for another target
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("march", [None, "x86-64-v3"], ids=["compiler-default", "x86-64-v3"])
def test_a_build_for_another_target_computes_the_same(plugin, march):
    import platform

    from vimc.ops.selective_scan.ort_plugin import library_path

    if march and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"-march={march} is an x86-64 target; this machine is {platform.machine()}")
    c = Case(E=13, L=29, N=3)
    ins, feeds, names, outputs, attrs = _scan_io(c)
    mp = _node_model("SelectiveScan", feeds, outputs, attrs, names)
    other = str(library_path(march))
    assert other != plugin
    got = _run_poisoned(_session(mp, other), feeds, outputs)
    native = _run_poisoned(_session(mp, plugin), feeds, outputs)
    for k in outputs:  # the exp and log1p polynomials are the same; only FMA contraction differs
        torch.testing.assert_close(got[k], native[k], **OTHER_TARGET_BUILD)


def test_a_malformed_target_is_named():
    from vimc.ops.selective_scan.ort_plugin import library_path

    with pytest.raises(ValueError, match="march"):
        library_path("x86-64; rm -rf /")
