"""ONNX export: standard operators only, one file for every batch, parity with eager."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from vimc.export import onnxruntime_session, to_onnx
from vimc.export.onnx import (
    SCAN_DOMAIN,
    SCAN_OP,
    iter_nodes,
    lower_scan_node,
    lower_scans,
    nonstandard_nodes,
    read_scan_lowering,
    run_onnxruntime,
    scan_pairs,
)
from vimc.ops import selective_scan

from ..tolerances import ONNX_SCAN_FLOAT16_VS_OP, ONNX_SCAN_VS_OP, ONNX_VS_EAGER
from .conftest import assert_onnx_parity


def _check_file(path, *, img):
    mp = onnx.load(str(path))
    onnx.checker.check_model(mp, full_check=True)
    assert nonstandard_nodes(mp) == []
    assert {o.domain for o in mp.opset_import} <= {"", "ai.onnx"}
    assert any(n.op_type == "Scan" for n in mp.graph.node)
    assert not any(n.domain == SCAN_DOMAIN for n in iter_nodes(mp.graph))
    (inp,), (out,) = mp.graph.input, mp.graph.output
    assert (inp.name, out.name) == ("pixel_values", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, img, img]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"
    return mp


@pytest.mark.slow
def test_vim_tiny_onnx_standard_ops_batch_1_and_3(tiny_model, tiny_onnx, images):
    _check_file(tiny_onnx, img=224)
    assert_onnx_parity(tiny_onnx, tiny_model, images[224])


@pytest.mark.slow
def test_small_onnx_standard_ops_batch_1_and_3(small_model, small_onnx, images):
    mp = _check_file(small_onnx, img=64)
    # 2 layers, the two directions of each in one Scan ("paired", the default)
    assert sum(n.op_type == "Scan" for n in mp.graph.node) == 2
    # each direction's depthwise conv is one Conv node (conv1d_channel_major), not K shifted
    # multiply-adds
    assert sum(n.op_type == "Conv" for n in mp.graph.node) == 4
    # x_proj's stored weight, not the padded one compiled models use (program.model_forms)
    assert not any(n.op_type == "Pad" for n in mp.graph.node)
    assert {p.key: p.value for p in mp.metadata_props}["vimc.scan"] == "paired"
    assert_onnx_parity(small_onnx, small_model, images[64])
    # the session the export benchmark times ORT with: same numbers, idle threads not spinning
    quiet = onnxruntime_session(small_onnx, threads=2, spinning=False)
    key = "session.intra_op.allow_spinning"
    assert quiet.get_session_options().get_session_config_entry(key) == "0"
    x = images[64][:2]
    torch.testing.assert_close(
        run_onnxruntime(quiet, x), run_onnxruntime(onnxruntime_session(small_onnx), x)
    )


@pytest.mark.slow
def test_non_default_img_size(tmp_path):
    import vimc

    torch.manual_seed(0)
    model = vimc.create_model("vim_tiny", depth=1, embed_dim=64, img_size=80).eval()
    path = to_onnx(model, tmp_path / "m80.onnx")
    _check_file(path, img=80)
    assert_onnx_parity(path, model, torch.randn(3, 3, 80, 80))


@pytest.mark.slow
@pytest.mark.parametrize(
    "scan,unroll,tag,scans",
    [("step", 2, "step(2)", 4), ("paired", 3, "paired(3)", 2)],  # scans: one per direction/layer
)
def test_other_lowerings_unrolled_and_fixed_batch(
    small_model, images, tmp_path, scan, unroll, tag, scans
):
    path = to_onnx(
        small_model,
        tmp_path / "u.onnx",
        scan=scan,
        unroll=unroll,
        dynamic_batch=False,
        example=images[64][:2],
    )
    mp = onnx.load(str(path))
    assert nonstandard_nodes(mp) == []
    assert {p.key: p.value for p in mp.metadata_props}["vimc.scan"] == tag
    assert sum(n.op_type == "Scan" for n in mp.graph.node) == scans
    assert mp.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    with torch.no_grad():
        ref = small_model(images[64][:2])
    out = run_onnxruntime(onnxruntime_session(path), images[64][:2])
    assert (out - ref).abs().max().item() <= ONNX_VS_EAGER


@pytest.mark.slow
def test_old_name_bidir_warns_and_writes_the_paired_file(small_model, small_onnx, tmp_path):
    with pytest.warns(FutureWarning, match="scan='bidir' is deprecated.*'paired'"):
        path = to_onnx(small_model, tmp_path / "old.onnx", scan="bidir")
    old, new = onnx.load(str(path)), onnx.load(str(small_onnx))
    assert [n.op_type for n in iter_nodes(old.graph)] == [n.op_type for n in iter_nodes(new.graph)]
    assert read_scan_lowering(old) == read_scan_lowering(new) == "paired"
    assert nonstandard_nodes(old) == []
    assert_onnx_parity(path, small_model, torch.randn(3, 3, 64, 64))


@pytest.mark.parametrize("removed", ["scan", "unrolled"])
def test_removed_lowerings_raise_naming_the_choices(small_model, tmp_path, removed):
    with pytest.raises(ValueError, match=f"scan='{removed}' was removed.*'step' or 'paired'"):
        to_onnx(small_model, tmp_path / "m.onnx", scan=removed, unroll=2)
    node = helper.make_node(SCAN_OP, ["u", "d", "A", "B", "C"], ["o"], domain=SCAN_DOMAIN)
    with pytest.raises(ValueError, match="was removed.*'step' or 'paired'"):
        lower_scan_node(node, removed)
    assert list(tmp_path.iterdir()) == []


def test_read_scan_lowering_reads_old_names_as_new():
    def proto(value):
        mp = helper.make_model(helper.make_graph([], "g", [], []))
        if value is not None:
            mp.metadata_props.add(key="vimc.scan", value=value)
        return mp

    cases = {"custom": "plugin", "bidir": "paired", "bidir(2)": "paired(2)", "step(3)": "step(3)"}
    for old, new in {**cases, "plugin": "plugin", "paired": "paired"}.items():
        assert read_scan_lowering(proto(old)) == new
    assert read_scan_lowering(proto(None)) is None


def test_nonstandard_nodes_are_found_inside_subgraphs():
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Plugin", ["x"], ["y"], domain="acme")],
        "body",
        [helper.make_tensor_value_info("x", f, [1])],
        [helper.make_tensor_value_info("y", f, [1])],
    )
    outer = helper.make_graph(
        [helper.make_node("If", ["c"], ["o"], then_branch=body, else_branch=body)],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("o", f, [1])],
    )
    assert nonstandard_nodes(helper.make_model(outer)) == ["acme::Plugin"] * 2


# ---------------------------------------------------------------------------------------------
# the lowering of one scan, against the op (fast: no torch.export involved)
# ---------------------------------------------------------------------------------------------


def _scan_model(lowering, unroll, present, reverse, softplus, dtype=TensorProto.FLOAT):
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    ins = [n if (n in present or n in names[:5]) else "" for n in names]
    node = helper.make_node(
        SCAN_OP,
        ins,
        ["out", "last"],
        domain=SCAN_DOMAIN,
        name="ss",
        delta_softplus=int(softplus),
        reverse=int(reverse),
    )
    nodes = lower_scan_node(node, lowering, unroll)
    shapes = {
        "u": ["Bt", "E", "L"],
        "delta": ["Bt", "E", "L"],
        "z": ["Bt", "E", "L"],
        "A": ["E", "N"],
        "B": ["Bt", "G", "N", "L"],
        "C": ["Bt", "G", "N", "L"],
        "D": ["E"],
        "delta_bias": ["E"],
    }
    inputs = [
        helper.make_tensor_value_info(
            n, dtype if n in ("u", "delta", "z") else TensorProto.FLOAT, shapes[n]
        )
        for n in ins
        if n
    ]
    outputs = [
        helper.make_tensor_value_info("out", dtype, ["Bt", "E", "L"]),
        helper.make_tensor_value_info("last", TensorProto.FLOAT, ["Bt", "E", "N"]),
    ]
    mp = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 18)]
    )
    onnx.checker.check_model(mp, full_check=True)
    return mp, [n for n in ins if n]


LOWERINGS = [("step", 1), ("step", 3), ("step", 4), ("step", 7), ("paired", 1), ("paired", 2)]
LOWERING_IDS = [f"{f}-k{k}" for f, k in LOWERINGS]
CASES = {  # name: (inputs present beside u, delta, A, B, C; softplus; groups G)
    "all-G1": ({"D", "z", "delta_bias"}, True, 1),
    "bare-G2": (set(), False, 2),
    "D-bias-G4": ({"D", "delta_bias"}, True, 4),
}


def _scan_inputs(seed, Bt, E, N, L, G, softplus):
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(Bt, E, L, generator=g)
    return {
        "u": torch.randn(Bt, E, L, generator=g),
        "delta": delta if softplus else delta.abs() * 0.1 + 0.5,
        "A": -torch.rand(E, N, generator=g) * 2,
        "B": torch.randn(Bt, G, N, L, generator=g),
        "C": torch.randn(Bt, G, N, L, generator=g),
        "D": torch.randn(E, generator=g),
        "z": torch.randn(Bt, E, L, generator=g),
        "delta_bias": torch.randn(E, generator=g),
    }


def _reference(t, present, softplus, reverse):
    return selective_scan(
        t["u"],
        t["delta"],
        t["A"],
        t["B"],
        t["C"],
        **{k: t[k] for k in present},
        delta_softplus=softplus,
        return_last_state=True,
        reverse=reverse,
    )


@pytest.mark.parametrize("lowering,unroll", LOWERINGS, ids=LOWERING_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", list(CASES))
def test_lowered_scan_matches_op(lowering, unroll, reverse, case):
    import onnxruntime as ort

    present, softplus, G = CASES[case]
    t = _scan_inputs(3, Bt=2, E=8, N=5, L=13, G=G, softplus=softplus)  # L prime: never k * n
    mp, names = _scan_model(lowering, unroll, present, reverse, softplus)
    assert nonstandard_nodes(mp) == []
    sess = ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])
    out, last = sess.run(None, {n: t[n].numpy() for n in names})
    ref, ref_last = _reference(t, present, softplus, reverse)
    np.testing.assert_allclose(out, ref.numpy(), **ONNX_SCAN_VS_OP)
    np.testing.assert_allclose(last, ref_last.numpy(), **ONNX_SCAN_VS_OP)


@pytest.mark.parametrize("unroll", [1, 4])
def test_lowered_scan_keeps_half_precision_io(unroll):
    """float16 u, delta, z in, float16 out (CastLike), the arithmetic in float32 inside."""
    import onnxruntime as ort

    present = {"D", "z", "delta_bias"}
    mp, names = _scan_model("step", unroll, present, False, True, dtype=TensorProto.FLOAT16)
    t = _scan_inputs(4, Bt=1, E=4, N=3, L=6, G=1, softplus=True)
    t = {k: v.half() if k in ("u", "delta", "z") else v for k, v in t.items()}
    sess = ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])
    out, _ = sess.run(None, {n: t[n].numpy() for n in names})
    assert out.dtype == np.float16
    ref, _ = _reference(t, present, True, False)
    np.testing.assert_allclose(
        out.astype(np.float32), ref.float().numpy(), **ONNX_SCAN_FLOAT16_VS_OP
    )


def test_lowering_names_a_bad_lowering_or_unroll():
    node = helper.make_node(SCAN_OP, ["u", "d", "A", "B", "C"], ["o"], domain=SCAN_DOMAIN)
    with pytest.raises(ValueError, match="lowering: unknown 'loop'; choose from paired, step"):
        lower_scan_node(node, "loop")
    with pytest.raises(ValueError, match="lowering"):  # a whole-file route, not a lowering
        lower_scan_node(node, "plugin")
    with pytest.raises(ValueError, match="unroll"):
        lower_scan_node(node, "step", 0)


# ---------------------------------------------------------------------------------------------
# "paired": the two directions of a layer (one z) in one Scan
# ---------------------------------------------------------------------------------------------

PAIR = dict(Bt=2, E=8, N=4, L=11)


def _placeholder(prefix, reverse, z, u=None):
    ins = [u or f"{prefix}u"] + [prefix + n for n in ("delta", "A", "B", "C", "D")]
    return helper.make_node(
        SCAN_OP,
        ins + [z, prefix + "delta_bias"],
        [prefix + "out", prefix + "last"],
        domain=SCAN_DOMAIN,
        name=prefix + "ss",
        delta_softplus=1,
        reverse=int(reverse),
    )


def _pair_graph(reverse=(False, True), groups=(1, 1), chained=False):
    """Placeholders f, r sharing z (with a node reading f's output between them) and a lone
    placeholder s with its own z. ``chained``: r reads f's output as its u."""
    Bt, E, N, L = PAIR.values()
    shapes = {"u": [Bt, E, L], "delta": [Bt, E, L], "A": [E, N], "D": [E], "delta_bias": [E]}
    nodes = [
        _placeholder("f", reverse[0], "z"),
        helper.make_node("Neg", ["fout"], ["neg_fout"]),
        _placeholder("r", reverse[1], "z", u="fout" if chained else None),
        _placeholder("s", False, "sz"),
    ]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [Bt, E, L])]
    inputs.append(helper.make_tensor_value_info("sz", TensorProto.FLOAT, [Bt, E, L]))
    for p, G in zip("frs", (*groups, 1)):
        dims = {**shapes, "B": [Bt, G, N, L], "C": [Bt, G, N, L]}
        inputs += [
            helper.make_tensor_value_info(p + n, TensorProto.FLOAT, d)
            for n, d in dims.items()
            if not (chained and p + n == "ru")
        ]
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [Bt, E, N if "last" in n else L])
        for n in ("fout", "flast", "rout", "rlast", "sout", "slast", "neg_fout")
    ]
    graph = helper.make_graph(nodes, "pair", inputs, outputs)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(SCAN_DOMAIN, 1)],
    )


def _run_pair_graph(mp, groups=(1, 1), chained=False):
    import onnxruntime as ort

    Bt, E, N, L = PAIR.values()
    t = {}
    for seed, (p, G) in enumerate(zip("frs", (*groups, 1))):
        for n, v in _scan_inputs(seed, Bt, E, N, L, G, True).items():
            t[p + n] = v
    t["z"], t["sz"] = t.pop("fz"), t.pop("sz")
    feeds = {i.name: t[i.name].numpy() for i in mp.graph.input}
    sess = ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in mp.graph.output], sess.run(None, feeds)))
    present = {"D", "z", "delta_bias"}
    for p, z, reverse in (("f", "z", False), ("r", "z", True), ("s", "sz", False)):
        inputs = {n: t[p + n] for n in ("u", "delta", "A", "B", "C", "D", "delta_bias")}
        if p == "r" and chained:
            inputs["u"] = torch.from_numpy(got["fout"])
        ref, ref_last = _reference({**inputs, "z": t[z]}, present, True, reverse)
        np.testing.assert_allclose(got[p + "out"], ref.numpy(), **ONNX_SCAN_VS_OP)
        np.testing.assert_allclose(got[p + "last"], ref_last.numpy(), **ONNX_SCAN_VS_OP)
    np.testing.assert_allclose(got["neg_fout"], -got["fout"])


@pytest.mark.parametrize("lowering", ["paired", "step"])
def test_forward_and_reverse_sharing_z_pair_into_one_scan(lowering):
    mp = _pair_graph()
    assert scan_pairs(mp.graph) == [(0, 2)]
    assert lower_scans(mp, lowering) == 3
    onnx.checker.check_model(mp, full_check=True)
    assert nonstandard_nodes(mp) == []
    assert [o.domain for o in mp.opset_import] == [""]
    scans = sum(n.op_type == "Scan" for n in mp.graph.node)
    assert scans == (2 if lowering == "paired" else 3)
    _run_pair_graph(mp)


def test_lower_scans_old_name_bidir_warns_and_pairs_as_paired():
    new, old = _pair_graph(), _pair_graph()
    assert lower_scans(new, "paired") == 3
    with pytest.warns(FutureWarning, match="lowering='bidir' is deprecated.*'paired'"):
        assert lower_scans(old, "bidir") == 3
    assert old == new
    _run_pair_graph(old)


def test_pair_with_different_groups_still_shares_one_scan():
    mp = _pair_graph(groups=(1, 2))
    assert scan_pairs(mp.graph) == [(0, 2)]
    assert lower_scans(mp, "paired") == 3
    onnx.checker.check_model(mp, full_check=True)
    assert sum(n.op_type == "Scan" for n in mp.graph.node) == 2
    _run_pair_graph(mp, groups=(1, 2))


@pytest.mark.parametrize(
    "why,kw",
    [("same-direction", dict(reverse=(False, False))), ("r-reads-f", dict(chained=True))],
)
def test_placeholders_that_cannot_pair_are_lowered_alone(why, kw):
    mp = _pair_graph(**kw)
    assert scan_pairs(mp.graph) == []
    assert lower_scans(mp, "paired") == 3
    onnx.checker.check_model(mp, full_check=True)
    assert nonstandard_nodes(mp) == []
    assert sum(n.op_type == "Scan" for n in mp.graph.node) == 3
    if why == "r-reads-f":  # the references assume f forward and r reverse
        _run_pair_graph(mp, chained=True)


# ---------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------


def test_bad_arguments_name_the_argument(small_model, tmp_path):
    with pytest.raises(ValueError, match="scan: unknown 'loop'; choose from paired, step, plugin"):
        to_onnx(small_model, tmp_path / "m.onnx", scan="loop")
    with pytest.raises(TypeError, match="scan"):
        to_onnx(small_model, tmp_path / "m.onnx", scan=None)
    with pytest.raises(ValueError, match="unroll"):
        to_onnx(small_model, tmp_path / "m.onnx", scan="step", unroll=0)
    with pytest.raises(ValueError, match="opset"):
        to_onnx(small_model, tmp_path / "m.onnx", opset=11)
    with pytest.raises(TypeError, match="opset"):
        to_onnx(small_model, tmp_path / "m.onnx", opset="17")
    with pytest.raises(ValueError, match="path"):
        to_onnx(small_model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(ValueError, match="path"):
        to_onnx(small_model, tmp_path)
    with pytest.raises(TypeError, match="model"):
        to_onnx(object(), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="dynamic_batch"):
        to_onnx(small_model, tmp_path / "m.onnx", dynamic_batch="yes")
    assert list(tmp_path.iterdir()) == []
