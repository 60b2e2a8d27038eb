"""export/program.py: the forms an export asks a model for, set per instance and restored."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from vimc.export.program import (
    SCAN_FORMS,
    model_forms,
    plugin_core_fits,
    to_exported_program,
    vimc_nodes,
)
from vimc.ops.selective_scan import cpu

from vimc.model import create_model

from ..tolerances import EXACT, EXPORTED_PROGRAM_VS_EAGER


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("vim_digits", depth=2).eval()


def _forms(model) -> set:
    return {(layer.mixer.scan_form, layer.mixer.conv_form) for layer in model.layers}


def _x_proj_aligns(model) -> set:
    return {layer.mixer.x_proj_align for layer in model.layers}


@pytest.mark.parametrize(
    "scan_form, mixer_forms, x_proj_align",
    [
        ("per_direction", ("per_direction", "channel_major"), 1),
        ("bidirectional", ("bidirectional", "fused"), 16),
        ("core", ("core", "fused"), 16),
        ("plugin", ("core", "fused"), 1),  # its mixer core fits: one MixerCore node each
    ],
)
def test_model_forms_sets_every_mixer_and_restores(tiny, scan_form, mixer_forms, x_proj_align):
    """Node-by-node routes take x_proj's stored weight (no Pad node per inference), the
    Inductor-compiled one the padded weight compiled models multiply by."""
    assert _forms(tiny) == {("core", "fused")} and _x_proj_aligns(tiny) == {16}
    if scan_form == "plugin" and not cpu.c_kernel_available():
        mixer_forms = ("token_major", "channel_major")  # no mixer core to record here
    with model_forms(tiny, scan_form):
        assert _forms(tiny) == {mixer_forms}
        assert _x_proj_aligns(tiny) == {x_proj_align}
    assert _forms(tiny) == {("core", "fused")} and _x_proj_aligns(tiny) == {16}


def test_plugin_forms_take_the_core_only_where_it_fits(tiny):
    """The plugin route's mixers record the mixer core where every plugin build runs it (a
    width that is a multiple of 16), the token-major scan elsewhere; both come back."""
    narrow = create_model("vim_digits", depth=2, embed_dim=12).eval()  # E = 24
    assert plugin_core_fits(tiny.layers[0].mixer) == cpu.c_kernel_available()
    assert not plugin_core_fits(narrow.layers[0].mixer)
    with model_forms(narrow, "plugin"):
        assert _forms(narrow) == {("token_major", "channel_major")}
        assert _x_proj_aligns(narrow) == {1}
    assert _forms(narrow) == {("core", "fused")} and _x_proj_aligns(narrow) == {16}


def test_model_forms_restores_on_error_and_keeps_other_instances(tiny):
    other = create_model("vim_digits", depth=2).eval()
    other.layers[0].mixer.scan_form = "per_direction"  # a user's own choice survives an export
    with pytest.raises(RuntimeError, match="boom"):
        with model_forms(other, "plugin"):
            assert _forms(tiny) == {("core", "fused")}  # per instance
            raise RuntimeError("boom")
    assert other.layers[0].mixer.scan_form == "per_direction"
    assert other.layers[1].mixer.scan_form == "core"


def test_scan_form_names_and_deprecated_alias(tiny):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="scan_form: unknown 'fused'"):
        to_exported_program(tiny, x, scan_form="fused")
    with pytest.warns(
        FutureWarning, match="scan_form='token_major' is deprecated; use scan_form='plugin'"
    ):
        ep = to_exported_program(tiny, x, scan_form="token_major")
    plugin = to_exported_program(tiny, x, scan_form="plugin")
    targets = {str(n.target) for n in vimc_nodes(ep)}
    assert targets == {str(n.target) for n in vimc_nodes(plugin)}
    assert targets == {  # the mixer core where it fits (program.plugin_core_fits)
        "vimc.mixer_core_fwd.default"
        if cpu.c_kernel_available()
        else "vimc.selective_scan_bidirectional_token_major.default"
    }
    assert set(SCAN_FORMS) == {"per_direction", "bidirectional", "core", "plugin"}


def test_every_form_exports_the_same_numbers(tiny):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tiny(x)
        for form in SCAN_FORMS:
            got = to_exported_program(tiny, x[:1], scan_form=form).module()(x)
            torch.testing.assert_close(got, ref, **EXPORTED_PROGRAM_VS_EAGER, msg=form)


def test_a_model_name_exports_the_weights_predict_uses():
    """``vimc export onnx vim_digits out.onnx`` (no --checkpoint) exports the built-in weights,
    the model ``vimc predict``/``demo`` run, not a random one; a variant without built-in
    weights is a randomly initialized model of its shape, never a download."""
    from vimc.export._common import resolve_model

    builtin = create_model("vim_digits", pretrained=True).eval()
    for _ in range(2):  # the same every time
        got = resolve_model("vim_digits")
        for k, v in builtin.state_dict().items():
            torch.testing.assert_close(got.state_dict()[k], v, **EXACT, msg=k)
    assert resolve_model("vim_tiny", depth=1).layers[0].mixer.d_model == 192


@pytest.mark.slow  # a fresh process: warnings and torch's log handlers as a user sees them
def test_exports_print_no_library_noise(tmp_path):
    """torch's own pytree FutureWarning (LeafSpec) and the ONNX exporter's torchvision log
    lines are silenced where vimc triggers them; a user's warning still shows."""
    code = textwrap.dedent(
        f"""
        import warnings
        import vimc
        from vimc.export import to_onnx
        warnings.simplefilter("always")
        to_onnx(vimc.create_model("vim_digits", depth=2).eval(), {str(tmp_path / "m.onnx")!r})
        warnings.warn("the user's own", UserWarning)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "LeafSpec" not in r.stderr and "torchvision" not in r.stderr, r.stderr
    assert "the user's own" in r.stderr
