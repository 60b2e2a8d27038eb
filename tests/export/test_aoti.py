"""AOTInductor packages: one file, any batch, parity with eager; loaded in a process that
imported vimc (CPU packages call back into the vimc scan op)."""

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from vimc.export import load_aoti, to_aoti, to_exported_program
from vimc.export.program import scan_nodes, vimc_nodes
from vimc.ops.selective_scan import cpu

from ..tolerances import AOTI_VS_EAGER, EXPORTED_PROGRAM_VS_EAGER


def test_exported_program_keeps_one_scan_node_per_direction(small_model, images):
    ep = to_exported_program(small_model, images[64][:1])
    nodes = scan_nodes(ep)
    assert len(nodes) == 4  # 2 layers x 2 directions
    assert sorted(n.args[-1] for n in nodes) == [False, False, True, True]
    batch = ep.graph_signature.user_inputs[0]
    shape = next(n for n in ep.graph.nodes if n.name == batch).meta["val"].shape
    assert not isinstance(shape[0], int)  # symbolic batch, though traced from a batch-1 example
    with torch.no_grad():
        torch.testing.assert_close(
            ep.module()(images[64]), small_model(images[64]), **EXPORTED_PROGRAM_VS_EAGER
        )


def test_fixed_batch_program(small_model, images):
    ep = to_exported_program(small_model, images[64][:2], dynamic_batch=False)
    batch = ep.graph_signature.user_inputs[0]
    assert next(n for n in ep.graph.nodes if n.name == batch).meta["val"].shape[0] == 2


def _package_targets(path) -> list[str]:
    """The op of every extern node a package's wrapper calls (its wrapper.json)."""
    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith("wrapper.json")]
        return [n["node"]["target"] for n in json.loads(z.read(name))["nodes"]]


@pytest.mark.slow
def test_aoti_package_batch_1_and_3(small_model, small_aoti, images):
    """to_aoti's default package: one mixer core call per layer where its kernel runs."""
    assert zipfile.is_zipfile(small_aoti)
    E = small_model.layers[0].mixer.d_inner
    cores = _package_targets(small_aoti).count("vimc::mixer_core_fwd")
    assert cores == (2 if cpu.c_kernel_available() and E % cpu.LANES == 0 else 0)
    runner = load_aoti(small_aoti)
    with torch.no_grad():
        for b in (1, 3):
            x = images[64][:b]
            err = (runner(x) - small_model(x)).abs().max().item()
            assert err <= AOTI_VS_EAGER, f"batch {b}: max abs error {err:.2e}"


def test_aoti_bad_arguments(small_model, tmp_path):
    with pytest.raises(ValueError, match="path"):
        to_aoti(small_model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="path"):
        to_aoti(small_model, tmp_path / "nope" / "m.pt2")
    with pytest.raises(ValueError, match="path"):
        load_aoti(tmp_path / "absent.pt2")
    assert list(tmp_path.iterdir()) == []


def test_bidirectional_scan_program_has_one_scan_node_per_layer(small_model, images):
    """to_aoti's scan_form="bidirectional": one call of vimc's bidirectional kernel per layer, which
    applies both directions' dt_proj too (no dt_proj matmul left in the program), and one call
    of the fused conv pair per layer where its C kernel runs (else the shifted form, which
    Inductor fuses: no aten conv either way)."""
    ep = to_exported_program(small_model, images[64][:1], scan_form="bidirectional")
    targets = [str(n.target) for n in scan_nodes(ep)]
    assert targets == ["vimc.selective_scan_bidirectional_proj_fwd.default"] * 2  # 2 layers
    convs = [str(n.target) for n in vimc_nodes(ep) if n not in scan_nodes(ep)]
    fused = cpu.c_kernel_available()
    assert convs == ["vimc.conv1d_silu_pair_fwd.default"] * (2 if fused else 0)
    mms = [n for n in ep.graph.nodes if "mm" in str(n.target) or "linear" in str(n.target)]
    assert len(mms) == 2 * (1 + 2 + 1) + 2  # in_proj, 2 x_proj, out_proj per layer; embed, head
    assert not any("convolution" in str(n.target) for n in ep.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(
            ep.module()(images[64]), small_model(images[64]), **EXPORTED_PROGRAM_VS_EAGER
        )
    # and the default program is unchanged: one selective_scan_fwd per direction
    plain = to_exported_program(small_model, images[64][:1])
    assert {str(n.target) for n in scan_nodes(plain)} == {"vimc.selective_scan_fwd.default"}


def test_core_program_has_one_mixer_core_node_per_layer(small_model, images):
    """to_aoti's default form: where the mixer core's C kernel runs, everything between in_proj
    and out_proj is one vimc::mixer_core_fwd node per layer (no conv, x_proj or scan node
    besides); elsewhere the "bidirectional" program."""
    ep = to_exported_program(small_model, images[64][:1], scan_form="core")
    targets = [str(n.target) for n in vimc_nodes(ep)]
    E = small_model.layers[0].mixer.d_inner
    if cpu.c_kernel_available() and E % cpu.LANES == 0:
        assert targets == ["vimc.mixer_core_fwd.default"] * 2  # 2 layers
        mms = [n for n in ep.graph.nodes if "mm" in str(n.target) or "linear" in str(n.target)]
        assert len(mms) == 2 * 2 + 2  # in_proj and out_proj per layer; embed, head
    else:
        assert "vimc.mixer_core_fwd.default" not in targets
    with torch.no_grad():
        torch.testing.assert_close(
            ep.module()(images[64]), small_model(images[64]), **EXPORTED_PROGRAM_VS_EAGER
        )


@pytest.mark.slow
def test_aoti_package_forms_agree(small_model, small_aoti, images, tmp_path):
    """The default package (the core op per layer) and a "bidirectional" one (its scan op per
    layer) compute the same logits, each within AOTI_VS_EAGER of eager."""
    other = to_aoti(small_model, tmp_path / "bidirectional.pt2", scan_form="bidirectional")
    targets = _package_targets(other)
    assert "vimc::mixer_core_fwd" not in targets
    if cpu.c_kernel_available():
        assert targets.count("vimc::selective_scan_bidirectional_proj_fwd") == 2
    x = images[64][:2]
    with torch.no_grad():
        ref = small_model(x)
        for path in (small_aoti, other):
            err = (load_aoti(path)(x) - ref).abs().max().item()
            assert err <= AOTI_VS_EAGER, f"{path.name}: max abs error {err:.2e}"


def test_concurrent_exports_each_keep_their_own_scan_form(small_model, images):
    """Exports from several threads run one at a time (torch.export's tracer fails when two
    threads trace at once), and a fused export (to_aoti's "bidirectional") does not leak its
    form into a plain one (the ONNX route's)."""

    def form(scan_form):
        ep = to_exported_program(small_model, images[64][:1], scan_form=scan_form)
        return {str(n.target) for n in vimc_nodes(ep) if "conv1d" not in str(n.target)}

    asked = ["bidirectional", "per_direction", "plugin", "bidirectional", "per_direction"]
    with ThreadPoolExecutor(max_workers=len(asked)) as pool:  # all five start at once
        forms = list(pool.map(form, asked))  # re-raises a thread's exception here
    expected = {
        "bidirectional": {"vimc.selective_scan_bidirectional_proj_fwd.default"},
        "per_direction": {"vimc.selective_scan_fwd.default"},
        "plugin": {  # the mixer core where it fits (program.plugin_core_fits)
            "vimc.mixer_core_fwd.default"
            if cpu.c_kernel_available()
            else "vimc.selective_scan_bidirectional_token_major.default"
        },
    }
    assert forms == [expected[f] for f in asked]
    # and the model runs in its own forms again afterwards
    mixers = [layer.mixer for layer in small_model.layers]
    assert {(m.scan_form, m.conv_form) for m in mixers} == {("core", "fused")}
