"""Parity: run one input through several backends and compare each to float32 eager.

``compare(model, backends=[...])`` returns a :class:`ParityReport`: a header (device and the
versions of torch, Triton, ONNX, ONNX Runtime, TensorRT) and one row per backend with
max_abs, mean_abs, rel_rms (||out - ref|| / ||ref||), cos_sim, top1_agree. A row passes when
every logit satisfies ``|out - ref| <= atol + rtol * |ref|`` (polygraphy's and numpy's
allclose rule) and nothing is NaN/inf; a backend that cannot run gives a failed row with its
error. ``vimc parity`` (export/cli.py) prints the report and exits 1 when a row fails.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ._common import (
    check_batch,
    check_names,
    device_name,
    dtype_name,
    example_input,
    model_device,
    parse_dtype,
    resolve_model,
    versions,
)
from .onnx.names import DEFAULT_SCAN

# "onnxruntime": the standard-op file; "onnxruntime-plugin": the plugin route
# (scan="plugin") run with vimc's ONNX Runtime plugin
BACKENDS = ("eager", "compiled", "aoti", "onnxruntime", "onnxruntime-plugin", "tensorrt")
# The runtime's default (atol, rtol) per compute dtype, what `vimc parity` and `vimc export`
# apply when none is given: a row passes when every logit satisfies
# |out - ref| <= atol + rtol * |ref|, element by element, with ref the float32 eager logits.
DEFAULT_TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (1e-1, 5e-2),
}


def metrics(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Agreement of ``out`` with ``ref`` (both (B, classes)), computed in float64."""
    r, o = ref.detach().double().cpu(), out.detach().double().cpu()
    if r.shape != o.shape:
        raise ValueError(
            f"output shape {tuple(o.shape)} differs from the reference's {tuple(r.shape)}"
        )
    d = o - r
    rn = r.norm().item()
    return {
        "max_abs": d.abs().max().item(),
        "mean_abs": d.abs().mean().item(),
        "rel_rms": d.norm().item() / rn if rn > 0 else d.norm().item(),
        "cos_sim": torch.nn.functional.cosine_similarity(o.flatten(1), r.flatten(1)).min().item(),
        "top1_agree": (o.argmax(-1) == r.argmax(-1)).double().mean().item(),
    }


def within_tolerance(ref: torch.Tensor, out: torch.Tensor, atol: float, rtol: float) -> bool:
    """Whether ``out`` is finite and every element satisfies |out - ref| <= atol + rtol*|ref|."""
    r, o = ref.detach().double().cpu(), out.detach().double().cpu()
    return bool(torch.isfinite(o).all()) and bool(((o - r).abs() <= atol + rtol * r.abs()).all())


@dataclasses.dataclass
class ParityRow:
    backend: str
    dtype: str
    max_abs: float = math.nan
    mean_abs: float = math.nan
    rel_rms: float = math.nan
    cos_sim: float = math.nan
    top1_agree: float = math.nan
    passed: bool = False
    seconds: float = 0.0  # preparing (export/compile) plus the first run
    error: str | None = None


@dataclasses.dataclass
class ParityReport:
    model: str
    device: str
    versions: dict[str, str]
    batch: int
    dtype: str
    atol: float
    rtol: float
    rows: list[ParityRow]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"passed": self.passed}

    def to_text(self) -> str:
        v = self.versions
        w = max([12, *(len(r.backend) for r in self.rows)])  # the backend column's width
        lines = [
            f"parity: {self.model}  batch {self.batch}  dtype {self.dtype}  "
            f"reference float32 eager  atol {self.atol:g}  rtol {self.rtol:g}",
            f"device: {self.device}",
            "versions: "
            + ", ".join(
                f"{k} {v[k]}" for k in ("torch", "triton", "onnx", "onnxruntime", "tensorrt")
            ),
            f"{'backend':<{w}} {'dtype':<9} {'max_abs':>10} {'mean_abs':>10} {'rel_rms':>10} "
            f"{'cos_sim':>9} {'top1_agree':>10} {'time_s':>7}  status",
        ]
        for r in self.rows:
            status = "PASS" if r.passed else ("ERROR: " + r.error if r.error else "FAIL")
            lines.append(
                f"{r.backend:<{w}} {r.dtype:<9} {r.max_abs:>10.3e} {r.mean_abs:>10.3e} "
                f"{r.rel_rms:>10.3e} {r.cos_sim:>9.6f} {r.top1_agree:>10.3f} "
                f"{r.seconds:>7.1f}  {status}"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# backends: prepare(model in dtype, example in dtype, workdir, artifact) -> run(x) -> logits
# ---------------------------------------------------------------------------------------------


def _eager(m, x, workdir, artifact):
    return m


def _compiled(m, x, workdir, artifact):
    return torch.compile(m, dynamic=False)


def _aoti(m, x, workdir, artifact):
    from .aoti import load_aoti, to_aoti

    if artifact is None:
        artifact = to_aoti(m, Path(workdir) / "model.pt2", example=x)
    return load_aoti(artifact)


def _onnxruntime(m, x, workdir, artifact, scan=DEFAULT_SCAN):
    from .onnx import onnxruntime_session, run_onnxruntime, to_onnx

    if x.dtype == torch.bfloat16:
        raise TypeError(
            "ONNX Runtime's Python API takes no bfloat16 input; use --dtype float32 or float16"
        )
    if x.device.type != "cpu":
        raise ValueError("the onnxruntime backend runs on CPU; move the model to CPU")
    if artifact is None:
        artifact = to_onnx(m, Path(workdir) / f"model_{scan}.onnx", example=x, scan=scan)
    session = onnxruntime_session(artifact)
    return lambda inp: run_onnxruntime(session, inp)


def _onnxruntime_plugin(m, x, workdir, artifact):
    if x.dtype != torch.float32:
        raise TypeError("vimc's ONNX Runtime plugin computes in float32; use --dtype float32")
    return _onnxruntime(m, x, workdir, artifact, scan="plugin")


def _tensorrt(m, x, workdir, artifact):
    from .tensorrt import tensorrt_unavailable_reason, to_tensorrt

    reason = tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if artifact is not None:
        prog = torch.export.load(str(artifact)).module()
        return lambda inp: prog(inp.cuda())
    trt = to_tensorrt(m, example=x, dtype=x.dtype)
    return lambda inp: trt(inp.cuda())


_PREPARE: dict[str, Callable] = {
    "eager": _eager,
    "compiled": _compiled,
    "aoti": _aoti,
    "onnxruntime": _onnxruntime,
    "onnxruntime-plugin": _onnxruntime_plugin,
    "tensorrt": _tensorrt,
}


def compare(
    model,
    backends: Sequence[str] | str = ("eager", "compiled", "aoti", "onnxruntime"),
    inputs: torch.Tensor | None = None,
    dtype="float32",
    *,
    batch: int = 2,
    atol: float | None = None,
    rtol: float | None = None,
    artifacts: dict[str, str] | None = None,
    workdir=None,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Run ``inputs`` through each backend and compare to float32 eager.

    model: an nn.Module or a registered name. backends: names from ``BACKENDS`` (a list or a
    comma-separated string). inputs: a (B, C, H, W) tensor (default: seeded random, ``batch``
    rows at the model's input size). dtype: the compute dtype of every backend (the reference
    stays float32 eager). atol/rtol: default per dtype (``DEFAULT_TOLERANCES``). artifacts:
    ``{"onnxruntime": "m.onnx", "aoti": "m.pt2"}`` runs existing files instead of exporting.
    """
    names = check_names(backends, BACKENDS, arg="backends")
    dt = parse_dtype(dtype)
    check_batch(batch)
    d_atol, d_rtol = DEFAULT_TOLERANCES[dt]
    atol = d_atol if atol is None else float(atol)
    rtol = d_rtol if rtol is None else float(rtol)
    if atol < 0 or rtol < 0:
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    for k in artifacts or {}:
        check_names([k], BACKENDS, arg="artifacts")
    base: nn.Module = resolve_model(model)
    ref_model = copy.deepcopy(base).float()
    x32 = example_input(ref_model, inputs, batch=batch).float()
    with torch.no_grad():
        ref = ref_model(x32)
    test_model = ref_model if dt == torch.float32 else copy.deepcopy(base).to(dt)
    x = x32.to(dt)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vimc-parity-", dir=workdir) as tmp:
        for name in names:
            if progress:
                progress(name)
            row = ParityRow(name, dtype_name(dt))
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    run = _PREPARE[name](test_model, x, tmp, (artifacts or {}).get(name))
                    out = run(x).float().cpu()
                row = dataclasses.replace(row, **metrics(ref, out))
                row.passed = within_tolerance(ref, out, atol, rtol)
            except Exception as exc:  # noqa: BLE001  (a backend's failure is a failed row)
                row.error = (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                    if str(exc).strip()
                    else type(exc).__name__
                )
            row.seconds = time.perf_counter() - t0
            rows.append(row)
    label = (
        model if isinstance(model, str) else (getattr(base, "name", None) or type(base).__name__)
    )
    return ParityReport(
        model=label,
        device=device_name(model_device(base)),
        versions=versions(),
        batch=int(x.shape[0]),
        dtype=dtype_name(dt),
        atol=atol,
        rtol=rtol,
        rows=rows,
    )
