"""The benchmark scripts' argument helpers (the timing itself is not a unit test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def export_bench():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_export", BENCH / "export.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


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


@pytest.mark.parametrize("spec", ["nope", "step:0", "custom"])
def test_bad_onnx_scan_is_named(export_bench, spec):
    with pytest.raises(ValueError, match="--onnx-scan"):
        export_bench.parse_onnx_scans(spec)
