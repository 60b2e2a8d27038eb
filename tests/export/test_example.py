"""examples/export_onnx.py runs as a user would run it (a 1-layer model to keep it quick)."""

import subprocess
import sys
from pathlib import Path

import pytest

from ..tolerances import ONNX_VS_EAGER

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "export_onnx.py"


@pytest.mark.slow
@pytest.mark.parametrize("plugin", [False, True], ids=["standard-ops", "plugin"])
def test_export_onnx_example(tmp_path, plugin):
    out = tmp_path / "m.onnx"
    argv = ["--depth", "1", "--img-size", "64", "--out", str(out)] + ["--plugin"] * plugin
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and "max abs difference to PyTorch" in proc.stdout
    diff = float(proc.stdout.split("PyTorch: ")[1].split()[0])
    assert diff <= ONNX_VS_EAGER
    assert ("trtexec --onnx=" in proc.stdout) != plugin
    assert ("registered vimc's ONNX Runtime plugin" in proc.stdout) == plugin
