"""The translation table: which torch op of an exported Vim becomes which ONNX node.

``torch.onnx.export(dynamo=True)`` translates every standard aten op itself; vimc's scan ops
are opaque to it, so this table gives each one a node in the custom domain ``vimc``:

- ``vimc::selective_scan_fwd`` (and its CUDA ``triton_op`` twin) -> ``vimc.SelectiveScan``,
  one scan with mamba's signature. It is a placeholder: the standard-op lowerings ("paired",
  "step") replace it with an ONNX ``Scan``, and the plugin route keeps it where a scan has no
  partner direction.
- ``vimc::selective_scan_bidirectional_token_major`` -> ``vimc.SelectiveScanBidirectional``,
  a Vim layer's two scans on token-major tensors: the plugin route's node, which vimc's ONNX
  Runtime plugin runs.
- ``vimc::mixer_core_fwd`` -> ``vimc.MixerCore``, a Vim mixer from in_proj's output to
  out_proj's input (conv, x_proj, dt_proj, both scans, the gate): the plugin route's node where
  it fits (export/program.py), which the plugin runs with the mixer core's kernel.

Each node is declared with an ONNX schema (inputs, optional ones, attributes), so the exporter
can record it and ``onnx.checker`` can check the graph around it.
"""

from __future__ import annotations

import torch

from .names import BIDIR_OP, MIXER_OP, SCAN_DOMAIN, SCAN_OP


def _schema_op(name: str, doc: str, inputs: list[str], optional: set[str], outputs, attrs):
    """An onnxscript op ``vimc.<name>`` with a schema, so the exporter can record it."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    P = OpSchema.FormalParameter
    opt = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        name,
        SCAN_DOMAIN,
        1,
        doc=doc,
        inputs=[P(n, "T", param_option=opt) if n in optional else P(n, "T") for n in inputs],
        outputs=[P(n, t) for n, t in outputs],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"], ""),
            ("S", ["tensor(float)", "tensor(double)"], ""),
        ],
        attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT, "0 or 1") for a in attrs],
    )
    return Op(Opset(SCAN_DOMAIN, 1), name, schema)


def _placeholder_op():
    """``vimc.SelectiveScan``: one scan, mamba's signature (the placeholder every lowering
    replaces, and the plugin route's node where a scan has no token-major pair)."""
    return _schema_op(
        SCAN_OP,
        "Mamba selective scan: u, delta, z (Bt, E, L); A (E, N); B, C (Bt, G, N, L); "
        "D, delta_bias (E,). Outputs out (Bt, E, L) and the last state (Bt, E, N).",
        ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"],
        {"D", "z", "delta_bias"},
        [("out", "T"), ("last_state", "S")],
        ["delta_softplus", "reverse"],
    )


def _bidirectional_op():
    """``vimc.SelectiveScanBidirectional``: a Vim mixer's two scans on token-major tensors."""
    one = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    return _schema_op(
        BIDIR_OP,
        "Vim's two selective scans, averaged and gated: (scan(u, ...) + scan(u_b, ..., "
        "reverse)) / 2 * silu(z), token-major: u, delta, z (Bt, L, E); B, C (Bt, L, N); "
        "A (E, N); D, delta_bias (E,); the *_b inputs the reverse direction's. Output "
        "(Bt, L, E).",
        [*one, *(n + "_b" for n in one), "z"],
        {"D", "delta_bias", "D_b", "delta_bias_b", "z"},
        [("out", "T")],
        ["delta_softplus"],
    )


def _mixer_core_op():
    """``vimc.MixerCore``: vimc::mixer_core_fwd, a Vim mixer's core in one node."""
    from vimc.ops.selective_scan.mixer import _ARGS

    return _schema_op(
        MIXER_OP,
        "A Vim mixer from in_proj's output xz (B, L, 2E) to out_proj's input (B, L, E): each "
        "direction's depthwise conv (E, 1, K) + bias and silu, x_proj (R + 2N, E), dt_proj "
        "(E, R) + bias and softplus, the selective scan with A (E, N) and D (E,), the reverse "
        "direction's (the *_b inputs) backwards in time; out = (y + y_b) / 2 * silu(z).",
        list(_ARGS),
        set(),
        [("out", "T")],
        [],
    )


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: vimc's scan ops -> vimc nodes."""
    op, bidir, core = _placeholder_op(), _bidirectional_op(), _mixer_core_op()

    def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        return op(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            delta_softplus=int(bool(delta_softplus)),
            reverse=int(bool(reverse)),
        )

    def token_major(*args):
        *tensors, delta_softplus = args
        return bidir(*tensors, delta_softplus=int(bool(delta_softplus)))

    table = {
        torch.ops.vimc.selective_scan_fwd.default: selective_scan_fwd,
        torch.ops.vimc.selective_scan_bidirectional_token_major.default: token_major,
        torch.ops.vimc.mixer_core_fwd.default: core,
    }
    cuda = getattr(torch.ops.vimc, "selective_scan_fwd_cuda", None)
    if cuda is not None:  # the triton_op twin, traced when the model sits on a GPU
        table[cuda.default] = selective_scan_fwd
    return table
