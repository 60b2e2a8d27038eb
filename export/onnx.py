"""ONNX: a file that stock runtimes load, the scan written in standard operators.

Route: ``torch.export`` (program.py) -> ``torch.onnx.export(dynamo=True)`` with a custom
translation that emits one placeholder ``vimc.SelectiveScan`` node per scan -> each
placeholder is lowered here to a subgraph of ``ai.onnx`` operators -> ``onnx.checker``
(``full_check=True``) -> atomic write.

The lowering (``scan=``), every exponent ``delta * A <= 0``, nothing exponentiated over a
cumulative sum:

- ``"bidir"`` (default): ``"step"``, with the two directions of a Vim layer (the two
  placeholders reading one ``z``) in one ``Scan``, a state each, the reverse one through
  ``Scan``'s reverse directions: half the ``Scan`` iterations. A placeholder without such a
  partner is lowered as in ``"step"``.
- ``"step"``: the whole step inside the ``Scan`` body, six nodes on cache-resident tensors
  (``a = exp(delta_t * A)``, ``h = a * h + B_t delta_t u_t``, ``y_t = C_t h``); nothing of
  size (L, Bt, E, N) is ever materialized. ``unroll`` steps per iteration (default 1).
- ``"scan"``: decays ``exp(delta * A)`` and inputs ``delta * u * B`` are computed for all
  steps at once, time-major, outside the loop; an ONNX ``Scan`` then runs the recurrence
  ``h = a_t * h + b_t``, two nodes per step; ``y_t = <h_t, C_t>`` is one batched
  multiply-reduce after the loop. Each of those (L, Bt, E, N) tensors costs a memory pass
  per node.
- ``"unrolled"``: ``"scan"`` with ``unroll`` steps per ``Scan`` iteration (time padded with
  a = 1, b = 0, which leaves h unchanged), adding Split/Concat copies.
- ``"custom"`` (the plugin form): one ``SelectiveScanBidirectional`` node per Vim layer in
  the custom domain ``vimc`` (opset 1), on the mixer's token-major (batch, L, .) tensors, so
  no transposes surround it (a scan without a partner stays a ``SelectiveScan`` node).
  vimc's ONNX Runtime plugin runs both (ops/selective_scan/ort_plugin.c;
  :func:`ort_plugin_path`, and :func:`onnxruntime_session` registers it for such files);
  stock runtimes cannot. :func:`to_onnx` marks the file in its metadata
  (``vimc.scan = custom``).

Measured on one Vim-Ti layer's scans in ONNX Runtime (CPU, 1 thread), both directions,
benchmarks/results/onnx_scan-amd-epyc-2c.md (benchmarks/onnx_scan.py): batch 1 "scan"
11.6 ms, "step" 5.5, "bidir" 5.2; batch 8 100, 35.1, 33.8. "unrolled" (8 steps) was 1.3x
slower than "scan"; 2 or 4 steps per iteration made "step" and "bidir" 1-6% slower. One
graph timed twice in that run differed by up to 3%. The whole model: benchmarks/export.py
(``--onnx-scan`` compares formulations).

Inputs and outputs: ``pixel_values`` (batch, 3, H, W) float -> ``logits`` (batch,
num_classes); the batch axis is the symbol ``batch`` unless ``dynamic_batch=False``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from ._atomic import atomic_path, check_writable
from ._common import check_names
from .program import to_exported_program

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
SCAN_DOMAIN = "vimc"
SCAN_OP = "SelectiveScan"
BIDIR_OP = "SelectiveScanBidirectional"  # the plugin form's node per Vim layer
LOWERINGS = ("step", "bidir", "scan", "unrolled")  # formulations made of standard operators
SCAN_FORMULATIONS = (*LOWERINGS, "custom")
DEFAULT_SCAN = "bidir"
UNROLL = 8  # steps per Scan iteration of "unrolled"
STEP_UNROLL = 1  # steps per Scan iteration of "step" and "bidir"
MIN_OPSET = 18


# ---------------------------------------------------------------------------------------------
# 1. the translation: one placeholder node per scan
# ---------------------------------------------------------------------------------------------


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
    replaces, and the plugin form's node where a scan has no token-major pair)."""
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


def _translation_table() -> dict:
    op, bidir = _placeholder_op(), _bidirectional_op()

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
    }
    cuda = getattr(torch.ops.vimc, "selective_scan_fwd_cuda", None)
    if cuda is not None:  # the triton_op twin, traced when the model sits on a GPU
        table[cuda.default] = selective_scan_fwd
    return table


# ---------------------------------------------------------------------------------------------
# 2. the lowering of placeholders to standard operators
# ---------------------------------------------------------------------------------------------

INT64_MAX = 2**63 - 1


class _Builder:
    """Appends nodes with unique names under a prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes = []
        self._ids = itertools.count()

    def name(self, hint: str) -> str:
        return f"{self.prefix}/{hint}_{next(self._ids)}"

    def __call__(self, op_type: str, inputs, hint: str | None = None, n_out: int = 1, **attrs):
        from onnx import helper

        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs)
        )
        return outs[0] if n_out == 1 else outs

    def const(self, values, hint="c", dtype="int64"):
        import numpy as np
        from onnx import helper, numpy_helper

        out = self.name(hint)
        t = numpy_helper.from_array(np.asarray(values, dtype=dtype), out)
        self.nodes.append(
            helper.make_node("Constant", [], [out], name=self.name("Constant"), value=t)
        )
        return out

    def f32(self, t: str) -> str:
        from onnx import TensorProto

        return self("Cast", [t], "f32", to=TensorProto.FLOAT)

    def shape(self, t: str, start: int, end: int | None = None, hint: str = "shape") -> str:
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        return self("Shape", [t], hint, **attrs)


def _signature(node):
    """(u, delta, A, B, C, D, z, delta_bias) with "" for absent inputs, out, last, softplus,
    reverse of a placeholder node."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * (8 - len(node.input))
    out, last = (list(node.output) + ["", ""])[:2]
    softplus, reverse = bool(attrs.get("delta_softplus", 0)), bool(attrs.get("reverse", 0))
    return ins, out, last, softplus, reverse


def _delta(b: _Builder, delta: str, bias: str, softplus: bool) -> str:
    """float32 delta (Bt, E, L) + bias, through mamba's softplus."""
    df = b.f32(delta)
    if bias:
        df = b("Add", [df, b("Unsqueeze", [b.f32(bias), b.const([1])])], "delta_b")
    if softplus:
        # relu(x) + log(1 + exp(-|x|)): ONNX Runtime's CPU Softplus kernel was ~4x slower than
        # these seven nodes on a (8, 384, 197) tensor, one thread (ad hoc, not a benchmark
        # here). Differs from mamba's softplus (x itself above 20) by at most the float32
        # rounding of 1 + exp(-|x|), 6e-8 absolute; above 20 the log term is below x's half ulp.
        e = b("Exp", [b("Neg", [b("Abs", [df], "abs")], "neg")], "e")
        log1p = b("Log", [b("Add", [e, b.const(1.0, "one", "float32")], "e1")], "log1p")
        df = b("Add", [b("Relu", [df], "relu"), log1p], "delta_sp")
    return df


def _finish(b: _Builder, y: str, uf: str, u: str, D: str, z: str, out: str, gates=None) -> None:
    """out = CastLike((y + u * D) * silu(z), u); ``gates`` caches silu(z) by z's name."""
    from onnx import helper

    if D:
        D1 = b("Unsqueeze", [b.f32(D), b.const([1])], "D1")
        y = b("Add", [y, b("Mul", [uf, D1], "uD")], "y_d")
    if z:
        gates = {} if gates is None else gates
        if z not in gates:
            zf = b.f32(z)
            gates[z] = b("Mul", [zf, b("Sigmoid", [zf], "sig")], "silu")
        y = b("Mul", [y, gates[z]], "y_z")
    b.nodes.append(helper.make_node("CastLike", [y, u], [out], name=b.name("CastLike")))


def _last_state(b: _Builder, h: str, uf: str, N: str, last: str) -> None:
    """Write the state ``h`` (Bt, G, Eg, N) as ``last`` (Bt, E, N)."""
    from onnx import helper

    shape = b("Concat", [b.shape(uf, 0, 2, "be"), N], "lshape", axis=0)
    b.nodes.append(helper.make_node("Reshape", [h, shape], [last], name=b.name("Reshape")))


# 2a. "scan" and "unrolled": decays and inputs materialized for all steps, outside the loop


def _recurrence_body(unroll: int, reverse: bool, prefix: str):
    """Scan body: state h (1, Bt, G, Eg, N); scan inputs a, b (unroll, Bt, G, Eg, N) ->
    new state, scan output H (unroll, Bt, G, Eg, N) with H[k] the state after step k.
    With unroll == 1 the unit axes are dropped (h, a, b all (Bt, G, Eg, N)) and the scan
    output is a_t * h_{t-1}, to which the caller adds b."""
    from onnx import TensorProto, helper

    b = _Builder(prefix + "/body")
    h_in, a_in, x_in = f"{prefix}/h_in", f"{prefix}/a_in", f"{prefix}/b_in"
    if unroll == 1:
        a_steps, x_steps = [a_in], [x_in]
    else:
        sizes = b.const([1] * unroll, "split")
        a_steps = b("Split", [a_in, sizes], "a", n_out=unroll, axis=0)
        x_steps = b("Split", [x_in, sizes], "b", n_out=unroll, axis=0)
    if unroll == 1:
        # two nodes per step: the scan output is a_t * h_{t-1}; H = that + b, added after the
        # loop in one batched Add (an Identity to tell the state from the scan output would
        # cost a third node execution per step)
        H = b("Mul", [a_steps[0], h_in], "ah")
        h_out = b("Add", [H, x_steps[0]], "h")
    else:
        hs = [None] * unroll
        h = h_in
        for k in range(unroll - 1, -1, -1) if reverse else range(unroll):
            h = b("Add", [b("Mul", [a_steps[k], h], "ah"), x_steps[k]], "h")
            hs[k] = h
        h_out = b("Identity", [h], "h_out")
        H = b("Concat", hs, "H", axis=0)
    rank = 5 if unroll > 1 else 4
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * rank)  # noqa: E731
    return helper.make_graph(
        b.nodes,
        prefix.replace("/", "_") + "_body",
        [vi(h_in), vi(a_in), vi(x_in)],
        [vi(h_out), vi(H)],
    )


def _float_inputs(b: _Builder, node):
    """A placeholder's inputs as float32 nodes: (u, A, B, C, the final delta (bias and softplus
    applied)), its group count G and state size N (1-element tensors), and the rest of its
    signature: (D, z, out, last, reverse)."""
    (u, delta, A, B, C, D, z, bias), out, last, softplus, reverse = _signature(node)
    uf, Af, Bf, Cf = b.f32(u), b.f32(A), b.f32(B), b.f32(C)
    df = _delta(b, delta, bias, softplus)
    G, N = b.shape(Bf, 1, 2, "G"), b.shape(Af, 1, 2, "N")
    return (uf, Af, Bf, Cf, df), (G, N), (u, D, z, out, last, reverse)


def _lower_materialized(node, unroll: int) -> list:
    """Formulations "scan" (unroll == 1) and "unrolled"."""
    b = _Builder(node.name or "selective_scan")
    (uf, Af, Bf, Cf, df), (G, N), (u, D, z, out, last, reverse) = _float_inputs(b, node)
    # groups: (Bt, E, L) -> (Bt, G, Eg, L); A (E, N) -> (G, Eg, N)
    to_groups = b(
        "Concat",
        [b.shape(uf, 0, 1, "bt"), G, b.const([-1]), b.shape(uf, 2, 3, "l")],
        "gshape",
        axis=0,
    )
    dG = b("Reshape", [df, to_groups], "dG")
    xG = b("Reshape", [b("Mul", [df, uf], "du"), to_groups], "duG")
    AG = b("Reshape", [Af, b("Concat", [G, b.const([-1]), N], "ashape", axis=0)], "AG")
    # time-major (L, Bt, G, Eg, N): transposes act on the small (Bt, E, L) tensors only
    tm = [3, 0, 1, 2]
    last_axis = b.const([4])
    dT = b("Unsqueeze", [b("Transpose", [dG], "dT", perm=tm), last_axis], "dT5")
    xT = b("Unsqueeze", [b("Transpose", [xG], "xT", perm=tm), last_axis], "xT5")
    BT = b("Unsqueeze", [b("Transpose", [Bf], "BT", perm=tm), b.const([3])], "BT5")
    CT = b("Unsqueeze", [b("Transpose", [Cf], "CT", perm=tm), b.const([3])], "CT5")
    a = b("Exp", [b("Mul", [dT, AG], "dlog")], "decay")  # (L, Bt, G, Eg, N), in (0, 1]
    x = b("Mul", [xT, BT], "inp")  # (L, Bt, G, Eg, N)
    L = b.shape(a, 0, 1, "L")
    state_shape = b.shape(a, 1, hint="s")  # (Bt, G, Eg, N)
    if unroll > 1:  # the state keeps a unit step axis: (1, Bt, G, Eg, N)
        state_shape = b("Concat", [b.const([1]), state_shape], "sshape", axis=0)
    h0 = b("Expand", [b.const([0.0], "zero", "float32"), state_shape], "h0")
    if unroll > 1:
        # pad time to a multiple of unroll with a = 1, b = 0 (h unchanged), then
        # (L', ...) -> (L'/unroll, unroll, ...)
        K = b.const([unroll])
        padn = b("Mod", [b("Sub", [K, b("Mod", [L, K], "r")], "k_r"), K], "padn")
        pads = b(
            "Concat",
            [b.const([0]), b.const([0, 0, 0, 0]), padn, b.const([0, 0, 0, 0])],
            "pads",
            axis=0,
        )
        a = b("Pad", [a, pads, b.const(1.0, "one", "float32")], "a_pad", mode="constant")
        x = b("Pad", [x, pads, b.const(0.0, "zero0", "float32")], "x_pad", mode="constant")
        chunked = b("Concat", [b.const([-1, unroll]), b.shape(a, 1, hint="s2")], "cshape", axis=0)
        a = b("Reshape", [a, chunked], "a_chunks")
        x = b("Reshape", [x, chunked], "x_chunks")
    body = _recurrence_body(unroll, reverse, b.prefix)
    direction = [int(reverse)]
    h_last, H = b(
        "Scan",
        [h0, a, x],
        "scan",
        n_out=2,
        num_scan_inputs=2,
        body=body,
        scan_input_directions=direction * 2,
        scan_output_directions=direction,
    )
    if unroll == 1:
        H = b("Add", [H, x], "H")  # scan output a_t * h_{t-1}, plus b_t
    else:
        flat = b("Concat", [b.const([-1]), b.shape(H, 2, hint="s3")], "hshape", axis=0)
        H = b("Slice", [b("Reshape", [H, flat], "H_flat"), b.const([0]), L, b.const([0])], "H_L")
    y = b("ReduceSum", [b("Mul", [H, CT], "hc"), b.const([-1])], "y", keepdims=0)
    y = b("Reshape", [b("Transpose", [y], "yT", perm=[1, 2, 3, 0]), b("Shape", [uf])], "y_bel")
    _finish(b, y, uf, u, D, z, out)
    if last:
        _last_state(b, h_last, uf, N, last)
    return b.nodes


# 2b. "step" and "bidir": the whole step inside the loop, nothing of size (L, Bt, E, N)
#
# Per step, six nodes on state-sized tensors that stay in cache: dA = d * A, a = exp(dA),
# h = a * h + B du (Mul, MatMul, Add), y = C h (MatMul). Layout (Bt, G, N, Eg), channels
# innermost: every broadcast then runs over contiguous Eg-long rows (with N innermost, ONNX
# Runtime's broadcasting Mul walks 16-float rows; the body ran about twice as slow, ad hoc). A
# reverse direction uses Scan's reverse directions; "bidir" gives the two directions of a
# layer one state each in a single Scan, halving the Scan iterations.


@dataclass
class _StepHalf:
    """One placeholder's inputs for a Scan: seqs d, du (L, Bt, G, 1, Eg), B (L, Bt, G, N, 1),
    C (L, Bt, G, 1, N) in time order; A (G, N, Eg); N its size as a 1-element tensor."""

    u: str
    uf: str
    D: str
    z: str
    out: str
    last: str
    reverse: bool
    N: str
    A: str
    seqs: list


def _step_half(b: _Builder, node) -> _StepHalf:
    (uf, Af, Bf, Cf, df), (G, N), (u, D, z, out, last, reverse) = _float_inputs(b, node)
    # (Bt, E, L) -> (Bt, G, 1, Eg, L) -> time-major (L, Bt, G, 1, Eg)
    grouped = b(
        "Concat",
        [b.shape(uf, 0, 1, "bt"), G, b.const([1, -1]), b.shape(uf, 2, 3, "l")],
        "gshape",
        axis=0,
    )
    perm = [4, 0, 1, 2, 3]
    d = b("Transpose", [b("Reshape", [df, grouped], "dG")], "d", perm=perm)
    du = b("Transpose", [b("Reshape", [b("Mul", [df, uf], "du"), grouped], "duG")], "du", perm=perm)
    tm = [3, 0, 1, 2]
    Bs = b("Unsqueeze", [b("Transpose", [Bf], "BT", perm=tm), b.const([4])], "B5")
    Cs = b("Unsqueeze", [b("Transpose", [Cf], "CT", perm=tm), b.const([3])], "C5")
    AG = b("Reshape", [Af, b("Concat", [G, b.const([-1]), N], "ashape", axis=0)], "AG")
    At = b("Transpose", [AG], "AT", perm=[0, 2, 1])
    return _StepHalf(u, uf, D, z, out, last, reverse, N, At, [d, du, Bs, Cs])


def _step_body(halves: list[_StepHalf], k: int, prefix: str):
    """Scan body of k steps per half: state h (Bt, G, N, Eg) per half; per step scan inputs
    d, du, B, C -> the new states, then one scan output y (Bt, G, 1, Eg) per step and half.
    A reverse half takes its k steps last to first. Each ``A`` is read from the enclosing
    graph."""
    from onnx import TensorProto, helper

    b = _Builder(prefix + "/body")
    states_in, seqs_in, states_out, ys_out = [], [], [], []
    for i, half in enumerate(halves):
        h = f"{prefix}/h{i}_in"
        states_in.append(h)
        steps = [[f"{prefix}/{n}{i}_in{j}" for n in ("d", "du", "B", "C")] for j in range(k)]
        seqs_in += [name for step in steps for name in step]
        ys = [None] * k
        for j in reversed(range(k)) if half.reverse else range(k):
            d, du, B, C = steps[j]
            a = b("Exp", [b("Mul", [d, half.A], "dA")], "a")  # exponent delta * A <= 0
            h = b("Add", [b("Mul", [a, h], "ah"), b("MatMul", [B, du], "bu")], "h")
            ys[j] = b("MatMul", [C, h], "y")  # sum over N: (1, N) @ (N, Eg)
        states_out.append(h)
        ys_out += ys
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4)  # noqa: E731
    return helper.make_graph(
        b.nodes,
        prefix.replace("/", "_") + "_body",
        [vi(n) for n in states_in + seqs_in],
        [vi(n) for n in states_out + ys_out],
    )


def _strided(b: _Builder, seqs: list, k: int) -> list:
    """Each (L, ...) sequence padded in time to a multiple of k, then cut into k sequences
    (times j, j + k, j + 2k, ...), step-major. The padding is zeros: d = 0 gives a = 1 and
    du = 0 adds nothing, so h is unchanged whichever end a direction starts from."""
    L = b.shape(seqs[0], 0, 1, "L")
    K = b.const([k])
    padn = b("Mod", [b("Sub", [K, b("Mod", [L, K], "r")], "k_r"), K], "padn")
    pads = b("Concat", [b.const([0] * 5), padn, b.const([0] * 4)], "pads", axis=0)
    padded = [b("Pad", [s, pads], "pad") for s in seqs]
    ends, axes, step = b.const([INT64_MAX]), b.const([0]), b.const([k])
    return [
        b("Slice", [s, b.const([j]), ends, axes, step], "stride") for j in range(k) for s in padded
    ]


def _interleaved(b: _Builder, ys: list, L: str) -> str:
    """k scan outputs (L'/k, ...) of steps j = 0..k-1 -> one (L, ...) in time order."""
    y = b("Concat", [b("Unsqueeze", [y, b.const([1])], "y1") for y in ys], "ys", axis=1)
    flat = b("Concat", [b.const([-1]), b.shape(ys[0], 1, hint="s")], "yshape", axis=0)
    y = b("Reshape", [y, flat], "y_pad")
    return b("Slice", [y, b.const([0]), L, b.const([0])], "y_L")


def _step_scan(b: _Builder, halves: list[_StepHalf], k: int):
    """One Scan for all halves, one state each; a reverse half runs through Scan's own
    reverse directions. -> per half (last state (Bt, G, N, Eg), y (L, Bt, G, 1, Eg))."""
    h0s, seqs, in_dirs, out_dirs = [], [], [], []
    for half in halves:
        state = b("Concat", [b.shape(half.uf, 0, 1, "bt"), b("Shape", [half.A])], "s", axis=0)
        h0s.append(b("Expand", [b.const([0.0], "zero", "float32"), state], "h0"))
        seqs += half.seqs if k == 1 else _strided(b, half.seqs, k)
        in_dirs += [int(half.reverse)] * 4 * k
        out_dirs += [int(half.reverse)] * k
    n = len(halves)
    outs = b(
        "Scan",
        h0s + seqs,
        "scan",
        n_out=n + n * k,
        num_scan_inputs=len(seqs),
        body=_step_body(halves, k, b.prefix),
        scan_input_directions=in_dirs,
        scan_output_directions=out_dirs,
    )
    results = []
    for i, half in enumerate(halves):
        ys = outs[n + i * k : n + (i + 1) * k]
        y = ys[0] if k == 1 else _interleaved(b, ys, b.shape(half.seqs[0], 0, 1, "L"))
        results.append((outs[i], y))
    return results


def _lower_step(nodes: list, k: int) -> list:
    """Formulations "step" (one node) and "bidir" (two nodes sharing one Scan)."""
    b = _Builder("+".join(n.name or "selective_scan" for n in nodes))
    halves = [_step_half(b, n) for n in nodes]
    gates = {}
    for half, (h, y) in zip(halves, _step_scan(b, halves, k)):
        # (L, Bt, G, 1, Eg) -> (Bt, G, 1, Eg, L) -> (Bt, E, L)
        y = b("Transpose", [y], "yT", perm=[1, 2, 3, 4, 0])
        y = b("Reshape", [y, b("Shape", [half.uf])], "y_bel")
        _finish(b, y, half.uf, half.u, half.D, half.z, half.out, gates)
        if half.last:
            h = b("Transpose", [h], "hT", perm=[0, 1, 3, 2])  # (Bt, G, Eg, N)
            _last_state(b, h, half.uf, half.N, half.last)
    return b.nodes


def _resolve_unroll(formulation: str, unroll: int | None) -> int:
    """Steps per Scan iteration: ``unroll`` checked, or the formulation's default; always 1
    for "scan" (and "custom"), which take none."""
    if unroll is not None and (
        isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1
    ):
        raise ValueError(f"unroll must be an int >= 1 or None, got {unroll!r}")
    defaults = {"unrolled": UNROLL, "step": STEP_UNROLL, "bidir": STEP_UNROLL}
    if formulation not in defaults:
        return 1
    return defaults[formulation] if unroll is None else unroll


def lower_scan_node(node, formulation: str = DEFAULT_SCAN, unroll: int | None = None) -> list:
    """Standard-op nodes equivalent to one ``vimc.SelectiveScan`` placeholder ``node``
    ("bidir" lowers a lone node as "step"). ``unroll``: steps per ``Scan`` iteration of the
    "unrolled", "step" and "bidir" formulations (default: the formulation's own)."""
    check_names([formulation], LOWERINGS, arg="formulation")
    k = _resolve_unroll(formulation, unroll)
    if formulation in ("step", "bidir"):
        return _lower_step([node], k)
    return _lower_materialized(node, k)


def lower_scan_pair(first, second, unroll: int | None = None) -> list:
    """Standard-op nodes equivalent to two placeholders run as one ``Scan`` ("bidir"), one
    state each: the two directions of a Vim layer. The caller checks that they pair
    (:func:`scan_pairs`)."""
    return _lower_step([first, second], _resolve_unroll("bidir", unroll))


# 2c. pairing the two directions of a layer


def _is_placeholder(node) -> bool:
    return node.domain == SCAN_DOMAIN and node.op_type == SCAN_OP


def _outer_names(graph) -> set[str]:
    """Names a (sub)graph reads from its enclosing scope."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = set()
    for n in graph.node:
        used |= _consumed(n)
        local |= set(n.output)
    return used - local


def _consumed(node) -> set[str]:
    """Every name ``node`` reads: its inputs and what its subgraphs read from outside."""
    from onnx import AttributeProto

    names = {i for i in node.input if i}
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            names |= _outer_names(a.g)
        elif a.type == AttributeProto.GRAPHS:
            for g in a.graphs:
                names |= _outer_names(g)
    return names


def _pairable(first, second) -> bool:
    """Two placeholders reading one z run as one Scan when they go in opposite directions
    (their inputs then have one length L: u, delta and z share a shape)."""
    return _signature(first)[4] != _signature(second)[4]


def _depends(nodes: list, later: int, earlier: int) -> bool:
    """Whether ``nodes[later]`` reads, directly or not, an output of ``nodes[earlier]``."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    seen, todo = set(), [later]
    while todo:
        for name in _consumed(nodes[todo.pop()]):
            i = producer.get(name)
            if i == earlier:
                return True
            if i is not None and i not in seen:
                seen.add(i)
                todo.append(i)
    return False


def scan_pairs(graph) -> list[tuple[int, int]]:
    """Index pairs (earlier, later) of placeholder nodes of ``graph`` that can share a Scan:
    the only two placeholders reading one ``z`` (Vim's mixer gates both directions with the
    same z), in opposite directions, the later not depending on the earlier. Any other
    placeholder is lowered on its own."""
    nodes = list(graph.node)
    by_z = {}
    for i, n in enumerate(nodes):
        if _is_placeholder(n):
            z = _signature(n)[0][6]
            if z:
                by_z.setdefault(z, []).append(i)
    return [
        (i, j)
        for i, j in (g for g in by_z.values() if len(g) == 2)
        if _pairable(nodes[i], nodes[j]) and not _depends(nodes, j, i)
    ]


def _topological(nodes: list) -> list:
    """``nodes`` reordered so that every node follows the producers of what it reads, keeping
    the given order where it is free."""
    import heapq

    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, n in enumerate(nodes):
        deps = {producer[x] for x in _consumed(n) if x in producer} - {i}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise RuntimeError("lowering the scans left a cycle in the graph")
    return order


def lower_scans(model_proto, formulation: str = DEFAULT_SCAN, unroll: int | None = None):
    """Replace every ``vimc.SelectiveScan`` node of ``model_proto`` (in place) by standard
    operators; drop the ``vimc`` opset import. With "bidir", the pairs of :func:`scan_pairs`
    share one Scan each. Returns the number of placeholders lowered."""
    check_names([formulation], LOWERINGS, arg="formulation")
    nodes = list(model_proto.graph.node)
    pairs = scan_pairs(model_proto.graph) if formulation == "bidir" else []
    partner = {j: i for i, j in pairs}  # the pair is lowered where its later node stood
    paired = set(partner.values())
    new, count = [], 0
    for i, n in enumerate(nodes):
        if i in partner:
            new.extend(lower_scan_pair(nodes[partner[i]], n, unroll))
            count += 2
        elif i in paired:
            continue
        elif _is_placeholder(n):
            new.extend(lower_scan_node(n, formulation, unroll))
            count += 1
        else:
            new.append(n)
    if pairs:  # what read the earlier node's outputs before the later one moves after it
        new = _topological(new)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(new)
    keep = [o for o in model_proto.opset_import if o.domain != SCAN_DOMAIN]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(keep)
    return count


# ---------------------------------------------------------------------------------------------
# 3. inspection
# ---------------------------------------------------------------------------------------------

STANDARD_DOMAINS = ("", "ai.onnx")


def iter_nodes(graph):
    """Every node of ``graph``, recursing into subgraphs (Loop, Scan, If bodies)."""
    from onnx import AttributeProto

    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from iter_nodes(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from iter_nodes(g)


def nonstandard_nodes(model_proto) -> list[str]:
    """``domain::op_type`` of every node outside the standard ``ai.onnx`` domain, recursively
    (functions of the model included)."""
    bad = [
        f"{n.domain}::{n.op_type}"
        for n in iter_nodes(model_proto.graph)
        if n.domain not in STANDARD_DOMAINS
    ]
    for f in model_proto.functions:
        bad += [f"{n.domain}::{n.op_type}" for n in f.node if n.domain not in STANDARD_DOMAINS]
    return bad


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


# ---------------------------------------------------------------------------------------------
# 4. the public entry points
# ---------------------------------------------------------------------------------------------


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

    check_names([scan], SCAN_FORMULATIONS, arg="scan")
    if opset is not None:
        if isinstance(opset, bool) or not isinstance(opset, int):
            raise TypeError(f"opset must be an int, got {type(opset).__name__}")
        if opset < MIN_OPSET:
            raise ValueError(
                f"opset must be >= {MIN_OPSET} (torch.onnx's dynamo exporter), got {opset}"
            )
    k = _resolve_unroll(scan, unroll)
    # the plugin form: one token-major node per layer; the lowerings take one node per scan
    form = "token_major" if scan == "custom" else "per_direction"
    ep = to_exported_program(model, example, dynamic_batch=dynamic_batch, scan_form=form)
    x = ep.example_inputs[0][0]
    prog = torch.onnx.export(
        ep,
        (x,),
        input_names=[input_name],
        output_names=[output_name],
        opset_version=opset,
        dynamo=True,
        external_data=False,
        custom_translation_table=_translation_table(),
        verbose=False,
    )
    mp = prog.model_proto
    if scan == "custom":
        mp.metadata_props.add(key="vimc.scan", value="custom")
    else:
        lower_scans(mp, scan, k)
        mp.metadata_props.add(key="vimc.scan", value=scan if k == 1 else f"{scan}({k})")
    if dynamic_batch:
        _rename_batch_axis(mp, BATCH_AXIS)
    mp.producer_name = "vimc"
    onnx.checker.check_model(mp, full_check=scan != "custom")
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

    By default every node is a standard ``ai.onnx`` operator (the scan lowered to a ``Scan``
    subgraph, see the module doc), so stock ONNX Runtime, ``trtexec`` and others load the file
    without a plugin; it passes ``onnx.checker.check_model(full_check=True)``. Input
    ``pixel_values`` (batch, C, H, W), output ``logits`` (batch, num_classes); ``batch`` is
    dynamic unless ``dynamic_batch=False``. ``opset``: default the exporter's (>= 18).
    ``scan``: the formulation of the scan (module doc), default ``"bidir"``; ``unroll``: its
    steps per ``Scan`` iteration (default 1, 8 for ``"unrolled"``). ``scan="custom"`` keeps
    one ``vimc.SelectiveScan`` node per scan instead (a runtime needs a plugin for it). The
    file is written atomically. Returns the path."""
    import onnx

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


def ort_plugin_path(march: str | None = "native") -> Path:
    """The shared library of vimc's ONNX Runtime plugin (built on first call, cached), which
    runs the ``vimc`` nodes of ``scan="custom"`` files: pass it to
    ``SessionOptions.register_custom_ops_library`` (Python) or ``RegisterCustomOpsLibrary``
    (C/C++). Needs a C compiler and onnxruntime >= 1.17. Built for this machine's CPU, or
    for ``march`` (e.g. ``"x86-64-v3"``; None: the compiler's default target), see
    ``vimc.ops.selective_scan.ort_plugin.library_path``."""
    from vimc.ops.selective_scan.ort_plugin import library_path

    return library_path(march)


def uses_plugin(path) -> bool:
    """Whether the ONNX file ``path`` has nodes in vimc's domain (a ``scan="custom"`` file)."""
    import onnx

    mp = onnx.load(str(path), load_external_data=False)
    return any(o.domain == SCAN_DOMAIN for o in mp.opset_import)


def onnxruntime_session(
    path,
    *,
    threads: int | None = None,
    providers=None,
    spinning: bool | None = None,
    plugin: bool | None = None,
):
    """An ``onnxruntime.InferenceSession`` for ``path`` with full graph optimization.
    ``spinning=False`` stops ONNX Runtime's idle threads from busy-waiting after each run
    (its default keeps them spinning, which is fastest when it owns the machine but takes
    the cores from whatever runs next in the process). ``plugin``: register vimc's plugin
    (:func:`ort_plugin_path`); default: when the file has ``vimc`` nodes, which reads the file
    once more before ONNX Runtime does (~0.1 s for Vim-Ti's 30 MB; pass True or False to
    skip that)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ValueError(f"path: no ONNX file at {str(path)!r}")
    opts = ort.SessionOptions()
    if plugin or (plugin is None and uses_plugin(path)):
        opts.register_custom_ops_library(str(ort_plugin_path()))
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def run_onnxruntime(session, x: torch.Tensor) -> torch.Tensor:
    """Run a session on a torch tensor; returns the first output as a torch tensor."""
    name = session.get_inputs()[0].name
    arr = x.detach().cpu()
    if arr.dtype == torch.bfloat16:
        raise TypeError("ONNX Runtime takes no bfloat16 numpy input; use float32 or float16")
    return torch.from_numpy(session.run(None, {name: arr.numpy()})[0])
