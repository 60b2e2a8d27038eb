"""TensorRT through torch-tensorrt (the ``tensorrt`` extra), and the ``trtexec`` command for
the ONNX file.

The scan becomes a TensorRT plugin generated from the registered op: torch-tensorrt's Quick
Deployable Plugin support (TensorRT >= 10.7) reads the op's schema and fake kernel, registers
a QDP plugin whose implementation calls the op (the Triton kernel on CUDA) and a converter
that puts a plugin layer where the op sits in the graph:
``torch_tensorrt.dynamo.conversion.plugins.custom_op(name, supports_dynamic_shapes=True)``.
Everything else converts with torch-tensorrt's stock converters.

Untested here: TensorRT does not install on this project's CPU machines, so the tests skip
with the reason :func:`tensorrt_unavailable_reason` gives. Written to the documented APIs of
torch-tensorrt 2.5+ (``dynamo.compile``, ``Input``, ``save``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ._atomic import atomic_path, check_writable
from ._common import check_batch, example_input, parse_dtype, resolve_model
from .program import to_exported_program

MIN_TENSORRT = (10, 7)
_PLUGINS_REGISTERED: set[str] = set()


def tensorrt_unavailable_reason() -> str | None:
    """None when torch-tensorrt, TensorRT >= 10.7 and a CUDA GPU are present, else why not."""
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU; none is visible to torch"
    try:
        import tensorrt
        import torch_tensorrt  # noqa: F401
    except ImportError as exc:
        return f"torch-tensorrt / tensorrt not installed ({exc.name}): pip install 'vimc[tensorrt]'"
    version = tuple(int(p) for p in tensorrt.__version__.split(".")[:2])
    if version < MIN_TENSORRT:
        return (
            f"TensorRT {tensorrt.__version__} is too old: the scan plugin needs "
            f">= {'.'.join(map(str, MIN_TENSORRT))} (Quick Deployable Plugins)"
        )
    return None


def scan_op_names() -> list[str]:
    """The vimc scan ops a CUDA graph can contain (the triton_op twin when registered)."""
    names = ["vimc::selective_scan_fwd"]
    if hasattr(torch.ops.vimc, "selective_scan_fwd_cuda"):
        names.append("vimc::selective_scan_fwd_cuda")
    return names


def register_scan_plugins() -> None:
    """Generate the TensorRT plugin and converter for each scan op (once per process)."""
    from torch_tensorrt.dynamo.conversion import plugins

    for name in scan_op_names():
        if name not in _PLUGINS_REGISTERED:
            plugins.custom_op(name, supports_dynamic_shapes=True)
            _PLUGINS_REGISTERED.add(name)


def to_tensorrt(
    model,
    path=None,
    *,
    example: torch.Tensor | None = None,
    dtype="float16",
    dynamic_batch: bool = True,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 32,
    workspace_size: int | None = None,
):
    """Compile ``model`` with torch-tensorrt; the scan runs as a TensorRT plugin.

    dtype: the engine precision (float32, float16, bfloat16); the model is cast to it.
    dynamic_batch: the engine accepts batch in [min_batch, max_batch], tuned for opt_batch
    (default: the example's batch). path: if given, the compiled program is saved there
    (``torch_tensorrt.save``, an ExportedProgram ``.ep``), atomically. Returns the compiled
    module."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(f"to_tensorrt: {reason}")
    import torch_tensorrt

    dt = parse_dtype(dtype)
    if path is not None:
        check_writable(path, arg="path")
    m = resolve_model(model).to(device="cuda", dtype=dt)
    x = example_input(m, example).to(device="cuda", dtype=dt)
    register_scan_plugins()
    ep = to_exported_program(m, x, dynamic_batch=dynamic_batch, max_batch=max_batch)
    shape = tuple(x.shape[1:])
    if dynamic_batch:
        opt = check_batch(opt_batch or x.shape[0], arg="opt_batch")
        inp = torch_tensorrt.Input(
            min_shape=(check_batch(min_batch, arg="min_batch"), *shape),
            opt_shape=(opt, *shape),
            max_shape=(check_batch(max_batch, arg="max_batch"), *shape),
            dtype=dt,
        )
    else:
        inp = torch_tensorrt.Input(shape=tuple(x.shape), dtype=dt)
    kw = {} if workspace_size is None else {"workspace_size": workspace_size}
    trt_gm = torch_tensorrt.dynamo.compile(
        ep, inputs=[inp], enabled_precisions={dt}, use_explicit_typing=False, **kw
    )
    if path is not None:
        with atomic_path(path, arg="path") as tmp:
            torch_tensorrt.save(trt_gm, str(tmp), inputs=[x])
    return trt_gm


def trtexec_command(
    onnx_path,
    engine_path=None,
    *,
    input_size=(3, 224, 224),
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    fp16: bool = True,
    input_name: str = "pixel_values",
) -> str:
    """The ``trtexec`` line that builds an engine from a :func:`vimc.export.to_onnx` file
    (standard operators only, so no plugin library is needed)."""
    dims = "x".join(str(int(s)) for s in input_size)
    engine = engine_path or str(Path(onnx_path).with_suffix(".engine"))
    parts = [f"trtexec --onnx={onnx_path}", f"--saveEngine={engine}"]
    if fp16:
        parts.append("--fp16")
    parts += [
        f"--minShapes={input_name}:{min_batch}x{dims}",
        f"--optShapes={input_name}:{opt_batch}x{dims}",
        f"--maxShapes={input_name}:{max_batch}x{dims}",
    ]
    return " ".join(parts)
