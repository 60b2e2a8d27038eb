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
    export_onnx_proto,
    iter_nodes,
    lower_scan_node,
    nonstandard_nodes,
    run_onnxruntime,
)
from vimc.ops import selective_scan


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


def _parity(path, model, x, atol=1e-4):
    sess = onnxruntime_session(path)
    with torch.no_grad():
        for b in (1, 3):
            ref = model(x[:b])
            out = run_onnxruntime(sess, x[:b])
            assert out.shape == ref.shape
            err = (out - ref).abs().max().item()
            assert err <= atol, f"batch {b}: max abs error {err:.2e} > {atol}"


@pytest.mark.slow
def test_vim_tiny_onnx_standard_ops_batch_1_and_3(tiny_model, tiny_onnx, images):
    _check_file(tiny_onnx, img=224)
    _parity(tiny_onnx, tiny_model, images[224])


@pytest.mark.slow
def test_small_onnx_standard_ops_batch_1_and_3(small_model, small_onnx, images):
    mp = _check_file(small_onnx, img=64)
    assert sum(n.op_type == "Scan" for n in mp.graph.node) == 2 * 2  # 2 layers x 2 directions
    _parity(small_onnx, small_model, images[64])


@pytest.mark.slow
def test_non_default_img_size(tmp_path):
    import vimc

    torch.manual_seed(0)
    model = vimc.create_model("vim_tiny", depth=1, embed_dim=64, img_size=80).eval()
    path = to_onnx(model, tmp_path / "m80.onnx")
    _check_file(path, img=80)
    _parity(path, model, torch.randn(3, 3, 80, 80))


@pytest.mark.slow
def test_unrolled_formulation_and_fixed_batch(small_model, images, tmp_path):
    path = to_onnx(
        small_model,
        tmp_path / "u.onnx",
        scan="unrolled",
        unroll=5,
        dynamic_batch=False,
        example=images[64][:2],
    )
    mp = onnx.load(str(path))
    assert nonstandard_nodes(mp) == []
    assert mp.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    with torch.no_grad():
        ref = small_model(images[64][:2])
    out = run_onnxruntime(onnxruntime_session(path), images[64][:2])
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_custom_domain_node_is_kept_and_marked(small_model):
    mp = export_onnx_proto(small_model, scan="custom")
    custom = [n for n in mp.graph.node if n.domain == SCAN_DOMAIN]
    assert len(custom) == 4 and all(n.op_type == SCAN_OP for n in custom)
    assert {a.name for a in custom[0].attribute} == {"delta_softplus", "reverse"}
    assert {p.key: p.value for p in mp.metadata_props}["vimc.scan"] == "custom"
    assert nonstandard_nodes(mp) == ["vimc::SelectiveScan"] * 4


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


def _scan_model(formulation, unroll, present, reverse, softplus, dtype=TensorProto.FLOAT):
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
    nodes = lower_scan_node(node, formulation, unroll)
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


@pytest.mark.parametrize("formulation,unroll", [("scan", 1), ("unrolled", 4), ("unrolled", 7)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", ["all-G1", "bare-G2", "D-bias-G4"])
def test_lowered_scan_matches_op(formulation, unroll, reverse, case):
    import onnxruntime as ort

    G = {"all-G1": 1, "bare-G2": 2, "D-bias-G4": 4}[case]
    present = {
        "all-G1": {"D", "z", "delta_bias"},
        "bare-G2": set(),
        "D-bias-G4": {"D", "delta_bias"},
    }[case]
    softplus = case != "bare-G2"
    Bt, E, N, L = 2, 8, 5, 13  # L prime: never a multiple of unroll
    g = torch.Generator().manual_seed(3)
    t = {
        "u": torch.randn(Bt, E, L, generator=g),
        "delta": torch.randn(Bt, E, L, generator=g) * (1 if softplus else 0.1)
        + (0 if softplus else 0.5),
        "A": -torch.rand(E, N, generator=g) * 2,
        "B": torch.randn(Bt, G, N, L, generator=g),
        "C": torch.randn(Bt, G, N, L, generator=g),
        "D": torch.randn(E, generator=g),
        "z": torch.randn(Bt, E, L, generator=g),
        "delta_bias": torch.randn(E, generator=g),
    }
    if not softplus:
        t["delta"] = t["delta"].abs()
    mp, names = _scan_model(formulation, unroll, present, reverse, softplus)
    sess = ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])
    out, last = sess.run(None, {n: t[n].numpy() for n in names})
    kw = {k: t[k] for k in present}
    ref, ref_last = selective_scan(
        t["u"],
        t["delta"],
        t["A"],
        t["B"],
        t["C"],
        **kw,
        delta_softplus=softplus,
        return_last_state=True,
        reverse=reverse,
    )
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(last, ref_last.numpy(), atol=1e-5, rtol=1e-4)


def test_lowered_scan_keeps_half_precision_io():
    import onnxruntime as ort

    mp, names = _scan_model(
        "scan", 1, {"D", "z", "delta_bias"}, False, True, dtype=TensorProto.FLOAT16
    )
    g = torch.Generator().manual_seed(4)
    Bt, E, N, L = 1, 4, 3, 6
    t = {
        "u": torch.randn(Bt, E, L, generator=g).half(),
        "delta": torch.randn(Bt, E, L, generator=g).half(),
        "A": -torch.rand(E, N, generator=g),
        "B": torch.randn(Bt, 1, N, L, generator=g),
        "C": torch.randn(Bt, 1, N, L, generator=g),
        "D": torch.randn(E, generator=g),
        "z": torch.randn(Bt, E, L, generator=g).half(),
        "delta_bias": torch.randn(E, generator=g),
    }
    sess = ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])
    out, _ = sess.run(None, {n: t[n].numpy() for n in names})
    assert out.dtype == np.float16
    ref = selective_scan(
        t["u"],
        t["delta"],
        t["A"],
        t["B"],
        t["C"],
        D=t["D"],
        z=t["z"],
        delta_bias=t["delta_bias"],
        delta_softplus=True,
    )
    np.testing.assert_allclose(out.astype(np.float32), ref.float().numpy(), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------


def test_bad_arguments_name_the_argument(small_model, tmp_path):
    with pytest.raises(ValueError, match="scan"):
        to_onnx(small_model, tmp_path / "m.onnx", scan="loop")
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
