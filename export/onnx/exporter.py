"""The entry points: a Vim -> ``torch.export`` -> ONNX (with the translation table) -> the
chosen lowering -> ``onnx.checker`` -> an atomically written file."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from .._atomic import atomic_path, check_writable
from .._common import TORCH_EXPORT_LOCK, quiet_torch_export
from ..program import to_exported_program
from .names import (
    BATCH_AXIS,
    DEFAULT_SCAN,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    SCAN_METADATA,
    resolve_lowering,
)
from .paired import lower_scans
from .step import resolve_unroll
from .translation import translation_table


def _check_opset(opset) -> None:
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset must be >= {MIN_OPSET} (torch.onnx's dynamo exporter), got {opset}"
        )


def _rename_batch_axis(model_proto, name: str) -> None:
    """Give the graph input's batch symbol (``s77`` and the like) a readable name everywhere."""
    dim0 = model_proto.graph.input[0].type.tensor_type.shape.dim[0]
    old = dim0.dim_param
    if not old:
        return
    for vi in itertools.chain(
        model_proto.graph.input, model_proto.graph.output, model_proto.graph.value_info
    ):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = name


def export_onnx_proto(
    model,
    example: torch.Tensor | None = None,
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    scan: str = DEFAULT_SCAN,
    unroll: int | None = None,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
):
    """The ONNX ModelProto of ``model`` (nothing written). See :func:`to_onnx`."""
    import onnx

    scan = resolve_lowering(scan, arg="scan")
    _check_opset(opset)
    k = resolve_unroll(unroll)
    # the plugin route records one token-major op per layer (its export form has its name);
    # the lowerings start from one op per scan
    form = "plugin" if scan == "plugin" else "per_direction"
    ep = to_exported_program(model, example, dynamic_batch=dynamic_batch, scan_form=form)
    x = ep.example_inputs[0][0]
    with TORCH_EXPORT_LOCK, quiet_torch_export():
        prog = torch.onnx.export(
            ep,
            (x,),
            input_names=[input_name],
            output_names=[output_name],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            custom_translation_table=translation_table(),
            verbose=False,
        )
    mp = prog.model_proto
    if scan == "plugin":
        mp.metadata_props.add(key=SCAN_METADATA, value="plugin")
    else:
        lower_scans(mp, scan, k)
        mp.metadata_props.add(key=SCAN_METADATA, value=scan if k == 1 else f"{scan}({k})")
    if dynamic_batch:
        _rename_batch_axis(mp, BATCH_AXIS)
    mp.producer_name = "vimc"
    # full_check runs ONNX's shape inference, which knows no schema of the vimc nodes
    onnx.checker.check_model(mp, full_check=scan != "plugin")
    return mp


def to_onnx(
    model,
    path,
    *,
    example: torch.Tensor | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    scan: str = DEFAULT_SCAN,
    unroll: int | None = None,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> Path:
    """Export ``model`` (an nn.Module or a registered name) to the ONNX file ``path``.

    ``scan``, how the selective scan is written:

    - ``"paired"`` (default): standard ``ai.onnx`` operators only, a layer's two directions in
      one ``Scan`` loop; stock ONNX Runtime, ``trtexec`` and others load the file without a
      plugin, and it passes ``onnx.checker.check_model(full_check=True)``.
    - ``"step"``: standard operators, one ``Scan`` per direction.
    - ``"plugin"``: one ``vimc.SelectiveScanBidirectional`` node per layer, which vimc's ONNX
      Runtime plugin runs (:func:`ort_plugin_path`; :func:`onnxruntime_session` registers
      it); stock runtimes cannot.

    ``"bidir"`` and ``"custom"`` are the deprecated spellings of ``"paired"`` and
    ``"plugin"`` (FutureWarning); ``"scan"`` and ``"unrolled"`` were removed (ValueError).
    ``unroll``: steps per ``Scan`` iteration of "paired" and "step" (default 1). Input
    ``pixel_values`` (batch, C, H, W), output ``logits`` (batch, num_classes); ``batch`` is
    dynamic unless ``dynamic_batch=False``. ``opset``: default the exporter's (>= 18). The
    file is written atomically and records the lowering in its metadata (``vimc.scan``).
    Returns the path."""
    import onnx

    scan = resolve_lowering(scan, arg="scan")  # warns at the caller's line
    check_writable(path, arg="path")
    mp = export_onnx_proto(
        model,
        example,
        opset=opset,
        dynamic_batch=dynamic_batch,
        scan=scan,
        unroll=unroll,
        input_name=input_name,
        output_name=output_name,
    )
    with atomic_path(path, arg="path") as tmp:
        onnx.save_model(mp, str(tmp))
    return Path(path)
