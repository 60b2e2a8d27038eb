"""A bounded randomized fuzz loop over the selective scan's native code: the C kernel, through
the public functions and through ``torch.ops.vimc.*`` called directly, and the ONNX Runtime
plugin's nodes.

    python -m tests.sanitize.fuzz --seconds 60 [--seed S]     (from the repository root)

tests/sanitize/run.py runs it against the sanitizer build (any out-of-bounds read or undefined
behaviour ends the process with a report); test_fuzz.py runs a few cases in the normal suite so
the loop itself keeps working.

Each case draws sizes (Bt 0..3, E 0..40, L 0..70k with long scans rare and the work bounded,
N 1..MAX_D_STATE, B/C grouped or not), options (D, z, delta_bias, softplus, reverse, last
state), a dtype, and a memory layout per tensor: contiguous, dims permuted (token-major among
them), gaps between elements, stride 0 (broadcast), overlapping windows, huge strides on size-1
dims, an offset into the storage. Every tensor is a view of a storage of exactly its extent, so
a read one element too far lands in ASan's redzone. A case then runs one action: a forward, a
forward and backward, an op called directly, the bidirectional or token-major op, a plugin
node, or a deliberately bad call, which must raise ValueError or TypeError, with the C kernel
computing its bounded decays in a form drawn from those its build has. Small well-scaled
cases are compared with the float64 reference, and outputs are NaN-poisoned, so a kernel that
reads the wrong memory or skips a write fails even where no sanitizer would notice.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import random
import sys
import time

import numpy as np
import torch
from vimc.ops import (
    anticausal_conv1d,
    causal_conv1d,
    poison_outputs,
    selective_scan,
    selective_scan_bidirectional,
    selective_scan_reference,
)
from vimc.ops.selective_scan import cpu
from vimc.ops.selective_scan._checks import MAX_DT_RANK
from vimc.ops.selective_scan.mixer import _ARGS as MIXER_ARGS
from vimc.ops.selective_scan.mixer import mixer_core_composed

from ..tolerances import CONV_SILU_PAIR_REL_ERR, MIXER_CORE_REL_ERR, SCAN_REL_ERR
from .cases import (
    Case,
    check_close,
    check_written,
    draw_case,
    f64,
    make_inputs,
    make_pair,
    make_tensor,
    pair_reference,
)

ACTIONS = {  # action -> weight
    "forward": 3,
    "backward": 2,
    "op_forward": 2,
    "op_backward": 2,
    "bidirectional": 2,
    "bidirectional_op": 1,
    "token_major_op": 1,
    "projected_op": 1,
    "plugin": 1,
    "conv_pair": 2,
    "mixer_core": 2,
    "bad_call": 2,
}


# ---------------------------------------------------------------------------------------------
# actions
# ---------------------------------------------------------------------------------------------


def _op_args(ins: dict, c: Case) -> tuple:
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    return (*(ins[k] for k in order), c.softplus, c.reverse)


def forward(c, rng, g):
    ins = make_inputs(c, rng, g, grouped=False)
    out, last = selective_scan(
        **ins, delta_softplus=c.softplus, reverse=c.reverse, return_last_state=True
    )
    assert out.shape == (c.Bt, c.E, c.L) and last.shape == (c.Bt, c.E, c.N)
    check_written("out", out, c)
    if c.comparable:
        ref, ref_last = selective_scan_reference(
            **f64(ins), delta_softplus=c.softplus, reverse=c.reverse, return_last_state=True
        )
        check_close("out", out, ref, SCAN_REL_ERR[torch.float32][0])
        check_close("last state", last, ref_last, SCAN_REL_ERR[torch.float32][0])


def backward(c, rng, g):
    ins = make_inputs(c, rng, g, grouped=False)
    leaves = {k: None if v is None else v.detach().requires_grad_(True) for k, v in ins.items()}
    out, last = selective_scan(
        **leaves, delta_softplus=c.softplus, reverse=c.reverse, return_last_state=True
    )
    dout = make_tensor("dout", tuple(out.shape), out.dtype, c, rng, g)
    dlast = make_tensor("dlast", tuple(last.shape), last.dtype, c, rng, g)
    use_last = rng.random() < 0.5
    torch.autograd.backward((out, last) if use_last else (out,), (dout, dlast)[: 1 + use_last])
    for k, v in leaves.items():
        if v is not None:
            assert v.grad is not None and v.grad.shape == v.shape, k
            check_written("d" + k, v.grad, c)
    if c.Bt * c.E * c.L == 0:  # no step taken: nothing depends on any input
        assert all(v.grad.count_nonzero() == 0 for v in leaves.values() if v is not None)
    elif c.comparable and c.dtype == torch.float32:
        ref = {k: None if v is None else v.requires_grad_(True) for k, v in f64(ins).items()}
        r_out, r_last = selective_scan_reference(
            **ref, delta_softplus=c.softplus, reverse=c.reverse, return_last_state=True
        )
        cot = (dout.double(), dlast.double())[: 1 + use_last]
        torch.autograd.backward((r_out, r_last)[: 1 + use_last], cot)
        for k, v in leaves.items():
            if v is not None:
                check_close("d" + k, v.grad, ref[k].grad, SCAN_REL_ERR[torch.float32][1])


def op_forward(c, rng, g):
    ins = make_inputs(c, rng, g, grouped=True)
    out, last = torch.ops.vimc.selective_scan_fwd(*_op_args(ins, c))
    assert out.shape == (c.Bt, c.E, c.L) and last.shape == (c.Bt, c.E, c.N)
    check_written("out", out, c)
    if c.comparable:
        ref = selective_scan_reference(**f64(ins), delta_softplus=c.softplus, reverse=c.reverse)
        check_close("out", out, ref, SCAN_REL_ERR[torch.float32][0])


def op_backward(c, rng, g):
    ins = make_inputs(c, rng, g, grouped=True)
    state = torch.float64 if c.dtype == torch.float64 else torch.float32
    dout = make_tensor("dout", (c.Bt, c.E, c.L), c.dtype, c, rng, g)
    dlast = make_tensor("dlast", (c.Bt, c.E, c.N), state, c, rng, g) if rng.random() < 0.5 else None
    grads = torch.ops.vimc.selective_scan_bwd(dout, dlast, *_op_args(ins, c))
    for grad, (k, v) in zip(grads, ins.items()):
        assert grad.shape == (v.shape if v is not None else (0,)), k


def bidirectional(c, rng, g):
    ins = make_pair(c, rng, g, grouped=False)
    train = rng.random() < 0.4 and c.dtype != torch.float64
    leaves = {k: None if v is None else v.detach().requires_grad_(train) for k, v in ins.items()}
    with torch.set_grad_enabled(train):
        out = selective_scan_bidirectional(**leaves, delta_softplus=c.softplus)
    assert out.shape == (c.Bt, c.E, c.L)
    check_written("out", out, c)
    if train:
        out.backward(make_tensor("dout", tuple(out.shape), out.dtype, c, rng, g))
        assert all(v.grad.shape == v.shape for v in leaves.values() if v is not None)
    if c.comparable:
        check_close("out", out, pair_reference(ins, c), SCAN_REL_ERR[torch.float32][0])


def bidirectional_op(c, rng, g):
    ins = make_pair(c, rng, g, grouped=True)
    op = torch.ops.vimc.selective_scan_bidirectional_fwd_nograd
    out, last, last_b = op(*ins.values(), c.softplus)
    assert out.shape == (c.Bt, c.E, c.L) and last.shape == last_b.shape == (c.Bt, c.E, c.N)
    check_written("out", out, c)


def token_major_op(c, rng, g):
    c = dataclasses.replace(c, G=0)  # the token-major op takes one group, (Bt, L, N)
    ins = make_pair(c, rng, g, grouped=False)
    tm = {k: None if v is None or v.dim() != 3 else v.mT for k, v in ins.items()}
    tm = {k: tm[k] if tm[k] is not None else ins[k] for k in ins}  # A, D, delta_bias as they are
    out = torch.ops.vimc.selective_scan_bidirectional_token_major(*tm.values(), c.softplus)
    assert out.shape == (c.Bt, c.L, c.E)
    check_written("out", out, c)
    if c.comparable:
        check_close("out", out.mT, pair_reference(ins, c), SCAN_REL_ERR[torch.float32][0])


def projected_op(c, rng, g):
    """The op that applies each direction's dt_proj itself: deltas (Bt, R, L), weights (E, R)."""
    c = dataclasses.replace(c, softplus=True)  # a projected delta has either sign
    ins = make_pair(c, rng, g, grouped=True)
    R = rng.randint(1, MAX_DT_RANK)
    for k in ("delta", "delta_b"):
        ins[k] = make_tensor("dt_in", (c.Bt, R, c.L), c.dtype, c, rng, g)
    w = [make_tensor("delta_proj", (c.E, R), c.param_dtype, c, rng, g) for _ in range(2)]
    order = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    args = (*(ins[k] for k in order), w[0], *(ins[k + "_b"] for k in order), w[1], ins["z"])
    with torch.no_grad():
        out = torch.ops.vimc.selective_scan_bidirectional_proj_fwd(*args, True)
    assert out.shape == (c.Bt, c.E, c.L)
    check_written("out", out, c)
    if c.comparable:
        x = f64(ins)
        x["delta"], x["delta_b"] = w[0].double() @ x["delta"], w[1].double() @ x["delta_b"]
        check_close("out", out, pair_reference(x, c), SCAN_REL_ERR[torch.float32][0])


def _refused(name: str, op, args: list, c: Case, rng, c_path: bool) -> None:
    """``op`` with one of ``args`` spoilt must raise ValueError or TypeError. Any shape of the
    first argument's leading dims is valid, so it is spoilt otherwise. On the C kernel's path
    (``c_path``), which checks storage, a storage may shrink after one good call with its
    layout, so the op's checked-layout path meets it."""
    hows = ["shape", "rank", "dtype", "meta"] + (["shrunk"] if c_path else [])
    i = rng.choice([i for i, a in enumerate(args) if a is not None])
    how = rng.choice(hows[1:] if i == 0 else hows)
    if how == "shrunk":
        args[i] = args[i].clone()
        op(*args)
        args[i].untyped_storage().resize_(args[i].untyped_storage().nbytes() // 2)
    else:
        args[i] = _spoil(args[i], how, c)
    try:
        op(*args)
    except (ValueError, TypeError):
        return
    raise AssertionError(f"{name} with argument {i} spoilt ({how}) was not refused")


def conv_pair(c, rng, g):
    """The fused conv + silu of a mixer's two directions (``vimc::conv1d_silu_pair_fwd``): x
    (Bt, L, E) and the taps in any layout, K 1..4, biases or not; a quarter of the calls with one
    argument spoilt, which must raise ValueError or TypeError (a storage shrunk after a good
    call with its layout, so the op's checked-layout path meets it)."""
    K = rng.randint(1, 4)
    ins = {"x": make_tensor("u", (c.Bt, c.L, c.E), c.dtype, c, rng, g)}
    for sfx in ("", "_b"):
        ins["weight" + sfx] = make_tensor("A", (c.E, 1, K), c.param_dtype, c, rng, g)
        ins["bias" + sfx] = make_tensor("D", (c.E,), c.param_dtype, c, rng, g) if c.bias else None
    args = [ins[k] for k in ("x", "weight", "bias", "weight_b", "bias_b")]
    op = torch.ops.vimc.conv1d_silu_pair_fwd
    if rng.random() < 0.25:
        c_path = c.dtype == c.param_dtype == torch.float32 and c.Bt * c.E * c.L > 0
        return _refused("conv_pair", op, args, c, rng, c_path)
    out, out_b = op(*args)
    assert out.shape == out_b.shape == (c.Bt, c.L, c.E)
    check_written("out", out, c)
    check_written("out_b", out_b, c)
    if c.comparable and c.dtype == torch.float32:
        x = [None if a is None else a.double() for a in args]
        want = causal_conv1d(x[0], x[1], x[2], silu=True)
        want_b = anticausal_conv1d(x[0], x[3], x[4], silu=True)
        check_close("out", out, want, CONV_SILU_PAIR_REL_ERR)
        check_close("out_b", out_b, want_b, CONV_SILU_PAIR_REL_ERR)


def _mixer_args(c, rng, g, E: int) -> list:
    """mixer_core's arguments for case ``c`` with inner width E (xz in the case's dtype, the
    parameters in its parameter dtype): dt_proj's rank 1..64, K 1..4."""
    R, K, N = rng.randint(1, 64), rng.randint(1, 4), c.N
    shapes = {"conv_weight": (E, 1, K), "conv_bias": (E,), "x_proj_weight": (R + 2 * N, E),
              "dt_proj_weight": (E, R), "dt_proj_bias": (E,), "A": (E, N), "D": (E,)}  # fmt: skip
    kinds = {"conv_weight": "A", "A": "A", "dt_proj_weight": "delta_proj", "dt_proj_bias":
             "delta_bias", "conv_bias": "D", "D": "D", "x_proj_weight": "B"}  # fmt: skip
    args = [make_tensor("u", (c.Bt, c.L, 2 * E), c.dtype, c, rng, g)]
    for name in MIXER_ARGS[1:]:
        kind = name.removesuffix("_b")
        t = make_tensor(kinds[kind], shapes[kind], c.param_dtype, c, rng, g)
        args.append(t / E**0.5 if kind == "x_proj_weight" else t)
    return args


def mixer_core(c, rng, g):
    """A mixer's core in one call (``vimc::mixer_core_fwd``): xz (Bt, L, 2E) and every parameter
    in any layout, E rounded up or down to a multiple of 16 half the time (else the composition
    runs unless E happens to be one), dt_proj's rank 1..64, K 1..4; a quarter of the calls with
    one argument spoilt, which must raise ValueError or TypeError (a storage shrunk after a
    good call with its layout, so the op's checked-layout path meets it)."""
    # a multiple of 16 (both builds' lanes), at least 16: most fuzz widths are below 16
    E = max(16, c.E // 16 * 16) if rng.random() < 0.5 else c.E
    args = _mixer_args(c, rng, g, E)
    op = torch.ops.vimc.mixer_core_fwd
    if rng.random() < 0.25:
        c_path = c.dtype == c.param_dtype == torch.float32 and c.Bt * c.L * E > 0
        return _refused("mixer_core", op, args, c, rng, c_path)
    out = op(*args)
    assert out.shape == (c.Bt, c.L, E)
    check_written("out", out, c)
    if c.comparable and c.dtype == c.param_dtype == torch.float32 and not c.growing:
        want = mixer_core_composed(*(a.double() for a in args))
        check_close("out", out, want, MIXER_CORE_REL_ERR)


_SESSIONS: dict = {}


def _session(op_type: str, names: list, outputs: list, attrs: dict):
    """One-node ONNX Runtime session with vimc's plugin, every dimension dynamic (cached)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from vimc.ops.selective_scan.ort_plugin import library_path

    key = (op_type, tuple(names), tuple(outputs), tuple(sorted(attrs.items())))
    if key not in _SESSIONS:
        node = helper.make_node(op_type, names, outputs, domain="vimc", **attrs)
        info = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
        graph = helper.make_graph(
            [node], "g", [info(n) for n in names if n], [info(n) for n in outputs]
        )
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("vimc", 1)]
        opts = ort.SessionOptions()
        opts.register_custom_ops_library(str(library_path()))
        opts.intra_op_num_threads = 2
        opts.log_severity_level = 4  # the refusals the fuzz asks for are no news
        model = helper.make_model(graph, opset_imports=opsets).SerializeToString()
        _SESSIONS[key] = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def _numpy(t: torch.Tensor):
    return t.detach().to(torch.float32).contiguous().numpy()


def plugin_node(c, rng, g):
    """vimc.SelectiveScan (channel-major, grouped B/C), vimc.SelectiveScanBidirectional
    (token-major) or vimc.MixerCore: the plugin takes dense float32 arrays, so only sizes and
    values vary."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return op_forward(c, rng, g)
    pick = rng.random()
    if pick < 1 / 3:
        return _mixer_node(c, rng, g)
    if pick < 2 / 3:
        ins = make_inputs(c, rng, g, grouped=True)
        order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
        names = [k if ins[k] is not None else "" for k in order]
        outputs = ["out", "last_state"] if rng.random() < 0.5 else ["out"]
        attrs = dict(delta_softplus=int(c.softplus), reverse=int(c.reverse))
        sess = _session("SelectiveScan", names, outputs, attrs)
        got = sess.run(None, {k: _numpy(v) for k, v in ins.items() if v is not None})
        assert got[0].shape == (c.Bt, c.E, c.L)
        if len(got) > 1:
            assert got[1].shape == (c.Bt, c.E, c.N)
        if c.comparable:
            ref = selective_scan_reference(**f64(ins), delta_softplus=c.softplus, reverse=c.reverse)
            check_close("out", torch.from_numpy(got[0]), ref, SCAN_REL_ERR[torch.float32][0])
        return
    c = dataclasses.replace(c, G=0)
    ins = make_pair(c, rng, g, grouped=False)
    names = [k if v is not None else "" for k, v in ins.items()]
    feeds = {k: _numpy(v.mT if v.dim() == 3 else v) for k, v in ins.items() if v is not None}
    sess = _session(
        "SelectiveScanBidirectional", names, ["out"], {"delta_softplus": int(c.softplus)}
    )
    (out,) = sess.run(None, feeds)
    assert out.shape == (c.Bt, c.L, c.E)
    if c.comparable:
        ref = pair_reference(ins, c).mT
        check_close("out", torch.from_numpy(out), ref, SCAN_REL_ERR[torch.float32][0])


def _mixer_node(c, rng, g):
    """vimc.MixerCore on mixer_core's arguments as float32 arrays: E a multiple of 16 most of
    the time (else the plugin must refuse a width off its vector width by name), one input a
    dimension longer a fifth of the time (refused by name)."""
    E = max(16, c.E // 16 * 16) if rng.random() < 0.75 else max(1, c.E)
    feeds = {k: _numpy(t) for k, t in zip(MIXER_ARGS, _mixer_args(c, rng, g, E))}
    sess = _session("MixerCore", list(MIXER_ARGS), ["out"], {})
    spoilt = rng.random() < 0.2
    if spoilt:
        name = rng.choice(MIXER_ARGS)
        shape = list(feeds[name].shape)
        shape[rng.randrange(len(shape))] += 1
        feeds[name] = np.zeros(shape, np.float32)
    if spoilt or E % cpu.LANES or c.N < 1:
        try:
            sess.run(None, feeds)
        except Exception as e:  # onnxruntime's Fail / InvalidArgument
            assert "vimc.MixerCore" in str(e) or c.Bt * c.L == 0, str(e)
        return
    (out,) = sess.run(None, feeds)
    assert out.shape == (c.Bt, c.L, E)
    if c.comparable and not c.growing:
        args = [torch.from_numpy(feeds[k]).double() for k in MIXER_ARGS]
        check_close("out", torch.from_numpy(out), mixer_core_composed(*args), MIXER_CORE_REL_ERR)


def _spoil(t: torch.Tensor, how: str, c: Case) -> torch.Tensor:
    """``t`` made unacceptable to the ops in one way."""
    if how == "shape":  # one dimension one longer
        shape = list(t.shape)
        shape[random.Random(t.numel()).randrange(len(shape))] += 1
        return torch.zeros(shape, dtype=t.dtype)
    if how == "rank":
        return t[0] if t.dim() > 1 and t.shape[0] > 0 else t.unsqueeze(0)
    if how == "dtype":
        return t.to(
            random.Random(t.numel()).choice(
                [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8]
            )
        )
    if how == "meta":
        return t.to("meta")
    if how == "shrunk":  # a view whose storage shrank after it was made
        t = t.clone()
        t.untyped_storage().resize_(t.untyped_storage().nbytes() // 2)
        return t
    raise ValueError(how)


def bad_call(c, rng, g):
    """A direct op call with one argument spoilt: it must raise ValueError or TypeError."""
    c = dataclasses.replace(c, nonfinite=None, G=c.G or 1)
    op = rng.choice(["forward", "backward", "bidirectional", "token_major"])
    if op == "token_major":
        c = dataclasses.replace(c, G=0)
    if op in ("forward", "backward"):
        ins = make_inputs(c, rng, g, grouped=True)
        if op == "backward":
            state = torch.float64 if c.dtype == torch.float64 else torch.float32
            ins = {
                "dout": torch.randn(c.Bt, c.E, c.L, dtype=c.dtype),
                "dlast": torch.randn(c.Bt, c.E, c.N, dtype=state),
            } | ins
        tail = (c.softplus, c.reverse)
    else:
        ins = make_pair(c, rng, g, grouped=op == "bidirectional")
        if op == "token_major":
            ins = {k: v.mT if v is not None and v.dim() == 3 else v for k, v in ins.items()}
        tail = (c.softplus,)
    hows = ["shape", "rank", "dtype", "meta"]
    empty = c.Bt * c.E * c.L == 0
    if not empty and c.dtype != torch.float64:  # the C kernel's path, which checks storage
        hows.append("shrunk")
    how = rng.choice(hows)
    name = rng.choice([k for k, v in ins.items() if v is not None])
    ins[name] = _spoil(ins[name], how, c)
    fn = {
        "forward": torch.ops.vimc.selective_scan_fwd,
        "backward": torch.ops.vimc.selective_scan_bwd,
        "bidirectional": torch.ops.vimc.selective_scan_bidirectional_fwd_nograd,
        "token_major": torch.ops.vimc.selective_scan_bidirectional_token_major,
    }[op]
    try:
        fn(*ins.values(), *tail)
    except (ValueError, TypeError):
        return
    except RuntimeError as exc:  # the token-major op's transposed views: torch's own check
        if how == "shrunk" and op == "token_major" and "out of bounds for storage" in str(exc):
            return
        raise
    raise AssertionError(f"{op} with {name} spoilt ({how}) was not refused")


RUN = dict(
    forward=forward,
    backward=backward,
    op_forward=op_forward,
    op_backward=op_backward,
    bidirectional=bidirectional,
    bidirectional_op=bidirectional_op,
    token_major_op=token_major_op,
    projected_op=projected_op,
    plugin=plugin_node,
    conv_pair=conv_pair,
    mixer_core=mixer_core,
    bad_call=bad_call,
)


def run(seconds: float, seed: int, max_cases: int | None = None) -> collections.Counter:
    """Fuzz cases until ``seconds`` pass (or ``max_cases`` ran) -> the count per action. An
    AssertionError names the case (seed and index) that failed."""
    rng = random.Random(seed)
    counts: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    actions, weights = list(ACTIONS), list(ACTIONS.values())
    lib = cpu._lib if cpu.c_kernel_available() else None
    forms = cpu.decay_forms(lib) if lib is not None else [None]
    try:
        with poison_outputs(True):
            i = 0
            while time.monotonic() < deadline and (max_cases is None or i < max_cases):
                c = draw_case(rng)
                action = rng.choices(actions, weights)[0]
                form = rng.choice(forms)
                if form is not None:
                    cpu.use_decay_form(lib, form)
                g = torch.Generator().manual_seed(rng.randrange(2**31))
                try:
                    RUN[action](c, rng, g)
                except Exception as exc:
                    raise AssertionError(
                        f"fuzz case {i} (seed {seed}), {action} on {c}, {form} decays: {exc!r}"
                    ) from exc
                counts[action] += 1
                i += 1
    finally:
        if lib is not None:
            cpu.use_decay_form(lib, forms[0])
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="default: drawn, and printed")
    ap.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    start = time.monotonic()
    counts = run(args.seconds, seed, args.cases)
    took = time.monotonic() - start
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"fuzz: {sum(counts.values())} cases in {took:.0f} s, seed {seed} ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
