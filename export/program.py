"""torch.export: the one graph every other route starts from.

A Vim mixer can run its scans and convolutions in equal forms whose graphs differ
(``BiMambaMixer.scan_form`` / ``conv_form``, vimc/layers.py). Which form an artifact wants is
an export decision, so it is made here: :func:`model_forms` sets the mixers' forms for the
duration of one export and restores them after. The scan forms an export asks for
(``scan_form=``, one of ``SCAN_FORMS``):

- ``"per_direction"`` (default): one ``vimc::selective_scan_fwd`` node per direction and
  layer, and one ``Conv`` per direction's depthwise conv: what the ONNX standard-op lowerings
  and TensorRT translate node by node;
- ``"bidirectional"``: one ``vimc::selective_scan_bidirectional_proj_fwd`` node per layer (both
  directions and their dt_proj; ``..._fwd`` and the linears when traced with grad mode on)
  and the convs in the mixer's default form (one ``vimc::conv1d_silu_pair_fwd`` node per layer
  for CPU float32 inputs, where vimc's C kernel runs; shifted multiply-adds elsewhere and with
  grad mode on), for programs that compile the graph and call vimc's kernels back
  (AOTInductor CPU packages with ``to_aoti(scan_form="bidirectional")``): one scan call for
  both directions;
- ``"core"``: one ``vimc::mixer_core_fwd`` node per layer for everything between in_proj and
  out_proj (both directions' conv, x_proj, dt_proj, scan and the gate) where its C kernel
  runs (CPU float32, inner width a multiple of the kernel's vector width, dt rank <= 64:
  ``mixer_core_available``), the "bidirectional" form elsewhere: the mixer's own default, as
  eager and compiled models run on CPU, for AOTInductor CPU packages (``to_aoti``'s default);
- ``"plugin"``: the ONNX plugin route (``to_onnx(scan="plugin")``), whose nodes vimc's ONNX
  Runtime plugin runs: one ``vimc::mixer_core_fwd`` node per layer where
  :func:`plugin_core_fits` (Vim's sizes, CPU float32, with the kernel available here), else
  one ``vimc::selective_scan_bidirectional_token_major`` node on the mixer's (B, L, .) tensors
  and ``Conv`` nodes.

The same forms carry ``BiMambaMixer.x_proj_align``: the x_proj weight padded for MKL's GEMM
stays in the programs Inductor compiles ("bidirectional", and "core" where it falls back to
it), while graphs translated node by node
("per_direction", "plugin") take the stored weight, so the ONNX files carry no Pad node run on
every inference.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from vimc.layers import BiMambaMixer, mixer_forms

from ._common import (
    TORCH_EXPORT_LOCK,
    batch_dim,
    check_names,
    example_input,
    export_example,
    quiet_torch_export,
    resolve_model,
)

SCAN_FORMS = ("per_direction", "bidirectional", "core", "plugin")
_OLD_SCAN_FORMS = {"token_major": "plugin"}  # deprecated spellings, for one release
# (mixer scan_form, conv_form, x_proj_align) per export scan form
_MIXER_FORMS = {
    "per_direction": ("per_direction", "channel_major", 1),
    "bidirectional": ("bidirectional", "fused", BiMambaMixer.x_proj_align),
    "core": ("core", "fused", BiMambaMixer.x_proj_align),
    "plugin": ("token_major", "channel_major", 1),
}
_FORM_ATTRS = ("scan_form", "conv_form", "x_proj_align")
PLUGIN_CORE_ALIGN = 16  # channels per vector of the widest plugin build (AVX-512)


def check_scan_form(scan_form: str) -> str:
    """``scan_form`` checked, a deprecated spelling mapped to its new name with a warning."""
    if scan_form in _OLD_SCAN_FORMS:
        new = _OLD_SCAN_FORMS[scan_form]
        warnings.warn(
            f"scan_form={scan_form!r} is deprecated; use scan_form={new!r}",
            FutureWarning,
            stacklevel=3,
        )
        scan_form = new
    return check_names([scan_form], SCAN_FORMS, arg="scan_form")[0]


@contextlib.contextmanager
def model_forms(model: nn.Module, scan_form: str):
    """Within this block, every mixer of ``model`` runs in the forms export ``scan_form``
    records (module doc); the model's own forms come back afterwards, also on error."""
    scan_form = check_scan_form(scan_form)
    forms = dict(zip(_FORM_ATTRS, _MIXER_FORMS[scan_form]))
    with TORCH_EXPORT_LOCK, contextlib.ExitStack() as stack:  # one export at a time: the
        stack.enter_context(mixer_forms(model, **forms))  # forms are the model's own state
        if scan_form == "plugin":
            for m in model.modules():
                if isinstance(m, BiMambaMixer) and plugin_core_fits(m):
                    stack.enter_context(mixer_forms(m, scan_form="core", conv_form="fused"))
        yield model


def plugin_core_fits(mixer: BiMambaMixer) -> bool:
    """Whether the plugin route records ``mixer`` as one ``vimc::mixer_core_fwd`` node (the
    plugin's ``vimc.MixerCore``): its mixer core runs here on CPU float32 inputs (the trace
    takes that branch), and its inner width is a multiple of 16, the widest vector width of
    any plugin build, so the file runs wherever the plugin does."""
    E = mixer.d_inner
    with torch.no_grad():
        runs = mixer.core_runs(torch.empty(1, 1, 2 * E))
    return runs and E % PLUGIN_CORE_ALIGN == 0


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
    scan_form: how the mixers' scans are recorded, one of ``SCAN_FORMS`` (module doc;
    ``"token_major"`` is the deprecated name of ``"plugin"``). Thread-safe: concurrent calls
    run one at a time, each with its own forms.
    """
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be a bool, got {type(dynamic_batch).__name__}")
    scan_form = check_scan_form(scan_form)
    m: nn.Module = resolve_model(model)
    x = export_example(example_input(m, example), dynamic_batch)
    with torch.no_grad(), model_forms(m, scan_form), quiet_torch_export():
        return torch.export.export(
            m, (x,), dynamic_shapes=batch_dim(x, dynamic_batch, max_batch), strict=strict
        )


def vimc_nodes(ep: torch.export.ExportedProgram) -> list:
    """The graph's ``vimc`` op nodes (the scans, the fused convs of the "bidirectional" form,
    the mixer cores of the "core" form)."""
    return [
        n
        for n in ep.graph.nodes
        if n.op == "call_function" and getattr(n.target, "namespace", None) == "vimc"
    ]


def scan_nodes(ep: torch.export.ExportedProgram) -> list:
    """The graph's scan nodes (``vimc::selective_scan*``)."""
    return [n for n in vimc_nodes(ep) if "selective_scan" in str(n.target)]
