"""``selective_scan_bidirectional(..., delta_proj=, delta_proj_b=)``: each direction's dt_proj
applied by the scan (in the fused CPU kernel with grad mode off) against the same pair with
the projection done first by a float64 matmul: values, layouts, padding lanes, gradients,
registration, compilation, bad input."""

from __future__ import annotations

import pytest
import torch
from vimc.ops import selective_scan_bidirectional
from vimc.ops.selective_scan import bidirectional, cpu

from ..tolerances import EXACT, PAIR_GRAPH_VS_EAGER, SCAN_REL_ERR
from ._scan_cases import Case, assert_grads_match, describe_mismatch, make_pair, rel_err
from ._scan_cases import pair_reference as reference


def make_projected(c: Case, R: int, layout: str = "contiguous", seed: int = 2) -> dict:
    """A pair whose deltas are dt_proj inputs (Bt, R, L), with (E, R) weights. Token-major:
    each (Bt, R, L) is a view of (Bt, L, R) memory, as a mixer's x_proj output holds it."""
    ins = make_pair(c, layout=layout)
    g = torch.Generator().manual_seed(seed)
    for k in ("delta", "delta_b"):
        x = torch.randn(c.Bt, R, c.L, generator=g) * 0.5
        ins[k] = x.mT.contiguous().mT if layout == "token_major" else x
        ins[k.replace("delta", "delta_proj")] = torch.randn(c.E, R, generator=g) / R**0.5
    return ins


def projected_reference(ins: dict, softplus: bool) -> torch.Tensor:
    """float64: the projections as a matmul, then the two reference scans."""
    x = {k: None if v is None else v.to(torch.float64) for k, v in ins.items()}
    for k in ("delta", "delta_b"):
        x[k] = x[k.replace("delta", "delta_proj")] @ x[k]  # (E, R) x (Bt, R, L)
    return reference({k: v for k, v in x.items() if "proj" not in k}, softplus)


def run(ins: dict, softplus: bool = True) -> torch.Tensor:
    return selective_scan_bidirectional(**ins, delta_softplus=softplus)


CASES = [
    Case(E=12, L=33, N=5),
    Case(Bt=1, E=16, L=1, N=16),
    Case(E=40, L=21, N=4),  # full blocks and a partial one, for 8 and 16 lanes
    Case(E=24, L=17, N=4, G=3),
    Case(E=9, L=13, N=6, D=False, z=False, bias=False),
    Case(E=8, L=20, N=2, softplus=False, bias=False),
]


@pytest.mark.parametrize("R", [1, 12, 64])
@pytest.mark.parametrize("layout", ["contiguous", "token_major"])
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_matches_the_projection_then_two_reference_scans(impl, c, layout, R):
    ins = make_projected(c, R, layout)
    with torch.no_grad():  # where the fused kernel applies the projection itself
        out = run(ins, c.softplus)
    assert out.shape == ins["u"].shape and out.stride() == torch.empty_like(ins["u"]).stride()
    ref = projected_reference(ins, c.softplus)
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(out, ref) <= tol, describe_mismatch(out, ref, tol)


def test_grad_mode_off_runs_the_fused_op_and_on_runs_the_matmul(monkeypatch):
    """With grad mode off on CPU the public function makes one call of the projecting op; with
    it on, a matmul feeds the op whose backward the gradients need. Same numbers."""
    ins = make_projected(Case(E=16, L=9, N=4), 12, "token_major")
    seen = []
    for name in ("_BIDIR_PROJ", "_BIDIR"):
        op = getattr(bidirectional, name)
        monkeypatch.setattr(
            bidirectional, name, lambda *a, op=op, name=name: seen.append(name) or op(*a)
        )
    with torch.no_grad():
        off = run(ins)
    on = run(ins)
    assert seen == ["_BIDIR_PROJ", "_BIDIR"]
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(off, on) <= tol


def test_gradients_reach_the_projection_weights():
    c = Case(E=8, L=11, N=4)
    ins = make_projected(c, 6)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items() if v is not None}
    ref = {k: v.detach().double().requires_grad_(True) for k, v in leaves.items()}
    g = torch.randn(c.Bt, c.E, c.L, dtype=torch.float64)
    run(leaves).backward(g.float())
    projected_reference(ref, True).backward(g)
    assert_grads_match({k: t.grad for k, t in leaves.items()}, {k: t.grad for k, t in ref.items()})


def test_opcheck():
    ins = make_projected(Case(E=8, L=7, N=4, G=1), 3)
    order = ["u", "delta", "A", "B", "C", "D", "delta_bias", "delta_proj"]
    args = (*(ins[k] for k in order), *(ins[k + "_b"] for k in order), ins["z"], True)
    op = torch.ops.vimc.selective_scan_bidirectional_proj_fwd.default
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_c_kernel_and_torch_path_agree(monkeypatch):
    """The op's torch fallback (no compiler) projects with a matmul: the same numbers."""
    if not cpu.c_kernel_available():
        pytest.skip(f"no C compiler for the fused CPU kernel: {cpu.c_kernel_error()}")
    ins = make_projected(Case(E=40, L=19, N=8), 12, "token_major")
    with torch.no_grad():
        fused = run(ins)
        monkeypatch.setattr(cpu, "c_kernel_available", lambda: False)
        fallback = run(ins)
    tol = SCAN_REL_ERR[torch.float32][0]
    assert rel_err(fused, fallback.double()) <= tol


def test_compile_fullgraph_matches_eager():
    ins = make_projected(Case(E=16, L=20, N=8), 12, "token_major")
    torch._dynamo.reset()
    compiled = torch.compile(lambda **kw: run(kw), fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**ins), run(ins), **PAIR_GRAPH_VS_EAGER)
        torch.testing.assert_close(compiled(**ins), compiled(**ins), **EXACT)


@pytest.mark.parametrize(
    "change, exc, message",
    [
        (lambda i: i.update(delta_proj_b=None), ValueError, "delta_proj and delta_proj_b"),
        (lambda i: i.update(delta_proj=i["delta_proj"][:5]), ValueError, r"delta_proj must"),
        (lambda i: i.update(delta_proj=torch.zeros(8, 65)), ValueError, r"R in \[1, 64\]"),
        (lambda i: i.update(delta_proj=torch.zeros(8, 0)), ValueError, r"R in \[1, 64\]"),
        (lambda i: i.update(delta=i["delta"][:, :2]), ValueError, "delta must have shape"),
        (lambda i: i.update(delta_b=i["delta_b"][:, :2]), ValueError, "delta and delta_b"),
        (lambda i: i.update(delta_proj=i["delta_proj"].long()), TypeError, "delta_proj must"),
        (lambda i: i.update(delta_proj_b=i["delta_proj_b"].to("meta")), ValueError, "device"),
        (lambda i: i.update(delta_proj=i["delta_proj"][:, :, None]), ValueError, "delta_proj"),
    ],
)
def test_bad_projection_is_refused(change, exc, message):
    ins = make_projected(Case(E=8, L=7, N=4), 3)
    change(ins)
    with torch.no_grad(), pytest.raises(exc, match=message):
        run(ins)


def test_projection_weight_whose_storage_shrank_is_refused():
    ins = make_projected(Case(E=8, L=7, N=4), 3)
    w = ins["delta_proj"].clone()
    ins["delta_proj"] = w[:, :]
    w.untyped_storage().resize_(4)
    with torch.no_grad(), pytest.raises(ValueError, match="delta_proj reaches past the end"):
        run(ins)


def test_c_kernel_refuses_a_backward_with_a_projection():
    """The projection is forward-only in C: the backward entry point says no (-1) instead of
    reading a (Bt, R, L) delta as (Bt, E, L)."""
    if not cpu.c_kernel_available():
        pytest.skip(f"no C compiler for the fused CPU kernel: {cpu.c_kernel_error()}")
    words = cpu._pack(cpu.ScanDims(1, 8, 4, 2, 1), [None] * 8, 1, 0, 1, {})
    words[cpu._AT["dt_proj"]] = words[cpu._AT["scratch"]]  # any non-NULL pointer
    words[cpu._AT["R"]] = 1
    assert cpu._lib.vimc_scan_bwd(words.buffer_info()[0]) == -1
