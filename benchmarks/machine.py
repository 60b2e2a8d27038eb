"""The machine header every benchmark prints, and a short tag that names result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

from vimc._env import cpu_name, package_version


def header(device: str = "cpu") -> str:
    import torch

    dev = (
        torch.cuda.get_device_name() + f", driver CUDA {torch.version.cuda}"
        if device == "cuda" and torch.cuda.is_available()
        else f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    return (
        f"date {datetime.date.today()} | device {dev} | python {platform.python_version()} | "
        f"torch {torch.__version__} | triton {package_version('triton')} | "
        f"onnxruntime {package_version('onnxruntime')} | tensorrt {package_version('tensorrt')}"
    )


def machine_tag(device: str = "cpu") -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"{cpu_name()}-{os.cpu_count()}c"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def save_results(stem: Path, payload: dict, markdown: str) -> None:
    """``stem``.json (``payload``) and ``stem``.md (``markdown``), the folder made if needed."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown.rstrip("\n") + "\n")
    print(f"saved {stem}.json and .md")
