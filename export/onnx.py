"""ONNX: a file that stock runtimes load, the scan written in standard operators.

Route: ``torch.export`` (program.py) -> ``torch.onnx.export(dynamo=True)`` with a custom
translation that emits one placeholder ``vimc.SelectiveScan`` node per scan -> each
placeholder is lowered here to a subgraph of ``ai.onnx`` operators -> ``onnx.checker``
(``full_check=True``) -> atomic write.

The lowering (``scan=``), every exponent ``delta * A <= 0``, nothing exponentiated over a
cumulative sum:

- ``"scan"`` (default): decays ``exp(delta * A)`` and inputs ``delta * u * B`` are computed
  for all steps at once, time-major, outside the loop; an ONNX ``Scan`` then runs the
  recurrence ``h = a_t * h + b_t``, two nodes per step (the reverse direction through
  ``Scan``'s own reverse directions); ``y_t = <h_t, C_t>`` is one batched multiply-reduce
  after the loop.
- ``"unrolled"``: the same with ``unroll`` steps per ``Scan`` iteration (time padded with
  a = 1, b = 0, which leaves h unchanged), paying the per-iteration cost L / unroll times
  but adding Split/Concat copies. Measured no faster in ONNX Runtime (README).
- ``"custom"``: keep the placeholder, a ``SelectiveScan`` node in the custom domain
  ``vimc`` (opset 1), for runtimes that ship a plugin for it. Stock runtimes cannot run
  this file; :func:`to_onnx` marks it in the model's metadata (``vimc.scan = custom``).

Measured in ONNX Runtime (CPU) in benchmarks/export.py; see the README's export section.

Inputs and outputs: ``pixel_values`` (batch, 3, H, W) float -> ``logits`` (batch,
num_classes); the batch axis is the symbol ``batch`` unless ``dynamic_batch=False``.
"""

from __future__ import annotations

import itertools
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
SCAN_FORMULATIONS = ("scan", "unrolled", "custom")
UNROLL = 8
MIN_OPSET = 18
SOFTPLUS_THRESHOLD = 20.0


# ---------------------------------------------------------------------------------------------
# 1. the translation: one placeholder node per scan
# ---------------------------------------------------------------------------------------------


def _placeholder_op():
    """The onnxscript op ``vimc.SelectiveScan`` with a schema, so the exporter can record it."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    P = OpSchema.FormalParameter
    opt = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        SCAN_OP,
        SCAN_DOMAIN,
        1,
        doc="Mamba selective scan: u, delta, z (Bt, E, L); A (E, N); B, C (Bt, G, N, L); "
        "D, delta_bias (E,). Outputs out (Bt, E, L) and the last state (Bt, E, N).",
        inputs=[
            P("u", "T"),
            P("delta", "T"),
            P("A", "T"),
            P("B", "T"),
            P("C", "T"),
            P("D", "T", param_option=opt),
            P("z", "T", param_option=opt),
            P("delta_bias", "T", param_option=opt),
        ],
        outputs=[P("out", "T"), P("last_state", "S")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"], ""),
            ("S", ["tensor(float)", "tensor(double)"], ""),
        ],
        attributes=[
            OpSchema.Attribute("delta_softplus", OpSchema.AttrType.INT, "0 or 1"),
            OpSchema.Attribute("reverse", OpSchema.AttrType.INT, "0 or 1"),
        ],
    )
    return Op(Opset(SCAN_DOMAIN, 1), SCAN_OP, schema)


def _translation_table() -> dict:
    op = _placeholder_op()

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

    table = {torch.ops.vimc.selective_scan_fwd.default: selective_scan_fwd}
    cuda = getattr(torch.ops.vimc, "selective_scan_fwd_cuda", None)
    if cuda is not None:  # the triton_op twin, traced when the model sits on a GPU
        table[cuda.default] = selective_scan_fwd
    return table


# ---------------------------------------------------------------------------------------------
# 2. the lowering of one placeholder to standard operators
# ---------------------------------------------------------------------------------------------


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


def lower_scan_node(node, formulation: str = "scan", unroll: int = UNROLL) -> list:
    """Standard-op nodes equivalent to one ``vimc.SelectiveScan`` placeholder ``node``."""
    from onnx import TensorProto, helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    softplus, reverse = bool(attrs.get("delta_softplus", 0)), bool(attrs.get("reverse", 0))
    ins = list(node.input) + [""] * (8 - len(node.input))
    u, delta, A, B, C, D, z, bias = ins
    out, last = (list(node.output) + ["", ""])[:2]
    unroll = unroll if formulation == "unrolled" else 1
    b = _Builder(node.name or "selective_scan")
    F = TensorProto.FLOAT
    f32 = lambda t: b("Cast", [t], "f32", to=F)  # noqa: E731

    uf, df, Af, Bf, Cf = f32(u), f32(delta), f32(A), f32(B), f32(C)
    if bias:
        df = b("Add", [df, b("Unsqueeze", [f32(bias), b.const([1])])], "delta_b")
    if softplus:  # softplus(x) for x <= 20, else x (mamba's threshold)
        big = b("Greater", [df, b.const(SOFTPLUS_THRESHOLD, "thr", "float32")], "big")
        df = b("Where", [big, df, b("Softplus", [df])], "delta_sp")
    # groups: (Bt, E, L) -> (Bt, G, Eg, L); A (E, N) -> (G, Eg, N)
    G = b("Shape", [Bf], "G", start=1, end=2)
    N = b("Shape", [Af], "N", start=1, end=2)
    to_groups = b(
        "Concat",
        [
            b("Shape", [uf], "bt", start=0, end=1),
            G,
            b.const([-1]),
            b("Shape", [uf], "l", start=2, end=3),
        ],
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
    L = b("Shape", [a], "L", start=0, end=1)
    state_shape = b("Shape", [a], "s", start=1)  # (Bt, G, Eg, N)
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
        chunked = b(
            "Concat", [b.const([-1, unroll]), b("Shape", [a], "s2", start=1)], "cshape", axis=0
        )
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
        H = b(
            "Reshape",
            [H, b("Concat", [b.const([-1]), b("Shape", [H], "s3", start=2)], "hshape", axis=0)],
            "H_flat",
        )
        H = b("Slice", [H, b.const([0]), L, b.const([0])], "H_L")
    y = b("ReduceSum", [b("Mul", [H, CT], "hc"), b.const([-1])], "y", keepdims=0)
    y = b(
        "Reshape",
        [b("Transpose", [y], "yT", perm=[1, 2, 3, 0]), b("Shape", [uf], "ushape")],
        "y_bel",
    )
    if D:
        y = b("Add", [y, b("Mul", [uf, b("Unsqueeze", [f32(D), b.const([1])], "D1")], "uD")], "y_d")
    if z:
        zf = f32(z)
        y = b("Mul", [y, b("Mul", [zf, b("Sigmoid", [zf], "sig")], "silu")], "y_z")
    b.nodes.append(helper.make_node("CastLike", [y, u], [out], name=b.name("CastLike")))
    if last:
        last_shape = b("Concat", [b("Shape", [uf], "be", start=0, end=2), N], "lshape", axis=0)
        b.nodes.append(
            helper.make_node("Reshape", [h_last, last_shape], [last], name=b.name("Reshape"))
        )
    return b.nodes


def lower_scans(model_proto, formulation: str = "scan", unroll: int = UNROLL):
    """Replace every ``vimc.SelectiveScan`` node of ``model_proto`` (in place) by standard
    operators; drop the ``vimc`` opset import. Returns the number of nodes lowered."""
    nodes = list(model_proto.graph.node)
    new, count = [], 0
    for n in nodes:
        if n.domain == SCAN_DOMAIN and n.op_type == SCAN_OP:
            new.extend(lower_scan_node(n, formulation, unroll))
            count += 1
        else:
            new.append(n)
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
    scan: str = "scan",
    unroll: int = UNROLL,
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
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be an int >= 1, got {unroll!r}")
    ep = to_exported_program(model, example, dynamic_batch=dynamic_batch)
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
        lower_scans(mp, scan, unroll)
        mp.metadata_props.add(
            key="vimc.scan", value=scan if scan == "scan" else f"unrolled({unroll})"
        )
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
    scan: str = "scan",
    unroll: int = UNROLL,
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> Path:
    """Export ``model`` (an nn.Module or a registered name) to the ONNX file ``path``.

    By default every node is a standard ``ai.onnx`` operator (the scan lowered to a ``Scan``
    subgraph, see the module doc), so stock ONNX Runtime, ``trtexec`` and others load the file
    without a plugin; it passes ``onnx.checker.check_model(full_check=True)``. Input
    ``pixel_values`` (batch, C, H, W), output ``logits`` (batch, num_classes); ``batch`` is
    dynamic unless ``dynamic_batch=False``. ``opset``: default the exporter's (>= 18).
    ``scan="custom"`` keeps one ``vimc.SelectiveScan`` node per scan instead (a runtime needs a
    plugin for it). The file is written atomically. Returns the path."""
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


def onnxruntime_session(path, *, threads: int | None = None, providers=None):
    """An ``onnxruntime.InferenceSession`` for ``path`` with full graph optimization."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def run_onnxruntime(session, x: torch.Tensor) -> torch.Tensor:
    """Run a session on a torch tensor; returns the first output as a torch tensor."""
    name = session.get_inputs()[0].name
    arr = x.detach().cpu()
    if arr.dtype == torch.bfloat16:
        raise TypeError("ONNX Runtime takes no bfloat16 numpy input; use float32 or float16")
    return torch.from_numpy(session.run(None, {name: arr.numpy()})[0])
