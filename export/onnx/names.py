"""The names an ONNX file of vimc's and its callers share: the graph's input and output, the
``vimc`` domain and its nodes, and the scan lowerings ``to_onnx(scan=...)`` and
``vimc export onnx --scan`` take, with their old spellings.

The lowerings:

- ``"paired"`` (the default): standard operators; a Vim layer's two directions in one ONNX
  ``Scan`` (paired.py).
- ``"step"``: standard operators; one ``Scan`` per direction (step.py).
- ``"plugin"``: one ``vimc.MixerCore`` node per layer (conv, x_proj, dt_proj, both scans and
  the gate), or ``vimc.SelectiveScanBidirectional`` where it does not fit, which vimc's ONNX
  Runtime plugin runs (plugin.py).

Old spellings: ``"bidir"`` is ``"paired"`` and ``"custom"`` is ``"plugin"``; they still work
for one release, with a FutureWarning. ``"scan"`` and ``"unrolled"`` (decays materialized
for every step outside the loop) were removed: the project's measurements show them slower
than ``"step"`` (README, "The scan in ONNX"), and nothing needs them.
"""

from __future__ import annotations

import warnings

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"  # the name of the dynamic batch symbol in the file

SCAN_DOMAIN = "vimc"  # the custom domain of the placeholder and plugin nodes (opset 1)
SCAN_OP = "SelectiveScan"  # one scan: the placeholder every lowering starts from
BIDIR_OP = "SelectiveScanBidirectional"  # the plugin route's node: a Vim layer's two scans
MIXER_OP = "MixerCore"  # the plugin route's node where it fits: a Vim mixer's whole core

STANDARD_LOWERINGS = ("paired", "step")  # standard operators only
SCAN_LOWERINGS = (*STANDARD_LOWERINGS, "plugin")
DEFAULT_SCAN = "paired"
STEP_UNROLL = 1  # default steps per Scan iteration of "step" and "paired"
MIN_OPSET = 18  # torch.onnx's dynamo exporter writes nothing older

SCAN_METADATA = "vimc.scan"  # the file's metadata key naming its lowering
RENAMED = {"bidir": "paired", "custom": "plugin"}  # old spelling -> name, for one release
REMOVED = ("scan", "unrolled")


def resolve_lowering(
    name, *, arg: str = "scan", choices=SCAN_LOWERINGS, stacklevel: int = 3
) -> str:
    """The lowering ``name`` spells, from ``choices``: an old spelling gives its new name with
    a FutureWarning (pointing ``stacklevel`` frames up: 3 is the caller's caller); a removed
    lowering or an unknown name raises ValueError naming ``arg`` and the choices."""
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a string, got {type(name).__name__}")
    if name in RENAMED and RENAMED[name] in choices:
        new = RENAMED[name]
        warnings.warn(
            f"{arg}={name!r} is deprecated and will be removed in the next release; "
            f"use {arg}={new!r} (the same lowering)",
            FutureWarning,
            stacklevel=stacklevel,
        )
        return new
    if name in REMOVED:
        raise ValueError(
            f"{arg}={name!r} was removed (it was slower than 'step'); "
            f"use 'step' or 'paired' (choices: {', '.join(choices)})"
        )
    if name not in choices:
        raise ValueError(f"{arg}: unknown {name!r}; choose from {', '.join(choices)}")
    return name


def read_scan_lowering(model_proto) -> str | None:
    """The lowering a vimc ONNX file records in its metadata (``"paired"``, ``"step(2)"``,
    ``"plugin"``...), old spellings read as their new names; None when it records none."""
    value = next((p.value for p in model_proto.metadata_props if p.key == SCAN_METADATA), None)
    if value is None:
        return None
    name, paren, rest = value.partition("(")
    return RENAMED.get(name, name) + paren + rest
