"""``vimc export`` / ``vimc parity`` through their argparse parsers and handlers."""

import pytest
from vimc.export.cli import build_parser, main

from .conftest import SMALL


def _run(argv):
    return main(argv)


@pytest.mark.slow
def test_export_onnx_validates_by_default(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert _run(["export", "onnx", SMALL, str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 0 and "wrote" in text
    assert "onnxruntime" in text and "PASS" in text and "max_abs" in text


@pytest.mark.slow
def test_export_onnx_plugin_route_validates_with_the_plugin(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert _run(["export", "onnx", SMALL, str(out), "--scan", "plugin", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime-plugin" in text and "PASS" in text
    assert "runs with vimc's ONNX Runtime plugin: " in text and ".so" in text


@pytest.mark.slow
def test_export_onnx_fixed_batch_no_validate(tmp_path, capsys):
    import onnx

    out = tmp_path / "m.onnx"
    assert (
        _run(
            [
                "export",
                "onnx",
                SMALL,
                str(out),
                "--batch",
                "4",
                "--no-validate",
                "--quiet",
                "--img-size",
                "48",
            ]
        )
        == 0
    )
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 48, 48]
    assert "PASS" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["export", "tflite", SMALL, "x.onnx"], "invalid choice: 'tflite'"),
        (["export", "onnx", SMALL, "x.onnx", "--dtype", "float64"], "--dtype"),
        (["export", "onnx", SMALL, "x.onnx", "--batch", "0"], "--batch"),
        (["export", "onnx", SMALL, "x.onnx", "--batch", "2", "--dynamic-batch"], "not allowed"),
        (["parity", SMALL, "--dtype", "int8"], "--dtype"),
        (["parity", SMALL, "--atol", "-1"], "--atol"),
        (["export", "onnx", SMALL, "x.onnx", "--scan", "loop"], "unknown 'loop'"),
        (
            ["export", "onnx", SMALL, "x.onnx", "--scan", "scan"],
            "argument --scan: 'scan' was removed (it was slower than 'step'); use 'step' or "
            "'paired' (choices: paired, step, plugin)",
        ),
        (["export", "onnx", SMALL, "x.onnx", "--scan", "unrolled"], "'unrolled' was removed"),
    ],
)
def test_usage_errors_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["export", "onnx", SMALL, "{tmp}/missing/m.onnx"], "OUT: directory"),
        (["export", "onnx", SMALL, "{tmp}"], "OUT must name a file"),
        (["export", "aoti", SMALL, "{tmp}/m.onnx"], ".pt2"),
        (["export", "onnx", "vim_huge", "{tmp}/m.onnx"], "unknown model 'vim_huge'"),
        (["export", "onnx", SMALL, "{tmp}/m.onnx", "--opset", "11"], "--opset"),
        (
            ["export", "onnx", SMALL, "{tmp}/m.onnx", "--scan", "plugin", "--dtype", "float16"],
            "--scan plugin: vimc's ONNX Runtime plugin computes in float32",
        ),
        (  # the old name is the same route, refused the same way
            ["export", "onnx", SMALL, "{tmp}/m.onnx", "--scan", "custom", "--dtype", "float16"],
            "--scan plugin: vimc's ONNX Runtime plugin computes in float32",
        ),
        (["parity", SMALL, "--backends", "eager,tvm"], "--backends: unknown 'tvm'"),
        (["parity", SMALL, "--json", "{tmp}/no/r.json"], "--json"),
    ],
)
def test_bad_arguments_exit_2_with_message(argv, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vimc ") and needle in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("old,new", [("bidir", "paired"), ("custom", "plugin")])
def test_old_scan_names_are_taken_with_a_warning(old, new, capsys):
    args = build_parser().parse_args(["export", "onnx", SMALL, "x.onnx", "--scan", old])
    assert args.scan == new
    err = capsys.readouterr().err
    assert f"warning: --scan {old} is deprecated" in err and f"use --scan {new}" in err
    build_parser().parse_args(["export", "onnx", SMALL, "x.onnx", "--scan", new])
    build_parser().parse_args(["export", "onnx", SMALL, "x.onnx"])  # the default is no old name
    assert capsys.readouterr().err == ""


def test_export_tensorrt_without_tensorrt_exits_1(tmp_path, capsys):
    from vimc.export import tensorrt_unavailable_reason

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is available here")
    assert _run(["export", "tensorrt", SMALL, str(tmp_path / "m.ep")]) == 1
    assert "tensorrt" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_parity_eager_passes_and_writes_json(tmp_path, capsys):
    import json

    out = tmp_path / "r.json"
    assert (
        _run(
            ["parity", SMALL, "--backends", "eager", "--batch", "2", "--quiet", "--json", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "versions:" in text and "tensorrt" in text and "eager" in text
    assert json.loads(out.read_text())["passed"] is True


@pytest.mark.slow
def test_parity_failing_row_exits_1(capsys):
    assert (
        _run(
            [
                "parity",
                SMALL,
                "--backends",
                "eager,onnxruntime",
                "--atol",
                "0",
                "--rtol",
                "0",
                "--quiet",
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "onnxruntime" in captured.err


@pytest.mark.slow
def test_parity_compiled_and_aoti(small_aoti, capsys, monkeypatch):
    # the compiled backend compiles once; the aoti row reuses the session's package
    import vimc.export.parity as parity

    real = parity._aoti
    monkeypatch.setitem(parity._PREPARE, "aoti", lambda m, x, w, a: real(m, x, w, a or small_aoti))
    assert _run(["parity", SMALL, "--backends", "eager,compiled,aoti", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 3


def test_ort_plugin_prints_and_copies_the_library(tmp_path, capsys):
    import ctypes

    from vimc.export import ort_plugin_path

    assert _run(["ort-plugin"]) == 0
    assert capsys.readouterr().out.strip() == str(ort_plugin_path())
    out = tmp_path / "libvimc_ort.so"
    assert _run(["ort-plugin", str(out), "--march", "generic"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert hasattr(ctypes.CDLL(str(out)), "RegisterCustomOps")
    assert [p.name for p in tmp_path.iterdir()] == ["libvimc_ort.so"]  # no temporary left


@pytest.mark.parametrize(
    "argv,code,needle",
    [
        (["ort-plugin", "--march", "a b"], 2, "--march"),
        (["ort-plugin", "{tmp}/missing/p.so"], 2, "OUT: directory"),
        (["ort-plugin", "--march", "no-such-cpu"], 1, "cannot build it here"),
    ],
)
def test_ort_plugin_bad_arguments(argv, code, needle, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert _run(argv) == code
    assert needle in capsys.readouterr().err
