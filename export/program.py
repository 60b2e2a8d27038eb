"""torch.export: the one graph every other route starts from.

By default the scan stays one ``vimc::selective_scan_fwd`` node per direction and layer (its
fake kernel gives shapes), so the ONNX route translates it to standard ops and TensorRT swaps
in a plugin. ``scan_form`` asks for another form (``export_scan_form`` in
ops/selective_scan/bidirectional.py): AOTInductor, which calls vimc's kernels back, takes
``"bidirectional"``, one ``vimc::selective_scan_bidirectional_fwd*`` node per layer (one
kernel call for both directions, as the eager and compiled model make on CPU); the ONNX
plugin form takes ``"token_major"``, one such node on the mixer's (B, L, .) tensors.
"""

from __future__ import annotations

import torch
from torch import nn
from vimc.ops.selective_scan.bidirectional import EXPORT_FORMS, export_scan_form

from ._common import batch_dim, check_names, example_input, export_example, resolve_model


def to_exported_program(
    model,
    example: torch.Tensor | None = None,
    *,
    dynamic_batch: bool = True,
    max_batch: int = 4096,
    strict: bool = False,
    scan_form: str = "per_direction",
) -> torch.export.ExportedProgram:
    """``torch.export`` a Vim (an nn.Module or a registered name) for inference.

    example: a (B, C, H, W) input; default a random batch at ``model.pretrained_cfg``'s input
    size. dynamic_batch: the batch axis is a symbol ``batch`` in [1, max_batch] (a batch-1
    example is traced at batch 2, since export specializes size-1 axes); False fixes it to
    the example's batch. The spatial size is always fixed (it fixes the sequence length).
    scan_form: how a layer's two scan directions are recorded on CPU (one of
    ``EXPORT_FORMS``): ``"per_direction"``, one ``vimc::selective_scan_fwd`` each (what the
    ONNX standard-op and TensorRT routes translate); ``"bidirectional"``, one
    ``vimc::selective_scan_bidirectional_fwd*`` node for both (programs that run vimc's own
    kernels, such as AOTInductor packages); ``"token_major"``, one
    ``vimc::selective_scan_bidirectional_token_major`` node (the ONNX plugin form).
    Thread-safe: concurrent calls run one at a time (torch.export's tracer fails when two
    threads trace at once).
    """
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {type(dynamic_batch).__name__}")
    check_names([scan_form], EXPORT_FORMS, arg="scan_form")
    m: nn.Module = resolve_model(model)
    x = export_example(example_input(m, example), dynamic_batch)
    with torch.no_grad(), export_scan_form(scan_form):
        return torch.export.export(
            m, (x,), dynamic_shapes=batch_dim(x, dynamic_batch, max_batch), strict=strict
        )


def scan_nodes(ep: torch.export.ExportedProgram) -> list:
    """The graph's ``vimc`` op nodes (the scans)."""
    return [
        n
        for n in ep.graph.nodes
        if n.op == "call_function" and getattr(n.target, "namespace", None) == "vimc"
    ]
