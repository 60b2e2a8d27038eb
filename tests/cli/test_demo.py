"""`vimc demo`, the main job: runs to the end and passes its checks; fails with exit 1 when a
check fails and exit 2 on bad input."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from vimc import cli


@pytest.mark.slow
def test_demo_runs_to_the_end(tmp_path):
    exe = shutil.which("vimc") or os.path.join(os.path.dirname(sys.executable), "vimc")
    r = subprocess.run(
        [exe, "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    out = r.stdout
    assert "demo passed" in out
    for backend in ("eager", "compiled", "onnxruntime", "onnxruntime-plugin", "aoti"):
        assert re.search(rf"^{backend}\s+float32 .* PASS$", out, re.M), backend
        assert re.search(rf"^\| {backend}\s+\| 9\d\.\d\d% ", out, re.M), backend
    for name in ("vim_digits.onnx", "vim_digits_plugin.onnx", "vim_digits.pt2"):
        assert (tmp_path / name).exists(), name


@pytest.mark.slow  # evaluates and times the eager model
def test_demo_failed_check_exits_1(capsys):
    code = cli.main(
        [
            "demo",
            "--skip-compile",
            "--skip-export",
            "--min-accuracy",
            "1.01",
            "--batch",
            "120",
            "--threads",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "held-out accuracy" in captured.err and "demo FAILED" in captured.err
    assert "| eager " in captured.out


def test_demo_bad_checkpoint_exits_2(capsys, tmp_path):
    code = cli.main(["demo", "--checkpoint", str(tmp_path / "nope.safetensors")])
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err
