"""TensorRT: the trtexec command always; the torch-tensorrt route only where TensorRT >= 10.7
and a CUDA GPU exist (never on the CPU CI)."""

import pytest
import torch
from vimc.export import tensorrt_unavailable_reason, to_tensorrt, trtexec_command

from ..tolerances import TENSORRT_VS_EAGER

REASON = tensorrt_unavailable_reason()


def test_trtexec_command():
    cmd = trtexec_command("m.onnx", input_size=(3, 224, 224), opt_batch=8, max_batch=16)
    assert cmd.startswith("trtexec --onnx=m.onnx --saveEngine=m.engine --fp16")
    assert "--minShapes=pixel_values:1x3x224x224" in cmd
    assert "--optShapes=pixel_values:8x3x224x224" in cmd
    assert "--maxShapes=pixel_values:16x3x224x224" in cmd


def test_unavailable_is_a_clear_error():
    if REASON is None:
        pytest.skip("TensorRT is available here")
    with pytest.raises(RuntimeError, match="to_tensorrt: "):
        to_tensorrt(torch.nn.Linear(2, 2))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=f"TensorRT route untestable: {REASON}")
def test_tensorrt_parity(small_model, images, tmp_path):
    trt = to_tensorrt(small_model, tmp_path / "m.ep", dtype="float32")
    x = images[64].cuda()
    with torch.no_grad():
        ref = small_model.cuda()(x)
    assert (trt(x) - ref).abs().max().item() <= TENSORRT_VS_EAGER
    assert (tmp_path / "m.ep").stat().st_size > 0
