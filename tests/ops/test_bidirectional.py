"""``selective_scan_bidirectional`` (Vim's two directions in one op) against two float64
reference scans: forward, gradients, registration, compilation, export, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from vimc.ops import selective_scan_bidirectional, selective_scan_bidirectional_token_major

from ..tolerances import EXACT, PAIR_GRAPH_VS_EAGER, SCAN_REL_ERR
from ._scan_cases import (
    DIRECTION,
    Case,
    assert_compiled_matches_eager,
    assert_grads_match,
    describe_mismatch,
    make_pair,
    rel_err,
)
from ._scan_cases import pair_reference as reference


def run(ins: dict, softplus: bool):
    return selective_scan_bidirectional(**ins, delta_softplus=softplus)


CASES = [
    Case(),
    Case(Bt=1, E=16, L=1, N=16),
    Case(E=13, L=29, N=3),  # a partial block of channels (8 or 16 lanes)
    Case(E=40, L=21, N=4),  # full blocks and a partial one for 8 and for 16 lanes
    Case(E=12, L=17, N=4, G=3),
    Case(E=9, L=13, N=6, D=False, z=False, bias=False),
    Case(E=8, L=20, N=2, softplus=False, bias=False),
]


@pytest.mark.parametrize("layout", ["contiguous", "token_major"])
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_matches_two_reference_scans(impl, c, layout):
    ins = make_pair(c, layout=layout)
    out = run(ins, c.softplus)
    assert out.shape == ins["u"].shape and out.stride() == torch.empty_like(ins["u"]).stride()
    ref = reference(ins, c.softplus)
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(out, ref) <= tol, describe_mismatch(out, ref, tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision(dtype):
    c = Case(E=16, L=24, N=8)
    ins = make_pair(c, dtype)
    out = run(ins, True)
    assert out.dtype == dtype
    tol = SCAN_REL_ERR[dtype][0]
    assert rel_err(out, reference(ins, True)) <= tol


@pytest.mark.parametrize(
    "c", [Case(E=8, L=11, N=4), Case(E=6, L=9, N=3, G=2, D=False, bias=False)], ids=lambda c: c.id
)
def test_gradients_match_reference(impl, c):
    ins = make_pair(c)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items() if v is not None}
    ref_leaves = {k: v.detach().to(torch.float64).requires_grad_(True) for k, v in leaves.items()}
    g = torch.randn(c.Bt, c.E, c.L, dtype=torch.float64)
    run({k: leaves.get(k) for k in ins}, c.softplus).backward(g.float())
    reference({k: ref_leaves.get(k) for k in ins}, c.softplus).backward(g)
    assert_grads_match(
        {k: t.grad for k, t in leaves.items()}, {k: t.grad for k, t in ref_leaves.items()}
    )


def _op_args(c: Case, requires_grad: bool = True):
    ins = make_pair(c)
    for k in ("B", "C", "B_b", "C_b"):
        if ins[k].dim() == 3:
            ins[k] = ins[k].unsqueeze(1)
    order = [*DIRECTION, *(k + "_b" for k in DIRECTION), "z"]
    args = [None if ins[k] is None else ins[k].requires_grad_(requires_grad) for k in order]
    return (*args, c.softplus)


OPCHECK_CASES = [Case(E=8, L=7, N=4), Case(E=6, L=5, N=3, G=2, D=False, z=False)]


@pytest.mark.parametrize("c", OPCHECK_CASES, ids=lambda c: c.id)
def test_opcheck(c):
    torch.library.opcheck(torch.ops.vimc.selective_scan_bidirectional_fwd.default, _op_args(c))


@pytest.mark.parametrize("c", OPCHECK_CASES, ids=lambda c: c.id)
def test_opcheck_nograd_twin(c):
    """The grad-mode-off twin: same schema and kernel, no autograd formula."""
    op = torch.ops.vimc.selective_scan_bidirectional_fwd_nograd.default
    args = _op_args(c, requires_grad=False)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    with torch.no_grad():
        ours = op(*args)
        theirs = torch.ops.vimc.selective_scan_bidirectional_fwd.default(*args)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **EXACT)


def _export_pair(ins: dict, fn=selective_scan_bidirectional):
    """torch.export of ``fn`` (a two-direction scan function) on ``ins`` -> (program, the
    targets of its call_function nodes)."""
    names = list(ins)

    class Pair(torch.nn.Module):
        def forward(self, *xs):
            return fn(**dict(zip(names, xs)), delta_softplus=True)

    ep = torch.export.export(Pair(), tuple(ins.values()))
    return ep, [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]


def _token_major(ins: dict) -> dict:
    """``ins`` (channel-major, one group) as the token-major function takes them: u, delta, z
    (Bt, L, E); B, C (Bt, L, N)."""
    out = {}
    for k, v in ins.items():
        if v is not None and k.removesuffix("_b") in ("u", "delta", "z"):
            v = v.mT
        elif v is not None and k.removesuffix("_b") in ("B", "C"):
            v = v.squeeze(1).mT if v.dim() == 4 else v.mT
        out[k] = v
    return out


TOKEN_MAJOR_CASES = [Case(E=8, L=7, N=4), Case(E=13, L=9, N=3, D=False, z=False, bias=False)]


@pytest.mark.parametrize("c", TOKEN_MAJOR_CASES, ids=lambda c: c.id)
def test_token_major_op_matches_two_reference_scans(c):
    """``vimc::selective_scan_bidirectional_token_major`` (the ONNX plugin form's node):
    (Bt, L, .) tensors in and out, fake kernel and schema checked."""
    ins = make_pair(c)
    seq = {"u", "delta", "z", "B", "C"}
    order = [*DIRECTION, *(k + "_b" for k in DIRECTION), "z"]
    args = [
        None
        if ins[k] is None
        else ins[k].movedim(-1, 1).contiguous()
        if k.removesuffix("_b") in seq
        else ins[k]
        for k in order
    ]
    op = torch.ops.vimc.selective_scan_bidirectional_token_major.default
    torch.library.opcheck(op, (*args, c.softplus), test_utils=("test_schema", "test_faketensor"))
    out = op(*args, c.softplus)
    assert out.shape == (c.Bt, c.L, c.E) and out.is_contiguous()
    ref = reference(ins, c.softplus).movedim(-1, 1)
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(out, ref) <= tol, describe_mismatch(out, ref, tol)


def test_token_major_function_records_one_node_and_matches_eager():
    """selective_scan_bidirectional_token_major is one op node in an exported graph, and its
    (Bt, L, E) output is selective_scan_bidirectional's, transposed."""
    ins = make_pair(Case(E=8, L=6, N=4), layout="token_major")
    tm = _token_major(ins)
    ep, targets = _export_pair(tm, selective_scan_bidirectional_token_major)
    assert sum("vimc." in t for t in targets) == 1
    assert "vimc.selective_scan_bidirectional_token_major.default" in targets
    torch.testing.assert_close(ep.module()(*tm.values()).mT, run(ins, True), **PAIR_GRAPH_VS_EAGER)


def test_token_major_function_refuses_grouped_or_mismatched_input():
    """The token-major op takes one B/C group, (Bt, L, N): a grouped B is refused with a message
    naming it, never read as another layout; a *_b of another shape likewise."""
    ins = _token_major(make_pair(Case(E=8, L=6, N=4)))
    bad = dict(ins, B=ins["B"].unsqueeze(1))
    with pytest.raises(ValueError, match=r"B must be \(Bt, L, N\)"):
        selective_scan_bidirectional_token_major(**bad)
    bad = dict(ins, u_b=ins["u_b"][:, :-1])
    with pytest.raises(ValueError, match="u and u_b must have equal shapes"):
        selective_scan_bidirectional_token_major(**bad)


def test_grad_mode_picks_the_op(monkeypatch):
    """With grad mode off the public function calls the twin without autograd (a cheaper
    dispatch); with it on, the op whose backward the gradients need."""
    from vimc.ops.selective_scan import bidirectional

    ins = make_pair(Case(E=8, L=5, N=4))
    seen = []
    for name in ("_BIDIR", "_BIDIR_NOGRAD"):
        op = getattr(bidirectional, name)
        monkeypatch.setattr(
            bidirectional, name, lambda *a, op=op, name=name: seen.append(name) or op(*a)
        )
    with torch.no_grad():
        off = run(ins, True)
    on = run(ins, True)
    assert seen == ["_BIDIR_NOGRAD", "_BIDIR"]
    torch.testing.assert_close(off, on, **EXACT)


def test_compile_under_no_grad_matches_eager():
    c = Case(E=16, L=20, N=8)
    ins = make_pair(c, layout="token_major")
    torch._dynamo.reset()
    compiled = torch.compile(lambda **kw: run(kw, True), fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**ins), run(ins, True), **PAIR_GRAPH_VS_EAGER)


def test_compile_fullgraph_is_one_op_and_matches_eager():
    c = Case(E=16, L=20, N=8)
    ins = make_pair(c, layout="token_major")
    assert_compiled_matches_eager(lambda **kw: run(kw, True), ins)


def test_export_records_what_runs_eagerly():
    """The op computes one thing however it is traced: torch.export records the one-call op
    the eager CPU path runs (no export-dependent branch). Export routes that want one node
    per direction ask the model for it (vimc.export.program.model_forms)."""
    ins = make_pair(Case(E=8, L=6, N=4))
    ep, targets = _export_pair(ins)
    assert sum("vimc." in t for t in targets) == 1
    assert any("selective_scan_bidirectional_fwd" in t for t in targets)
    torch.testing.assert_close(ep.module()(*ins.values()), run(ins, True), **PAIR_GRAPH_VS_EAGER)


@pytest.mark.parametrize(
    "name, mutate",
    [
        ("A", lambda ins: ins.update(A_b=ins["A_b"][:, :2].contiguous())),
        ("D", lambda ins: ins.update(D_b=None)),
        ("B", lambda ins: ins.update(B_b=ins["B_b"].unsqueeze(1).expand(-1, 2, -1, -1))),
    ],
)
def test_directions_of_unequal_shapes_are_refused(name, mutate):
    ins = make_pair(dataclasses.replace(Case(), E=12))
    mutate(ins)
    with pytest.raises(ValueError, match=f"{name} and {name}_b"):
        run(ins, True)


def test_reverse_direction_argument_of_wrong_type_is_named():
    ins = make_pair(Case())
    ins["delta_b"] = ins["delta_b"].long()
    with pytest.raises(TypeError, match="delta_b must be a floating"):
        run(ins, True)


def test_op_called_directly_refuses_a_pair_of_other_shapes():
    """The op skips the public function's checks; the kernel sizes both directions by the
    first, so a reverse direction of another length must be an error, not an overread."""
    from vimc.ops.selective_scan import cpu

    if not cpu.c_kernel_available():
        pytest.skip(f"no C compiler for the fused CPU kernel: {cpu.c_kernel_error()}")
    args = list(_op_args(Case(E=8, L=7, N=4), requires_grad=False))
    short = make_pair(Case(E=8, L=5, N=4))
    args[7:12] = (
        short["u_b"],
        short["delta_b"],
        args[9],
        short["B_b"].unsqueeze(1),
        short["C_b"].unsqueeze(1),
    )
    with torch.no_grad(), pytest.raises(ValueError, match="vimc scan kernel: u and u_b must have"):
        torch.ops.vimc.selective_scan_bidirectional_fwd_nograd(*args)
