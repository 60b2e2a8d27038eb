"""What machine and library versions a result was measured with: the one header every
benchmark, ``vimc bench``, ``vimc demo`` and parity report prints, and the tag that names
result files."""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import re
from pathlib import Path

import torch


def cpu_name_from(cpuinfo: str) -> str | None:
    """The CPU's name in a /proc/cpuinfo text; where that name carries no model number (VMs often
    report just "AMD EPYC" or "Intel(R) Xeon(R) Processor", perhaps with "@ 2.60GHz"), the x86
    family and model follow it, so that two generations behind one name (Zen 4 and Zen 5 EPYCs)
    stay apart. None where the text names no CPU (ARM kernels print no "model name")."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    name = fields.get("model name")
    if not name:
        return None
    family, model = fields.get("cpu family"), fields.get("model")
    # a clock rate is no model number
    if not re.search(r"\d", re.sub(r"@\s*[\d.]+\s*[GM]Hz", "", name)) and family and model:
        return f"{name} (family {family} model {model})"
    return name


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = cpu_name_from(f.read())
        if name:
            return name
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


def _is_cuda(device) -> bool:
    return torch.device(device or "cpu").type == "cuda" and torch.cuda.is_available()


def device_name(device=None) -> str:
    """The GPU's name, or the CPU's with its core and torch thread counts."""
    if _is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def header(device=None) -> str:
    """One line: date, device, and the versions of python, torch, Triton, ONNX Runtime and
    TensorRT."""
    dev = (
        f"{torch.cuda.get_device_name(torch.device(device))}, CUDA {torch.version.cuda}"
        if _is_cuda(device)
        else f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    return (
        f"date {datetime.date.today()} | device {dev} | python {platform.python_version()} | "
        f"torch {torch.__version__} | triton {package_version('triton')} | "
        f"onnxruntime {package_version('onnxruntime')} | tensorrt {package_version('tensorrt')}"
    )


def machine_tag(device=None) -> str:
    """A file-name-safe name of the machine, e.g. ``amd-epyc-2c``-like tags for result files."""
    name = torch.cuda.get_device_name() if _is_cuda(device) else f"{cpu_name()}-{os.cpu_count()}c"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def save_results(stem, payload: dict, markdown: str) -> None:
    """``stem``.json (``payload``) and ``stem``.md (``markdown``), the folder made if needed."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")
    print(f"saved {stem}.json and .md")
