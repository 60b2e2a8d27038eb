"""The machine header every benchmark prints, and a short tag that names result files."""

from __future__ import annotations

import datetime
import os
import platform
import re


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001 - any import failure means "not installed" here
        return "not installed"


def header(device: str = "cpu") -> str:
    import torch

    dev = (
        torch.cuda.get_device_name() + f", driver CUDA {torch.version.cuda}"
        if device == "cuda" and torch.cuda.is_available()
        else f"{_cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    return (
        f"date {datetime.date.today()} | device {dev} | python {platform.python_version()} | "
        f"torch {torch.__version__} | triton {_version('triton')} | "
        f"onnxruntime {_version('onnxruntime')} | tensorrt {_version('tensorrt')}"
    )


def machine_tag(device: str = "cpu") -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"{_cpu_name()}-{os.cpu_count()}c"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
