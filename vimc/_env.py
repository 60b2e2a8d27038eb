"""What machine and library versions a result was measured with (benchmarks, parity reports)."""

from __future__ import annotations

import importlib
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(mod: str) -> str:
    try:
        return importlib.import_module(mod).__version__
    except Exception:  # noqa: BLE001  (an absent or broken package is "not installed")
        return "not installed"


def versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime"),
        "tensorrt": package_version("tensorrt"),
        "torch_tensorrt": package_version("torch_tensorrt"),
        "python": platform.python_version(),
    }
