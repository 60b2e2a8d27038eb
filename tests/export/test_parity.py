"""vimc.export.compare: metrics, rows, tolerances, argument errors."""

import math

import pytest
import torch
from vimc.export import compare, metrics

from ..tolerances import BF16_EAGER_MIN_COS_SIM, ONNX_VS_EAGER


def test_metrics_on_known_values():
    ref = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    m = metrics(ref, ref)
    assert m["max_abs"] == 0 and m["rel_rms"] == 0 and m["top1_agree"] == 1
    assert m["cos_sim"] == pytest.approx(1.0)
    out = ref.clone()
    out[1] = torch.tensor([1.0, 2.0, 3.5])  # row 1's argmax moves
    m = metrics(ref, out)
    assert m["max_abs"] == pytest.approx(2.5)
    assert m["mean_abs"] == pytest.approx(4.5 / 6)
    assert m["rel_rms"] == pytest.approx(math.sqrt(4 + 6.25) / math.sqrt(28))
    assert m["top1_agree"] == 0.5
    with pytest.raises(ValueError, match="shape"):
        metrics(ref, ref[:1])


@pytest.mark.slow
def test_eager_and_onnxruntime_rows(small_model, small_onnx):
    rep = compare(small_model, "eager,onnxruntime", batch=3, artifacts={"onnxruntime": small_onnx})
    assert [r.backend for r in rep.rows] == ["eager", "onnxruntime"]
    assert rep.passed, rep.to_text()
    assert rep.rows[0].max_abs == 0
    assert rep.rows[1].max_abs <= ONNX_VS_EAGER and rep.rows[1].top1_agree == 1
    text = rep.to_text()
    for word in (
        "torch",
        "triton",
        "onnxruntime",
        "tensorrt",
        "device",
        "max_abs",
        "rel_rms",
        "cos_sim",
        "top1_agree",
        "PASS",
    ):
        assert word in text
    assert rep.to_dict()["passed"] is True


@pytest.mark.slow
def test_tolerance_zero_fails_a_row(small_model, small_onnx):
    rep = compare(
        small_model, ["onnxruntime"], atol=0, rtol=0, artifacts={"onnxruntime": small_onnx}
    )
    assert not rep.passed and rep.rows[0].error is None
    assert "FAIL" in rep.to_text()


def test_unavailable_backend_is_a_failed_row(small_model):
    rep = compare(small_model, ["eager", "tensorrt"])
    trt = rep.rows[1]
    if trt.error is None:
        pytest.skip("TensorRT is available here")
    assert not trt.passed and not rep.passed and "ERROR" in rep.to_text()


def test_low_precision_eager_row(small_model):
    rep = compare(small_model, ["eager"], dtype="bfloat16")
    assert rep.rows[0].dtype == "bfloat16" and rep.atol == 1e-1
    assert rep.rows[0].cos_sim > BF16_EAGER_MIN_COS_SIM
    assert next(small_model.parameters()).dtype == torch.float32  # the model is not touched


def test_bad_arguments(small_model):
    with pytest.raises(ValueError, match="backends.*'tvm'"):
        compare(small_model, ["eager", "tvm"])
    with pytest.raises(ValueError, match="backends"):
        compare(small_model, [])
    with pytest.raises(ValueError, match="dtype"):
        compare(small_model, ["eager"], dtype="float64")
    with pytest.raises(ValueError, match="dtype"):
        compare(small_model, ["eager"], dtype=torch.int8)
    with pytest.raises(TypeError, match="dtype"):
        compare(small_model, ["eager"], dtype=32)
    with pytest.raises(ValueError, match="batch"):
        compare(small_model, ["eager"], batch=0)
    with pytest.raises(ValueError, match="atol"):
        compare(small_model, ["eager"], atol=-1)
    with pytest.raises(TypeError, match="model"):
        compare(42, ["eager"])
    with pytest.raises(ValueError, match="unknown model"):
        compare("vim_huge", ["eager"])
