"""vimc's ONNX Runtime plugin (ort_plugin.c) node by node, against float64 reference scans:
one-node ONNX graphs run with outputs bound to NaN-filled buffers, so an element the plugin
never writes fails; shapes, optional inputs, threads, and the errors it reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vimc.ops import selective_scan_reference

from ..tolerances import MIXER_CORE_REL_ERR, OTHER_TARGET_BUILD, SCAN_REL_ERR
from ._ort_nodes import (
    MIXER,
    SCAN,
    bidir_io,
    mixer_io,
    node_model,
    run_poisoned,
    scan_io,
    session,
)
from ._scan_cases import (
    Case,
    describe_mismatch,
    make_pair,
    mixer_core_args,
    pair_reference,
    rel_err,
)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def plugin(ort_plugin):
    return str(ort_plugin)


# ---------------------------------------------------------------------------------------------
# vimc.SelectiveScan: one scan, channel-major, mamba's signature
# ---------------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("c", SCAN_CASES, ids=lambda c: c.id)
def test_scan_node_matches_reference(plugin, c, threads):
    ins, feeds, names, outputs, attrs = scan_io(c)
    sess = session(node_model("SelectiveScan", feeds, outputs, attrs, names), plugin, threads)
    got = run_poisoned(sess, feeds, outputs)
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
    ins, feeds, names, outputs, attrs = scan_io(c, last_state=False)
    sess = session(node_model("SelectiveScan", feeds, outputs, attrs, names), plugin)
    out = run_poisoned(sess, feeds, outputs)["out"]
    ref = selective_scan_reference(*(ins[k] for k in SCAN), c.softplus)
    assert rel_err(out, ref) <= SCAN_REL_ERR[torch.float32][0]


# ---------------------------------------------------------------------------------------------
# vimc.SelectiveScanBidirectional: a Vim mixer's two scans, token-major
# ---------------------------------------------------------------------------------------------

BIDIR_CASES = [
    Case(),
    Case(Bt=1, E=16, L=1, N=16),
    Case(E=13, L=29, N=3),
    Case(E=9, L=13, N=6, D=False, z=False, bias=False),
    Case(E=8, L=20, N=2, softplus=False, bias=False),
    Case(Bt=9, E=64, L=7, N=4),
]


@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("c", BIDIR_CASES, ids=lambda c: c.id)
def test_bidirectional_node_matches_reference(plugin, c, threads):
    ins = make_pair(c)
    feeds, names = bidir_io(ins)
    outputs = {"out": (c.Bt, c.L, c.E)}
    mp = node_model(
        "SelectiveScanBidirectional", feeds, outputs, {"delta_softplus": int(c.softplus)}, names
    )
    out = run_poisoned(session(mp, plugin, threads), feeds, outputs)["out"]
    ref = pair_reference(ins, c.softplus).movedim(-1, 1)
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(out, ref) <= tol, describe_mismatch(out, ref, tol)


# ---------------------------------------------------------------------------------------------
# vimc.MixerCore: a Vim mixer from in_proj's output to out_proj's input (vimc::mixer_core_fwd)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "B, L, E, N, R, K",
    [
        (1, 197, 384, 16, 12, 4),  # Vim-Ti's layer at batch 1: both directions, then the gate
        (3, 17, 16, 5, 3, 3),  # a task per batch row; N off the state block
        (2, 33, 48, 6, 24, 2),  # x_proj wider than one pass of output vectors
        (1, 2, 16, 4, 2, 4),  # more taps than steps
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3], ids=["1thread", "2threads", "3threads"])
def test_mixer_node_matches_the_composition(plugin, B, L, E, N, R, K, threads):
    """The node computes the op's composition (float64) on any intra-op thread count, every
    output written; a second run on the same session (buffers reused) gives the same."""
    from vimc.ops.selective_scan import mixer as mixer_ops

    args = mixer_core_args(B, L, E, N, R, K)
    feeds, outputs = mixer_io(args)
    sess = session(node_model("MixerCore", feeds, outputs, {}, list(MIXER)), plugin, threads)
    got = run_poisoned(sess, feeds, outputs)["out"]
    with torch.no_grad():
        want = mixer_ops.mixer_core_composed(*(a.double() for a in args))
    assert rel_err(got, want) <= MIXER_CORE_REL_ERR
    assert torch.equal(run_poisoned(sess, feeds, outputs)["out"], got)


def test_mixer_node_takes_an_empty_batch(plugin):
    args = mixer_core_args(1, 5, 16, 4, 2, 4)
    feeds, outputs = mixer_io(args)
    feeds["xz"] = feeds["xz"][:0]
    sess = session(node_model("MixerCore", feeds, {"out": (0, 5, 16)}, {}, list(MIXER)), plugin)
    assert sess.run(None, feeds)[0].shape == (0, 5, 16)


@pytest.mark.parametrize(
    "name,shape,match",
    [
        ("xz", (1, 5, 31), r"xz must be \(B, L, 2E\)"),
        ("xz", (1, 5, 20), r"E = xz's last dim / 2 = 10 must be a positive multiple of \d+"),
        ("conv_bias_b", (15,), r"conv_bias_b must have shape \(16\)"),
        ("x_proj_weight", (9, 16), r"x_proj_weight must have shape \(10, 16\)"),
        ("A_b", (16, 5), r"A_b must have shape \(16, 4\)"),
        ("dt_proj_weight", (16, 65), r"dt_proj_weight's rank R must be in \[1, 64\]"),
        ("conv_weight", (16, 1), r"conv_weight must have 3 dimensions, got 2"),
    ],
    ids=["xz-odd", "E-lanes", "conv_bias_b", "x_proj", "A_b", "rank", "conv-rank"],
)
def test_mixer_node_names_a_bad_shape(plugin, name, shape, match):
    args = mixer_core_args(1, 5, 16, 4, 2, 4)
    feeds, outputs = mixer_io(args)
    feeds[name] = np.zeros(shape, np.float32)
    mp = node_model("MixerCore", feeds, outputs, {}, list(MIXER))
    _run_expecting(plugin, mp, feeds, "vimc.MixerCore: " + match)


# ---------------------------------------------------------------------------------------------
# bad input: an error naming the argument, never a crash or a wrong answer
# ---------------------------------------------------------------------------------------------


def _run_expecting(plugin, mp, feeds, match):
    sess = session(mp, plugin)
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
    ins, feeds, names, outputs, attrs = scan_io(c)
    feeds[name] = np.zeros(shape, np.float32)
    if name == "B":
        feeds["C"] = np.zeros(shape, np.float32)
    mp = node_model("SelectiveScan", feeds, outputs, attrs, names)
    _run_expecting(plugin, mp, feeds, "vimc.SelectiveScan: " + match)


def test_bidirectional_node_wants_D_for_both_directions_or_neither(plugin):
    c = Case(E=8, L=5, N=3)
    ins = make_pair(c)
    ins["D_b"] = None
    feeds, names = bidir_io(ins)
    mp = node_model("SelectiveScanBidirectional", feeds, {"out": None}, {}, names)
    _run_expecting(plugin, mp, feeds, "D and delta_bias must each be given for both directions")


def test_float64_input_is_refused_when_the_session_is_made(plugin):
    c = Case(E=8, L=5, N=3)
    ins, feeds, names, outputs, attrs = scan_io(c)
    feeds["u"] = feeds["u"].astype(np.float64)
    mp = node_model("SelectiveScan", feeds, outputs, attrs, names)
    with pytest.raises(Exception, match="SelectiveScan"):
        session(mp, plugin)


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
    ins, feeds, names, outputs, attrs = scan_io(c)
    mp = node_model("SelectiveScan", feeds, outputs, attrs, names)
    other = str(library_path(march))
    assert other != plugin
    got = run_poisoned(session(mp, other), feeds, outputs)
    native = run_poisoned(session(mp, plugin), feeds, outputs)
    for k in outputs:  # the exp and log1p polynomials are the same; only FMA contraction differs
        torch.testing.assert_close(got[k], native[k], **OTHER_TARGET_BUILD)


def test_a_malformed_target_is_named():
    from vimc.ops.selective_scan.ort_plugin import library_path

    with pytest.raises(ValueError, match="march"):
        library_path("x86-64; rm -rf /")
