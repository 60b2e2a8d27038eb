"""The "step" lowering: one ``vimc.SelectiveScan`` placeholder -> one ONNX ``Scan`` whose body
runs the whole recurrence step, in standard operators.

Per step, six nodes on state-sized tensors that stay in cache: ``dA = d * A``,
``a = exp(dA)``, ``h = a * h + B du`` (Mul, MatMul, Add), ``y = C h`` (MatMul); nothing of
size (L, Bt, E, N) is ever materialized, and every exponent ``delta * A`` is <= 0. The state
is laid out (Bt, G, N, Eg), channels innermost, so every broadcast runs over contiguous
Eg-long rows (with N innermost, ONNX Runtime's broadcasting Mul walks short N-long rows,
which ran slower). A reverse direction runs through ``Scan``'s own reverse directions.
``unroll`` > 1 puts that many steps in one iteration (benchmarks/onnx_scan.py times it).

The pieces are written for any number of "halves" (placeholders) sharing one ``Scan``, one
state each: "paired" (paired.py) puts a layer's two directions in one loop with them. This
module also holds what every lowering does around the loop: reading a placeholder's inputs
(delta's bias and softplus) and writing its outputs (the D skip, the silu(z) gate, the cast
back to u's dtype, the last state).
"""

from __future__ import annotations

from dataclasses import dataclass

from .builder import INT64_MAX, Builder
from .names import DEFAULT_SCAN, STANDARD_LOWERINGS, STEP_UNROLL, resolve_lowering

# ---------------------------------------------------------------------------------------------
# around the loop: a placeholder's inputs and outputs
# ---------------------------------------------------------------------------------------------


def signature(node):
    """(u, delta, A, B, C, D, z, delta_bias) with "" for absent inputs, out, last, softplus,
    reverse of a placeholder node."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    ins = list(node.input) + [""] * (8 - len(node.input))
    out, last = (list(node.output) + ["", ""])[:2]
    softplus, reverse = bool(attrs.get("delta_softplus", 0)), bool(attrs.get("reverse", 0))
    return ins, out, last, softplus, reverse


def _delta(b: Builder, delta: str, bias: str, softplus: bool) -> str:
    """float32 delta (Bt, E, L) + bias, through mamba's softplus."""
    df = b.f32(delta)
    if bias:
        df = b("Add", [df, b("Unsqueeze", [b.f32(bias), b.const([1])])], "delta_b")
    if softplus:
        # relu(x) + log(1 + exp(-|x|)) rather than ONNX's Softplus, whose ONNX Runtime CPU
        # kernel ran slower than these nodes (README, "The scan in ONNX"). It differs from
        # mamba's softplus (x itself above 20) by at most the float32 rounding of
        # 1 + exp(-|x|); above 20 the log term is below half an ulp of x.
        e = b("Exp", [b("Neg", [b("Abs", [df], "abs")], "neg")], "e")
        log1p = b("Log", [b("Add", [e, b.const(1.0, "one", "float32")], "e1")], "log1p")
        df = b("Add", [b("Relu", [df], "relu"), log1p], "delta_sp")
    return df


def _finish(b: Builder, y: str, uf: str, u: str, D: str, z: str, out: str, gates=None) -> None:
    """out = CastLike((y + u * D) * silu(z), u); ``gates`` caches silu(z) by z's name, so two
    directions sharing z compute the gate once."""
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


def _last_state(b: Builder, h: str, uf: str, N: str, last: str) -> None:
    """Write the state ``h`` (Bt, G, Eg, N) as ``last`` (Bt, E, N)."""
    from onnx import helper

    shape = b("Concat", [b.shape(uf, 0, 2, "be"), N], "lshape", axis=0)
    b.nodes.append(helper.make_node("Reshape", [h, shape], [last], name=b.name("Reshape")))


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------


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


def _step_half(b: Builder, node) -> _StepHalf:
    (u, delta, A, B, C, D, z, bias), out, last, softplus, reverse = signature(node)
    uf, Af, Bf, Cf = b.f32(u), b.f32(A), b.f32(B), b.f32(C)
    df = _delta(b, delta, bias, softplus)
    G, N = b.shape(Bf, 1, 2, "G"), b.shape(Af, 1, 2, "N")
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

    b = Builder(prefix + "/body")
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


def _strided(b: Builder, seqs: list, k: int) -> list:
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


def _interleaved(b: Builder, ys: list, L: str) -> str:
    """k scan outputs (L'/k, ...) of steps j = 0..k-1 -> one (L, ...) in time order."""
    y = b("Concat", [b("Unsqueeze", [y, b.const([1])], "y1") for y in ys], "ys", axis=1)
    flat = b("Concat", [b.const([-1]), b.shape(ys[0], 1, hint="s")], "yshape", axis=0)
    y = b("Reshape", [y, flat], "y_pad")
    return b("Slice", [y, b.const([0]), L, b.const([0])], "y_L")


def _step_scan(b: Builder, halves: list[_StepHalf], k: int):
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


def lower_step(nodes: list, k: int) -> list:
    """Standard-op nodes for placeholders sharing one Scan, k steps per iteration: one node
    ("step"), or a layer's two directions ("paired")."""
    b = Builder("+".join(n.name or "selective_scan" for n in nodes))
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


def resolve_unroll(unroll: int | None) -> int:
    """Steps per Scan iteration: ``unroll`` checked, or the default (1)."""
    if unroll is None:
        return STEP_UNROLL
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be an int >= 1 or None, got {unroll!r}")
    return unroll


def lower_scan_node(node, lowering: str = DEFAULT_SCAN, unroll: int | None = None) -> list:
    """Standard-op nodes equivalent to one ``vimc.SelectiveScan`` placeholder ``node``: one
    Scan ("paired" lowers a lone node as "step"). ``unroll``: steps per ``Scan`` iteration
    (default 1)."""
    resolve_lowering(lowering, arg="lowering", choices=STANDARD_LOWERINGS)
    return lower_step([node], resolve_unroll(unroll))
