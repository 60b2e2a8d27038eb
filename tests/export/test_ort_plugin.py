"""The plugin route (``to_onnx(scan="plugin")``): one ``vimc.MixerCore`` node per layer
between in_proj's and out_proj's MatMuls, or, where a mixer's width does not fit it, one
token-major ``vimc.SelectiveScanBidirectional`` node with no transposes around it; run by vimc's
ONNX Runtime plugin from one file at batch 1 and 3 within ONNX_VS_EAGER of eager; the session
helper registers the plugin for such files (and only for them); the CLI and the parity tool run
it. The node-by-node tests of the plugin are in tests/ops/test_ort_plugin.py."""

import ctypes

import onnx
import pytest
from vimc.export import onnxruntime_session, ort_plugin_path, to_onnx
from vimc.export.onnx import (
    BIDIR_OP,
    MIXER_OP,
    SCAN_DOMAIN,
    iter_nodes,
    nonstandard_nodes,
    read_scan_lowering,
    uses_plugin,
)
from vimc.export.parity import compare

from ..tolerances import ONNX_VS_EAGER
from .conftest import SMALL, _seeded, assert_onnx_parity


@pytest.fixture(scope="module")
def plugin(ort_plugin):
    return ort_plugin


@pytest.fixture(scope="module")
def small_plugin(small_model, tmp_path_factory, plugin):
    return to_onnx(small_model, tmp_path_factory.mktemp("plugin") / "small.onnx", scan="plugin")


def test_library_exports_the_onnxruntime_entry_point(plugin):
    assert plugin.is_file()
    assert hasattr(ctypes.CDLL(str(plugin)), "RegisterCustomOps")
    assert ort_plugin_path() == plugin  # built once


@pytest.mark.slow
def test_small_plugin_route_one_mixer_core_node_per_layer(small_model, small_plugin, images):
    """Everything between in_proj and out_proj is one node: a MatMul feeds it, its output
    feeds a MatMul."""
    mp = onnx.load(str(small_plugin))
    onnx.checker.check_model(mp)
    custom = [n for n in mp.graph.node if n.domain == SCAN_DOMAIN]
    assert [n.op_type for n in custom] == [MIXER_OP] * 2  # 2 layers
    assert [len(n.input) for n in custom] == [15, 15] and not custom[0].attribute
    assert nonstandard_nodes(mp) == [f"vimc::{MIXER_OP}"] * 2
    assert {p.key: p.value for p in mp.metadata_props}["vimc.scan"] == "plugin"
    assert not any(n.op_type in ("Pad", "Conv") for n in mp.graph.node)
    producer = {o: n for n in mp.graph.node for o in n.output}
    for n in custom:
        assert producer[n.input[0]].op_type == "MatMul"  # in_proj
        assert [m.op_type for m in mp.graph.node if n.output[0] in m.input] == ["MatMul"]
    assert uses_plugin(small_plugin)
    assert_onnx_parity(small_plugin, small_model, images[64])


@pytest.mark.slow
def test_plugin_route_takes_the_token_major_node_where_the_core_does_not_fit(images, tmp_path):
    """A mixer whose width is no multiple of 16 (E = 24) keeps the token-major scan node:
    Conv nodes, x_proj's MatMul, one node per layer, and the mixer's transposes cancel
    against the node's."""
    model = _seeded(SMALL, embed_dim=12)
    path = to_onnx(model, tmp_path / "narrow.onnx", scan="plugin")
    mp = onnx.load(str(path))
    custom = [n for n in mp.graph.node if n.domain == SCAN_DOMAIN]
    assert [n.op_type for n in custom] == [BIDIR_OP] * 2
    assert {a.name: a.i for a in custom[0].attribute} == {"delta_softplus": 1}
    assert not any(n.op_type == "Pad" for n in mp.graph.node)  # x_proj's stored weight
    # a transpose that feeds the node (u, the Conv output made token-major) feeds x_proj's
    # MatMul too, and none reads its output
    producer = {o: n for n in mp.graph.node for o in n.output}
    readers = lambda name: [m for m in mp.graph.node if name in m.input]  # noqa: E731
    for n in custom:
        for i in n.input:
            if i in producer and producer[i].op_type == "Transpose":
                assert {m.op_type for m in readers(i)} == {BIDIR_OP, "MatMul"}
        assert readers(n.output[0])
        assert all(m.op_type != "Transpose" for m in readers(n.output[0]))
    assert_onnx_parity(path, model, images[64])


@pytest.mark.slow
def test_vim_tiny_plugin_route_batch_1_and_3(tiny_model, images, tmp_path, plugin):
    path = to_onnx(tiny_model, tmp_path / "vim_tiny_plugin.onnx", scan="plugin")
    assert_onnx_parity(path, tiny_model, images[224])


@pytest.mark.slow
def test_old_name_custom_warns_and_writes_the_plugin_file(small_model, small_plugin, tmp_path):
    with pytest.warns(FutureWarning, match="scan='custom' is deprecated.*'plugin'"):
        path = to_onnx(small_model, tmp_path / "old.onnx", scan="custom")
    old, new = onnx.load(str(path)), onnx.load(str(small_plugin))
    assert [n.op_type for n in iter_nodes(old.graph)] == [n.op_type for n in iter_nodes(new.graph)]
    assert nonstandard_nodes(old) == nonstandard_nodes(new) == [f"vimc::{MIXER_OP}"] * 2
    assert read_scan_lowering(old) == read_scan_lowering(new) == "plugin"
    assert uses_plugin(path)


@pytest.mark.slow
def test_plugin_is_registered_only_where_needed(small_plugin, small_onnx):
    assert not uses_plugin(small_onnx)
    with pytest.raises(Exception, match="vimc"):  # ORT cannot resolve the vimc domain alone
        onnxruntime_session(small_plugin, plugin=False)
    onnxruntime_session(small_onnx, plugin=True)  # harmless on a standard-op file


def test_session_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="path"):
        onnxruntime_session(tmp_path / "absent.onnx")


@pytest.mark.slow
def test_parity_tool_runs_the_plugin_route(small_model, small_plugin):
    report = compare(
        small_model, ["onnxruntime-plugin"], batch=3, artifacts={"onnxruntime-plugin": small_plugin}
    )
    (row,) = report.rows
    assert row.error is None and row.passed, row
    assert row.max_abs <= ONNX_VS_EAGER and row.top1_agree == 1.0
    bad = compare(small_model, ["onnxruntime-plugin"], dtype="float16", batch=1)
    assert not bad.passed and "float32" in bad.rows[0].error
