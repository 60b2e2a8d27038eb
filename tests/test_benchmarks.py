"""The benchmark scripts' argument helpers (the timing itself is not a unit test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """benchmarks/<name>.py as a module, with benchmarks/ importable while it loads."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def export_bench():
    return _load("export")


@pytest.fixture(scope="module")
def contrib_bench():
    pytest.importorskip("onnxruntime")
    return _load("ort_contrib")


def test_one_onnxruntime_backend_per_formulation_and_thread_count(export_bench):
    scans = export_bench.parse_onnx_scans("bidir,step:2")
    assert scans == [("bidir", None), ("step", 2)]
    got = export_bench.expand_backends(["compiled", "onnxruntime"], scans, [2, 1])
    assert got == [
        "compiled",
        "onnxruntime:bidir@2t",
        "onnxruntime:bidir@1t",
        "onnxruntime:step:2@2t",
        "onnxruntime:step:2@1t",
    ]
    # one formulation and one thread count: the plain name
    one = export_bench.parse_onnx_scans("bidir")
    assert export_bench.expand_backends(["onnxruntime"], one, [1]) == ["onnxruntime"]


def test_plugin_backend_and_spinning_variants(export_bench):
    one = export_bench.parse_onnx_scans("bidir")
    spin = export_bench.parse_spinning("off,on")
    assert spin == [False, True]
    got = export_bench.expand_backends(["compiled", "onnxruntime-plugin"], one, [], spin)
    assert got == ["compiled", "onnxruntime-plugin", "onnxruntime-plugin+spin"]
    # the plugin form has one formulation: --onnx-scan does not multiply it
    two = export_bench.parse_onnx_scans("bidir,step")
    assert export_bench.expand_backends(["onnxruntime-plugin"], two) == ["onnxruntime-plugin"]
    with pytest.raises(ValueError, match="--ort-spinning"):
        export_bench.parse_spinning("fast")


@pytest.mark.parametrize("spec", ["nope", "step:0", "custom"])
def test_bad_onnx_scan_is_named(export_bench, spec):
    with pytest.raises(ValueError, match="--onnx-scan"):
        export_bench.parse_onnx_scans(spec)


@pytest.mark.parametrize("op", ["GatedDeltaNet", "LinearAttention"])
def test_contrib_op_runs_the_selective_scan(contrib_bench, op):
    """The mapping ort_contrib.py times (E heads, d_k N, d_v 1, shared query and key) computes
    vimc's scan, output and final state, at Vim-Ti's shape."""
    if op not in contrib_bench.available_contrib_ops():
        pytest.skip(f"this onnxruntime has no com.microsoft.{op}")
    _, _, err = contrib_bench.contrib_session(op, Bt=2, threads=1)
    assert err < 1e-4
