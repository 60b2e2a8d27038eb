"""Bad input, surface by surface, as tables. A row is one input and the exact error it must give
(type and message fragment), or, where the input is legal (NaN and Inf values, empty sequences,
half and float64 dtypes, an all-meta call), the result it must give: propagated as in the float64
reference, or empty of the right shape. Never a crash, a read of memory the input does not own,
or a silent wrong answer.

Surfaces: the scan functions (selective_scan, selective_scan_bidirectional and its token-major
form); the ops called directly (``torch.ops.vimc.*``, which AOTInductor and ONNX graphs call
without the functions' checks); the ONNX Runtime plugin's nodes (at the end of the file).
"""

# ruff: noqa: E501  (the tables keep one row per line, so that they read as tables)
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vimc.ops import (
    MAX_D_STATE,
    selective_scan,
    selective_scan_bidirectional,
    selective_scan_bidirectional_token_major,
    selective_scan_reference,
)

from ..tolerances import SCAN_REL_ERR
from ._ort_nodes import as_numpy, bidir_io, node_model, run_poisoned, scan_io, session
from ._scan_cases import DIRECTION, Case, make_inputs, make_pair, pair_reference, rel_err

CASE = Case(Bt=2, E=4, L=5, N=3)  # every error row starts from this case's valid inputs
SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
SEQUENCES = ("u", "delta", "z", "B", "C")  # (Bt, ..., L): token-major in the token-major op


def put(**changes):
    """A row's change to the valid inputs: name=f sets args[name] = f(args[name])."""

    def apply(args: dict) -> dict:
        return args | {k: f(args[k]) for k, f in changes.items()}

    return apply


def shrunk(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a fresh copy) after its storage shrank to half: its sizes still claim it all."""
    t = t.clone()
    t.untyped_storage().resize_(t.untyped_storage().nbytes() // 2)
    return t


def token_major(ins: dict) -> dict:
    """make_pair's (Bt, ..., L) sequences as the token-major function takes them, (Bt, L, ...)."""
    return {k: v.mT if v is not None and k.removesuffix("_b") in SEQUENCES else v
            for k, v in ins.items()}  # fmt: skip


def inputs(surface: str) -> dict:
    if surface == "scan":
        return make_inputs(CASE)
    pair = make_pair(CASE)
    return token_major(pair) if surface == "token_major" else pair


FUNCTIONS = {
    "scan": lambda a: selective_scan(**a, delta_softplus=True),
    "bidir": lambda a: selective_scan_bidirectional(**a, delta_softplus=True),
    "token_major": lambda a: selective_scan_bidirectional_token_major(**a, delta_softplus=True),
}
Z = torch.zeros
META = lambda t: t.to("meta")  # noqa: E731

# ---------------------------------------------------------------------------------------------
# surface 1: the scan functions
# ---------------------------------------------------------------------------------------------

S, BI, TM = (
    "selective_scan: ",
    "selective_scan_bidirectional: ",
    ("selective_scan_bidirectional_token_major: "),
)
FUNCTION_ERRORS = [
    # ranks and sizes
    ("scan", put(u=lambda u: u[0]), ValueError, S + "u must have 3 dimensions (Bt, E, L), got shape (4, 5)"),
    ("scan", put(u=lambda u: u[None]), ValueError, S + "u must have 3 dimensions (Bt, E, L)"),
    ("scan", put(delta=lambda d: d[..., :4]), ValueError, S + "delta must have shape (Bt, E, L) like u = (2, 4, 5), got (2, 4, 4)"),
    ("scan", put(A=lambda A: A[:3]), ValueError, S + "A must have shape (E, N) with E = 4 (u.shape[1]), got (3, 3)"),
    ("scan", put(A=lambda A: A[:, 0]), ValueError, S + "A must have 2 dimensions (E, N), got shape (4,)"),
    ("scan", put(A=lambda A: Z(4, 0)), ValueError, S + f"the state size N = A.shape[1] must be in [1, {MAX_D_STATE}] for the kernels, got 0"),
    ("scan", put(A=lambda A: Z(4, MAX_D_STATE + 1)), ValueError, S + f"the state size N = A.shape[1] must be in [1, {MAX_D_STATE}] for the kernels, got {MAX_D_STATE + 1}"),
    ("scan", put(B=lambda B: B[:, None, None]), ValueError, S + "B must have shape (Bt, N, L) = (2, 3, 5) or (Bt, G, N, L); got (2, 1, 1, 3, 5)"),
    ("scan", put(B=lambda B: B[:, :2]), ValueError, S + "B must have shape (Bt, N, L) = (2, 3, 5), got (2, 2, 5)"),
    ("scan", put(B=lambda B: B[:, None].expand(2, 3, 3, 5), C=lambda C: C[:, None].expand(2, 3, 3, 5)), ValueError, S + "B of shape (Bt, G, N, L) needs G to divide E = 4, got G = 3"),
    ("scan", put(C=lambda C: C[:, None]), ValueError, S + "B and C must have the same shape, got (2, 3, 5) and (2, 1, 3, 5)"),
    ("scan", put(D=lambda D: D[:2]), ValueError, S + "D must have shape (E,) = (4,), got (2,)"),
    ("scan", put(delta_bias=lambda b: b[None]), ValueError, S + "delta_bias must have 1 dimensions (E,), got shape (1, 4)"),
    ("scan", put(z=lambda z: z[:1]), ValueError, S + "z must have shape (Bt, E, L) like u = (2, 4, 5), got (1, 4, 5)"),
    # dtypes and types
    ("scan", put(u=lambda u: u.long()), TypeError, S + "u must be a floating tensor (float16, bfloat16, float32 or float64), got torch.int64"),
    ("scan", put(delta=lambda d: d.int()), TypeError, S + "delta must be a floating tensor"),
    ("scan", put(A=lambda A: A.to(torch.complex64)), TypeError, S + "A must be a floating tensor (float16, bfloat16, float32 or float64), got torch.complex64"),
    ("scan", put(B=lambda B: B.to(torch.complex128)), TypeError, S + "B must be a floating tensor (float16, bfloat16, float32 or float64), got torch.complex128"),
    ("scan", put(z=lambda z: z > 0), TypeError, S + "z must be a floating tensor (float16, bfloat16, float32 or float64), got torch.bool"),
    ("scan", put(D=lambda D: D.to(torch.uint8)), TypeError, S + "D must be a floating tensor"),
    ("scan", put(B=lambda B: B.tolist()), TypeError, S + "B must be a torch.Tensor, got list"),
    ("scan", put(u=lambda u: u.to_sparse()), TypeError, S + "u must be a dense (strided) tensor, got torch.sparse_coo"),
    # devices: meta among CPU tensors, or everything on meta
    ("scan", put(u=META), ValueError, S + "all tensors must be on one device, got u on meta, delta on cpu"),
    ("scan", put(A=META), ValueError, S + "all tensors must be on one device, got u on cpu, delta on cpu, A on meta, B on cpu, C on cpu, D on cpu, delta_bias on cpu, z on cpu"),
    ("scan", put(z=META), ValueError, S + "all tensors must be on one device, got u on cpu, delta on cpu, A on cpu, B on cpu, C on cpu, D on cpu, delta_bias on cpu, z on meta"),
    ("scan", lambda a: {k: None if v is None else v.to("meta") for k, v in a.items()}, ValueError, S + "u.device must be cpu or cuda, got meta"),
    # the two directions
    ("bidir", put(u_b=META), ValueError, BI + "all tensors must be on one device, got u on cpu and u_b on meta"),
    ("bidir", put(B_b=META), ValueError, BI + "all tensors must be on one device, got u on cpu and B_b on meta"),
    ("bidir", put(A_b=lambda A: A[:3]), ValueError, BI + "A and A_b must have equal shapes (or both be None), got (4, 3) and (3, 3)"),
    ("bidir", put(D_b=lambda D: None), ValueError, BI + "D and D_b must have equal shapes (or both be None), got (4,) and None"),
    ("bidir", put(delta_b=lambda d: d.long()), TypeError, BI + "delta_b must be a floating torch.Tensor, got torch.int64"),
    ("bidir", put(B_b=lambda B: B.to(torch.complex64)), TypeError, BI + "B_b must be a floating torch.Tensor, got torch.complex64"),
    ("bidir", put(u_b=lambda u: u.tolist()), TypeError, BI + "u_b must be a floating torch.Tensor, got list"),
    ("bidir", put(u=lambda u: u[0]), ValueError, BI + "u must have 3 dimensions (Bt, E, L)"),
    ("bidir", put(z=lambda z: z[..., :3]), ValueError, BI + "z must have shape (Bt, E, L) like u = (2, 4, 5), got (2, 4, 3)"),
    # the token-major form: (Bt, L, E) and (Bt, L, N)
    ("token_major", put(B=lambda B: B[:, None]), ValueError, TM + "B must be (Bt, L, N), got shape (2, 1, 5, 3)"),
    ("token_major", put(u=lambda u: u[0]), ValueError, TM + "u must be (Bt, L, E), got shape (5, 4)"),
    ("token_major", put(u_b=lambda u: u[:, :-1]), ValueError, TM + "u and u_b must have equal shapes"),
    ("token_major", put(C_b=META), ValueError, TM + "all tensors must be on one device, got u on cpu and C_b on meta"),
    ("token_major", put(z=lambda z: z.long()), TypeError, TM + "z must be a floating tensor"),
]  # fmt: skip


@pytest.mark.parametrize(
    "surface, change, exc, message", FUNCTION_ERRORS, ids=[f"{r[0]}-{i}" for i, r in enumerate(FUNCTION_ERRORS)]
)  # fmt: skip
def test_function_refuses(surface, change, exc, message):
    args = change(inputs(surface))
    with pytest.raises(exc) as info:
        FUNCTIONS[surface](args)
    assert message in str(info.value)


# The legal inputs issue 19 found mishandled: sequences of length 0 and empty batches (backward
# raised "element 0 of tensors does not require grad"), and NaN or Inf values (a NaN in delta
# or A vanished from the output); and the dtypes that are converted, not refused.

EMPTY = [dict(L=0), dict(Bt=0), dict(E=0), dict(Bt=0, L=0)]
EMPTY_IDS = ["L0", "batch0", "E0", "batch0-L0"]


def _grads(fn, ins: dict):
    """fn(ins) and every input's gradient under all-ones cotangents."""
    leaves = {k: None if v is None else v.detach().requires_grad_(True) for k, v in ins.items()}
    out = fn(leaves)
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    return outs, {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("options", [True, False], ids=["D-z-bias", "bare"])
@pytest.mark.parametrize("sizes", EMPTY, ids=EMPTY_IDS)
def test_scan_of_nothing_forward_and_backward(impl, sizes, options, dtype):
    """Empty outputs, a last state of zeros (no step taken), and zero gradients of each input's
    shape and dtype; outputs start as NaN (poisoned), so an unwritten state shows."""
    c = Case.bare(**(dict(Bt=2, E=4, L=5, N=3) | sizes), D=options, z=options, bias=options)
    ins = make_inputs(c, dtype)
    (out, last), grads = _grads(
        lambda a: selective_scan(**a, delta_softplus=True, return_last_state=True), ins
    )
    assert out.shape == (c.Bt, c.E, c.L) and out.dtype == dtype
    assert last.shape == (c.Bt, c.E, c.N) and (last == 0).all()
    for k, g in grads.items():
        assert g.shape == ins[k].shape and g.dtype == ins[k].dtype and (g == 0).all(), k


@pytest.mark.parametrize("surface", ["bidir", "token_major"])
@pytest.mark.parametrize("sizes", EMPTY, ids=EMPTY_IDS)
def test_pair_of_nothing(impl, sizes, surface):
    c = Case(**(dict(Bt=2, E=4, L=5, N=3) | sizes))
    ins = make_pair(c)
    if surface == "token_major":
        with torch.no_grad():
            out = FUNCTIONS[surface](token_major(ins))
        assert out.shape == (c.Bt, c.L, c.E)
        return
    (out,), grads = _grads(FUNCTIONS[surface], ins)
    assert out.shape == (c.Bt, c.E, c.L)
    assert all(g.shape == ins[k].shape and (g == 0).all() for k, g in grads.items())


NONFINITE = [(name, value) for name in SCAN_ARGS for value in (math.nan, math.inf, -math.inf)]


def _poisoned(ins: dict, name: str, value: float) -> dict:
    t = ins[name].clone()
    t.view(-1)[3] = value  # one element, early in the sequence
    return ins | {name: t}


def _same_nonfinite(got: torch.Tensor, want: torch.Tensor, nan_too: bool = True) -> bool:
    same = torch.equal(torch.isfinite(got), torch.isfinite(want))
    return same and (not nan_too or torch.equal(torch.isnan(got), torch.isnan(want)))


@pytest.mark.parametrize("name, value", NONFINITE, ids=[f"{n}-{v}" for n, v in NONFINITE])
def test_nan_and_inf_propagate_like_the_reference(impl, name, value):
    """Issue 19's case, (1, 8, 16) with softplus: the output's NaN and Inf elements are the
    reference's, element by element, and so are the gradients' non-finite ones."""
    c = Case(Bt=1, E=8, L=16, N=4)
    ins = _poisoned(make_inputs(c), name, value)
    ref64 = {k: v.double() for k, v in ins.items()}
    run = lambda a: selective_scan(**a, delta_softplus=True, return_last_state=True)  # noqa: E731
    ref = lambda a: selective_scan_reference(**a, delta_softplus=True, return_last_state=True)  # noqa: E731
    (out, last), grads = _grads(run, ins)
    (r_out, r_last), r_grads = _grads(ref, ref64)
    assert not math.isnan(value) or r_out.isnan().any()  # a NaN row tests propagation
    assert _same_nonfinite(out, r_out) and _same_nonfinite(last, r_last)
    for k in grads:  # NaN or Inf may differ where a sum meets +Inf and -Inf in another order
        assert _same_nonfinite(grads[k], r_grads[k], nan_too=False), f"d{k}"


@pytest.mark.parametrize("name", [*DIRECTION, *(k + "_b" for k in DIRECTION), "z"])
def test_nan_propagates_through_both_directions(name):
    c = Case(Bt=1, E=8, L=16, N=4)
    ins = _poisoned(make_pair(c), name, math.nan)
    out = FUNCTIONS["bidir"](ins)
    assert _same_nonfinite(out, pair_reference(ins, True))


ACCEPTED_DTYPES = [  # inputs converted, not refused: out in u's dtype
    ("u-f16", {"u": torch.float16}),
    ("sequences-bf16", dict.fromkeys(SEQUENCES, torch.bfloat16)),
    ("all-f64", dict.fromkeys(SCAN_ARGS, torch.float64)),
    ("params-f16", {"A": torch.float16, "D": torch.float16, "delta_bias": torch.float16}),
]


@pytest.mark.parametrize(
    "dtypes", [r[1] for r in ACCEPTED_DTYPES], ids=[r[0] for r in ACCEPTED_DTYPES]
)
def test_accepted_dtypes(impl, dtypes):
    ins = {k: v.to(dtypes.get(k, v.dtype)) for k, v in make_inputs(CASE).items()}
    out = selective_scan(**ins, delta_softplus=True)
    assert out.dtype == ins["u"].dtype
    ref = selective_scan_reference(**{k: v.double() for k, v in ins.items()}, delta_softplus=True)
    low = min((t for t in dtypes.values()), key=lambda t: torch.finfo(t).bits)
    assert rel_err(out, ref) <= SCAN_REL_ERR.get(low, SCAN_REL_ERR[torch.float32])[0]


# ---------------------------------------------------------------------------------------------
# surface 2: the ops called directly (B and C grouped, (Bt, G, N, L); no public checks before)
# ---------------------------------------------------------------------------------------------

OPS = {
    "fwd": torch.ops.vimc.selective_scan_fwd.default,
    "bwd": torch.ops.vimc.selective_scan_bwd.default,
    "bidir": torch.ops.vimc.selective_scan_bidirectional_fwd.default,
    "bidir_nograd": torch.ops.vimc.selective_scan_bidirectional_fwd_nograd.default,
    "token_major": torch.ops.vimc.selective_scan_bidirectional_token_major.default,
}


def op_inputs(op: str, c: Case = CASE) -> tuple[dict, tuple]:
    """The valid arguments of ``op`` by name, and its trailing flags."""
    if op in ("fwd", "bwd"):
        ins = make_inputs(c)
        ins |= {k: ins[k][:, None] for k in ("B", "C") if ins[k].dim() == 3}
        if op == "bwd":
            ins = {"dout": torch.randn(c.Bt, c.E, c.L), "dlast": torch.randn(c.Bt, c.E, c.N)} | ins
        return ins, (True, False)
    pair = make_pair(c)
    if op == "token_major":
        return token_major(pair), (True,)
    return pair | {k: pair[k][:, None] for k in ("B", "C", "B_b", "C_b")}, (True,)


K = "vimc scan kernel: "
OP_ERRORS = [
    # the forward op: ranks, sizes, dtypes, devices, storage
    ("fwd", put(B=lambda B: B[:, None]), ValueError, K + "B must have 4 dimensions (Bt, G, N, L), got shape (2, 1, 1, 3, 5)"),
    ("fwd", put(B=lambda B: B[:, 0]), ValueError, K + "B must have 4 dimensions (Bt, G, N, L), got shape (2, 3, 5)"),
    ("fwd", put(delta=lambda d: d[..., :4]), ValueError, K + "delta must have shape (Bt, E, L) like u = (2, 4, 5), got (2, 4, 4)"),
    ("fwd", put(A=lambda A: A[:3]), ValueError, K + "A must have shape (E, N) with E = 4 (u.shape[1]), got (3, 3)"),
    ("fwd", put(A=lambda A: Z(4, 0)), ValueError, K + f"the state size N = A.shape[1] must be in [1, {MAX_D_STATE}] for the kernels, got 0"),
    ("fwd", put(A=lambda A: Z(4, MAX_D_STATE + 1)), ValueError, K + f"the state size N = A.shape[1] must be in [1, {MAX_D_STATE}] for the kernels, got {MAX_D_STATE + 1}"),
    ("fwd", put(C=lambda C: C[..., :4]), ValueError, K + "C must have shape (Bt, G, N, L) = (2, 1, 3, 5), got (2, 1, 3, 4)"),
    ("fwd", put(D=lambda D: D[:2]), ValueError, K + "D must have shape (E,) = (4,), got (2,)"),
    ("fwd", put(z=lambda z: z[:1]), ValueError, K + "z must have shape (Bt, E, L) like u = (2, 4, 5), got (1, 4, 5)"),
    ("fwd", put(u=lambda u: u.long()), TypeError, K + "u must be a floating tensor (float16, bfloat16, float32 or float64), got torch.int64"),
    ("fwd", put(C=lambda C: C.to(torch.complex64)), TypeError, K + "C must be a floating tensor"),
    ("fwd", put(u=lambda u: u.to_sparse()), TypeError, K + "u must be a dense (strided) tensor, got torch.sparse_coo"),
    ("fwd", put(u=META), ValueError, K + "all tensors must be on one device, got u on meta, delta on cpu"),
    ("fwd", put(B=META), ValueError, K + "all tensors must be on one device, got u on cpu, delta on cpu, A on cpu, B on meta, C on cpu, D on cpu, delta_bias on cpu, z on cpu"),
    ("fwd", put(A=META), ValueError, K + "all tensors must be on one device, got u on cpu, delta on cpu, A on meta, B on cpu, C on cpu, D on cpu, delta_bias on cpu, z on cpu"),
    ("fwd", put(u=shrunk), ValueError, K + "u reaches past the end of its storage"),
    ("fwd", put(B=shrunk), ValueError, K + "B reaches past the end of its storage"),
    ("fwd", put(delta_bias=shrunk), ValueError, K + "delta_bias reaches past the end of its storage"),
    # the backward op: its cotangents size the kernel's loops too
    ("bwd", put(dout=lambda d: d[..., :4]), ValueError, K + "dout must have shape (Bt, E, L) like u = (2, 4, 5), got (2, 4, 4)"),
    ("bwd", put(dlast=lambda d: d[..., :2]), ValueError, K + "dlast must have shape (Bt, E, N) = (2, 4, 3), got (2, 4, 2)"),
    ("bwd", put(dout=META), ValueError, K + "all tensors must be on one device, got u on cpu, delta on cpu, A on cpu, B on cpu, C on cpu, D on cpu, delta_bias on cpu, z on cpu, dout on meta, dlast on cpu"),
    ("bwd", put(dlast=lambda d: d.int()), TypeError, K + "dlast must be a floating tensor"),
    ("bwd", put(dout=shrunk), ValueError, K + "dout reaches past the end of its storage"),
    ("bwd", put(u=lambda u: u.to(torch.complex64)), TypeError, K + "u must be a floating tensor"),
    ("bwd", put(B=lambda B: B[:, 0]), ValueError, K + "B must have 4 dimensions (Bt, G, N, L)"),
    # the bidirectional op (and its grad-mode-off twin): the kernel sizes both by the first
    ("bidir", put(u_b=META), ValueError, K + "all tensors must be on one device, got u on cpu and u_b on meta"),
    ("bidir_nograd", put(u_b=META), ValueError, K + "all tensors must be on one device, got u on cpu and u_b on meta"),
    ("bidir_nograd", put(z=META), ValueError, K + "all tensors must be on one device, got u on cpu, delta on cpu, A on cpu, B on cpu, C on cpu, D on cpu, delta_bias on cpu, z on meta"),
    ("bidir_nograd", put(u_b=lambda u: u[..., :3]), ValueError, K + "u and u_b must have equal shapes (or both be None), got (2, 4, 5) and (2, 4, 3)"),
    ("bidir_nograd", put(A_b=lambda A: A[:, :2]), ValueError, K + "A and A_b must have equal shapes"),
    ("bidir_nograd", put(B_b=lambda B: B.int()), TypeError, K + "B_b must be a floating torch.Tensor, got torch.int32"),
    ("bidir_nograd", put(D_b=lambda D: None), ValueError, K + "D and D_b must have equal shapes (or both be None), got (4,) and None"),
    ("bidir_nograd", put(B_b=shrunk), ValueError, K + "B_b reaches past the end of its storage"),
    ("bidir", put(B=lambda B: B[:, 0], B_b=lambda B: B[:, 0]), ValueError, K + "B must have 4 dimensions (Bt, G, N, L)"),
    # the token-major op: (Bt, L, E) and one group (Bt, L, N)
    ("token_major", put(B=lambda B: B[:, None]), ValueError, K + "B must be (Bt, L, N), got shape (2, 1, 5, 3)"),
    ("token_major", put(u=lambda u: u[0]), ValueError, K + "u must be (Bt, L, E), got shape (5, 4)"),
    ("token_major", put(u_b=META), ValueError, K + "all tensors must be on one device, got u on cpu and u_b on meta"),
    ("token_major", put(C_b=lambda C: C[:, :-1]), ValueError, K + "C and C_b must have equal shapes"),
    ("token_major", put(z=lambda z: z.long()), TypeError, K + "z must be a floating tensor"),
    ("token_major", put(A=lambda A: Z(4, 0), A_b=lambda A: Z(4, 0)), ValueError, K + "the state size N = A.shape[1] must be in [1, 256] for the kernels, got 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    "op, change, exc, message", OP_ERRORS, ids=[f"{r[0]}-{i}" for i, r in enumerate(OP_ERRORS)]
)  # fmt: skip
def test_op_refuses(impl, op, change, exc, message):
    """Every row on both CPU paths (the C kernel and the torch one): the check is the op's."""
    ins, flags = op_inputs(op)
    with pytest.raises(exc) as info, torch.no_grad():
        OPS[op](*change(ins).values(), *flags)
    assert message in str(info.value)


def _meta(ins: dict) -> dict:
    return {k: None if v is None else v.to("meta") for k, v in ins.items()}


@pytest.mark.parametrize("op", list(OPS))
def test_op_on_meta_tensors_gives_shapes_only(op):
    """Every tensor on meta: the fake kernel answers with meta outputs of the right shapes."""
    ins, flags = op_inputs(op)
    got = OPS[op](*_meta(ins).values(), *flags)
    want = OPS[op](*ins.values(), *flags)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    assert all(g.is_meta and g.shape == w.shape and g.dtype == w.dtype for g, w in zip(got, want))


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("sizes", EMPTY, ids=EMPTY_IDS)
def test_op_of_nothing(impl, op, sizes):
    """Called directly, an empty scan gives empty outputs, zero states and zero gradients of
    the fake kernel's shapes."""
    ins, flags = op_inputs(op, Case(**(dict(Bt=2, E=4, L=5, N=3) | sizes)))
    with torch.no_grad():
        got = OPS[op](*ins.values(), *flags)
    want = OPS[op](*_meta(ins).values(), *flags)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert not g.isnan().any()  # written (outputs start as NaN), and 0 where not empty


# ---------------------------------------------------------------------------------------------
# surface 3: the ONNX Runtime plugin's nodes (float32, contiguous, attributes typed by ONNX)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin(ort_plugin):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    return str(ort_plugin)


def node(op_type: str, c: Case = CASE, **attrs):
    """A node's valid feeds and names: SelectiveScan (B, C grouped) or the bidirectional one
    (token-major) -> (inputs as tensors, feeds, names, outputs name -> shape, attributes)."""
    if op_type == "SelectiveScan":
        return scan_io(c)
    ins = make_pair(c)
    feeds, names = bidir_io(ins)
    return ins, feeds, names, {"out": (c.Bt, c.L, c.E)}, {"delta_softplus": int(c.softplus)}


def feed(**changes):
    """A row's change to a node's feeds: name=f sets feeds[name] = f(feeds[name])."""
    return lambda feeds: feeds | {k: f(feeds[k]) for k, f in changes.items()}


SS, BD = "vimc.SelectiveScan: ", "vimc.SelectiveScanBidirectional: "
F = np.zeros
PLUGIN_ERRORS = [
    # (node, change to the feeds, change to the attributes, message fragment)
    ("SelectiveScan", feed(delta=lambda d: d[..., :4]), {}, SS + "delta must have shape (2, 4, 5) to match u, A and B, got (2, 4, 4)"),
    ("SelectiveScan", feed(C=lambda C: C[:, :, :2]), {}, SS + "C must have shape (2, 1, 3, 5) to match u, A and B, got (2, 1, 2, 5)"),
    ("SelectiveScan", feed(A=lambda A: A[None]), {}, SS + "A must have 2 dimensions, got 3"),
    ("SelectiveScan", feed(B=lambda B: F((2, 3, 3, 5), np.float32), C=lambda C: F((2, 3, 3, 5), np.float32)), {}, SS + "B's group count G = 3 must divide E = 4"),
    ("SelectiveScan", feed(A=lambda A: F((4, 0), np.float32), B=lambda B: B[:, :, :0], C=lambda C: C[:, :, :0]), {}, SS + f"the state size N = A's second dimension must be in [1, {MAX_D_STATE}], got 0"),
    ("SelectiveScan", feed(A=lambda A: F((4, 257), np.float32), B=lambda B: F((2, 1, 257, 5), np.float32), C=lambda C: F((2, 1, 257, 5), np.float32)), {}, SS + "the state size N = A's second dimension must be in [1, 256], got 257"),
    ("SelectiveScan", feed(u=lambda u: u.astype(np.float64)), {}, "SelectiveScan"),  # at session creation: the node's inputs are float32
    ("SelectiveScan", feed(u=lambda u: u.astype(np.int64)), {}, "SelectiveScan"),
    ("SelectiveScan", None, {"delta_softplus": 0.5}, SS + "attribute delta_softplus must be 0 or 1, got 0.5"),
    ("SelectiveScan", None, {"delta_softplus": math.nan}, SS + "attribute delta_softplus must be 0 or 1, got nan"),
    ("SelectiveScan", None, {"delta_softplus": 2}, SS + "attribute delta_softplus must be 0 or 1, got 2"),
    ("SelectiveScan", None, {"reverse": "1"}, SS + "attribute reverse must be an int 0 or 1, got a string"),
    ("SelectiveScan", None, {"reverse": -1}, SS + "attribute reverse must be 0 or 1, got -1"),
    ("SelectiveScanBidirectional", feed(A_b=lambda A: A[:, :2]), {}, BD + "A_b must have shape (4, 3) to match u, A and B, got (4, 2)"),
    ("SelectiveScanBidirectional", feed(u_b=lambda u: u[:, :3]), {}, BD + "u_b must have shape (2, 5, 4) to match u, A and B, got (2, 3, 4)"),
    ("SelectiveScanBidirectional", "no D_b", {}, BD + "D and delta_bias must each be given for both directions or for neither"),
    ("SelectiveScanBidirectional", feed(A=lambda A: F((4, 0), np.float32)), {}, BD + "the state size N = A's second dimension must be in [1, 256], got 0"),
    ("SelectiveScanBidirectional", None, {"delta_softplus": 2.0}, BD + "attribute delta_softplus must be 0 or 1, got 2"),
]  # fmt: skip


@pytest.mark.parametrize(
    "op_type, change, attrs, message", PLUGIN_ERRORS, ids=[f"{r[0]}-{i}" for i, r in enumerate(PLUGIN_ERRORS)]
)  # fmt: skip
def test_plugin_node_refuses(plugin, op_type, change, attrs, message):
    """An error naming the node and the problem, when the session is made (types, attributes)
    or when it runs (shapes); never a crash or a result read from the wrong memory."""
    _, feeds, names, outputs, base = node(op_type)
    if change == "no D_b":
        names[names.index("D_b")] = ""
        feeds.pop("D_b")
    elif change is not None:
        feeds = change(feeds)
    mp = node_model(op_type, feeds, outputs, base | attrs, names)
    with pytest.raises(Exception) as info:
        session(mp, plugin).run(None, feeds)
    assert message in str(info.value)


def _scan_reference(ins: dict, softplus: bool, reverse: bool) -> torch.Tensor:
    x = {k: None if v is None else v.double() for k, v in ins.items()}
    return selective_scan_reference(*(x[k] for k in SCAN_ARGS), softplus, reverse=reverse)


FLAG_ATTRIBUTES = [  # (attributes as written, the flags they mean)
    ({"delta_softplus": 1.0}, (True, False)),  # issue 19: read as 0, an 8.6e10 error
    ({"delta_softplus": 0.0}, (False, False)),
    ({"delta_softplus": 1, "reverse": 1.0}, (True, True)),
    ({"delta_softplus": 1}, (True, False)),
    ({}, (False, False)),  # absent: mamba's defaults
]


@pytest.mark.parametrize(
    "attrs, flags", FLAG_ATTRIBUTES, ids=lambda x: str(x) if isinstance(x, dict) else None
)
def test_plugin_reads_flag_attributes_of_either_type(plugin, attrs, flags):
    c = Case(E=8, L=9, N=4, softplus=False, bias=False)  # delta >= 0 with or without softplus
    ins, feeds, names, outputs, _ = node("SelectiveScan", c)
    mp = node_model("SelectiveScan", feeds, outputs, attrs, names)
    out = run_poisoned(session(mp, plugin), feeds, outputs)["out"]
    assert rel_err(out, _scan_reference(ins, *flags)) <= SCAN_REL_ERR[torch.float32][0]


def test_plugin_bidirectional_reads_a_float_softplus(plugin):
    c = Case(E=8, L=9, N=4)
    ins, feeds, names, outputs, _ = node("SelectiveScanBidirectional", c)
    mp = node_model("SelectiveScanBidirectional", feeds, outputs, {"delta_softplus": 1.0}, names)
    out = run_poisoned(session(mp, plugin), feeds, outputs)["out"]
    assert rel_err(out, pair_reference(ins, True).mT) <= SCAN_REL_ERR[torch.float32][0]


@pytest.mark.parametrize("op_type", ["SelectiveScan", "SelectiveScanBidirectional"])
@pytest.mark.parametrize("sizes", EMPTY, ids=EMPTY_IDS)
def test_plugin_node_of_nothing(plugin, op_type, sizes):
    """Zero-size dimensions give empty outputs and a zero last state, as the torch op does
    (issue 19: "a tensor gave no data pointer")."""
    c = Case(**(dict(Bt=2, E=4, L=5, N=3) | sizes))
    _, feeds, names, outputs, attrs = node(op_type, c)
    got = run_poisoned(
        session(node_model(op_type, feeds, outputs, attrs, names), plugin), feeds, outputs
    )
    for k, shape in outputs.items():
        assert tuple(got[k].shape) == shape and not got[k].isnan().any(), k
    if "last_state" in got:
        assert (got["last_state"] == 0).all()


@pytest.mark.parametrize("name", ["u", "delta", "A", "B", "z"])
def test_plugin_propagates_nan_like_the_reference(plugin, name):
    c = Case(Bt=1, E=8, L=16, N=4)
    ins, feeds, names, outputs, attrs = node("SelectiveScan", c)
    ins = _poisoned(ins, name, math.nan)
    feeds[name] = as_numpy(ins[name])
    out = run_poisoned(
        session(node_model("SelectiveScan", feeds, outputs, attrs, names), plugin), feeds, outputs
    )["out"]
    assert _same_nonfinite(out, _scan_reference(ins, True, False))
