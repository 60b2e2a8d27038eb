"""The selective-scan op against a float64 recurrence: forward, gradients, registration,
compilation, bad input. The CPU kernel here; the Triton kernels in test_triton.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from vimc.ops import MAX_D_STATE, selective_scan, selective_scan_reference
from vimc.ops.selective_scan import cpu

from ..tolerances import (
    EXACT,
    EXP_MAX_REL,
    EXP_MAX_REL_PER_UNIT,
    GROWING_STATE_REL_ERR,
    LONG_SCAN_REL_ERR,
    REVERSE_VS_FLIPPED,
    SCAN_REL_ERR,
    SHORT_STATE_REL_ERR,
    SOFTPLUS_MAX_REL,
)
from ._scan_cases import (
    Case,
    assert_compiled_matches_eager,
    assert_grads_match,
    describe_mismatch,
    flags,
    make_inputs,
    rel_err,
    to64,
    token_major,
)

F32_OUT, F32_GRAD = SCAN_REL_ERR[torch.float32]  # relative L2 error bounds


def run(ins: dict, c: Case, **kw):
    return selective_scan(**ins, **flags(c), **kw)


def reference64(ins: dict, c: Case, **kw):
    return selective_scan_reference(**to64(ins), **flags(c), **kw)


CASES = [
    Case(),
    Case(L=1),
    Case(L=2, N=1),
    Case(Bt=1, E=7, L=31, N=16, reverse=True),
    Case(E=9, L=13, N=64, D=False, z=False, bias=False),
    Case(E=12, L=17, N=3, G=3),
    Case(E=8, L=40, N=16, G=1, softplus=False, bias=False, reverse=True),
    Case(Bt=3, E=17, L=64, N=2, z=False),
]


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", list(SCAN_REL_ERR), ids=lambda d: str(d).removeprefix("torch."))
def test_forward_matches_float64_reference(impl, c, dtype):
    ins = make_inputs(c, dtype)
    out, last = run(ins, c, return_last_state=True)
    ref, ref_last = reference64(ins, c, return_last_state=True)
    tol = SCAN_REL_ERR[dtype][0]
    assert out.dtype == dtype and out.shape == (c.Bt, c.E, c.L)
    assert last.dtype == torch.float32 and last.shape == (c.Bt, c.E, c.N)
    assert rel_err(out, ref) <= tol, describe_mismatch(out, ref, tol)
    assert rel_err(last, ref_last) <= tol, describe_mismatch(last, ref_last, tol)


@given(
    Bt=st.integers(1, 3),
    E=st.integers(1, 20),
    L=st.sampled_from([1, 2, 3, 7, 13, 31, 64, 101]),
    N=st.sampled_from([1, 2, 5, 8, 16, 64]),
    grouped=st.booleans(),
    D=st.booleans(),
    z=st.booleans(),
    bias=st.booleans(),
    softplus=st.booleans(),
    reverse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_forward_property(Bt, E, L, N, grouped, D, z, bias, softplus, reverse, seed):
    G = next(g for g in (3, 2, 1) if E % g == 0) if grouped else 0
    c = Case(Bt, E, L, N, G, D, z, bias, softplus, reverse)
    ins = make_inputs(c, torch.float32, seed)
    out, last = run(ins, c, return_last_state=True)
    ref, ref_last = reference64(ins, c, return_last_state=True)
    assert rel_err(out, ref) <= F32_OUT, f"{c.id}: " + describe_mismatch(out, ref, F32_OUT)
    assert rel_err(last, ref_last) <= F32_OUT, f"{c.id}: " + describe_mismatch(
        last, ref_last, F32_OUT
    )


def test_reverse_equals_flipped_forward():
    c = Case(E=10, L=29, N=4)
    ins = make_inputs(c)
    rev = run(ins, dataclasses.replace(c, reverse=True))
    flipped = {
        k: (v.flip(-1) if k in ("u", "delta", "z", "B", "C") and v is not None else v)
        for k, v in ins.items()
    }
    fwd = run(flipped, c).flip(-1)
    torch.testing.assert_close(rev, fwd, **REVERSE_VS_FLIPPED)


@pytest.mark.skipif(not cpu.c_kernel_available(), reason="the C kernel is not built here")
def test_forward_is_the_same_on_any_number_of_threads():
    """The C forward hands its work items out in chunks to whichever thread is free: the
    output, bit for bit, must not depend on the thread count or on who ran what. 294 items of
    8 channels (150 of 16): more chunks than threads at every count here, odd sizes, a last
    partial block per batch row."""
    c = Case(Bt=6, E=389, L=37, N=5)
    ins = make_inputs(c)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = run(ins, c, return_last_state=True)
        for t in (2, 3, 5, 7):
            torch.set_num_threads(t)
            for _ in range(3):
                for got, ref in zip(run(ins, c, return_last_state=True), want, strict=True):
                    torch.testing.assert_close(got, ref, **EXACT, msg=f"{t} threads")
    finally:
        torch.set_num_threads(threads)


def test_non_contiguous_inputs():
    c = Case(E=12, L=21, N=4)
    ins = make_inputs(c)
    # the same values through transposed / strided storage
    strided = {
        k: (
            v.transpose(-1, -2).contiguous().transpose(-1, -2)
            if v is not None and v.dim() >= 2
            else v
        )
        for k, v in ins.items()
    }
    wide = torch.randn(c.Bt, c.E, 2 * c.L)
    wide[..., ::2] = ins["u"]
    strided["u"] = wide[..., ::2]
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    torch.testing.assert_close(run(strided, c), run(ins, c), rtol=0, atol=0)


def _column_slice(t: torch.Tensor) -> torch.Tensor:
    """The same values as a token-major view into a wider buffer (z = xz[..., E:], B = x_dbl
    [..., R:R+N]): neither dense nor contiguous."""
    tm = t.movedim(-1, 1)  # (Bt, L, ...)
    k = tm[0, 0].numel()
    wide = torch.randn(t.shape[0], t.shape[-1], 3 * k, dtype=t.dtype)
    wide[..., k : 2 * k] = tm.flatten(2)
    return wide[..., k : 2 * k].unflatten(-1, tm.shape[2:]).movedim(1, -1)


LAYOUTS = {
    "token_major": token_major,
    "column_slice": _column_slice,
    "every_other_step": lambda t: torch.stack([t, torch.randn_like(t)], -1)[..., 0],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    "c",
    [Case(E=16, L=19, N=4), Case(E=13, L=9, N=3, reverse=True), Case(E=12, L=11, N=2, G=3)],
    ids=lambda c: c.id,
)
def test_strided_layouts_read_in_place(impl, layout, c):
    """Every (Bt, E, L) / (Bt, G, N, L) input in another layout: the same forward and
    gradients as the float64 reference, and out / each gradient in its input's layout (what
    the fake kernels promise, so compiled graphs need no copies)."""
    ins = make_inputs(c)
    strided = {
        k: LAYOUTS[layout](v) if v is not None and k in ("u", "delta", "z", "B", "C") else v
        for k, v in ins.items()
    }
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    out, last = run(strided, c, return_last_state=True)
    ref, ref_last = reference64(ins, c, return_last_state=True)
    assert rel_err(out, ref) <= F32_OUT and rel_err(last, ref_last) <= F32_OUT
    assert out.stride() == torch.empty_like(strided["u"]).stride()
    g_out = LAYOUTS[layout](torch.randn(c.Bt, c.E, c.L, dtype=torch.float64))
    g_last = torch.randn(c.Bt, c.E, c.N, dtype=torch.float64)
    got = _grads(selective_scan, strided, c, g_out, g_last)
    want = _grads(selective_scan_reference, to64(ins), c, g_out, g_last)
    assert_grads_match(got, want)


def test_expanded_output_gradient():
    """``out.sum()`` hands the backward a stride-0 cotangent; it is read in place."""
    c = Case(E=9, L=10, N=3)
    ins = make_inputs(c)
    g_last = torch.zeros(c.Bt, c.E, c.N)
    got = _grads(selective_scan, ins, c, torch.ones(()).expand(c.Bt, c.E, c.L), g_last)
    want = _grads(selective_scan_reference, to64(ins), c, torch.ones(c.Bt, c.E, c.L), g_last)
    for name in got:
        assert rel_err(got[name], want[name]) <= F32_GRAD, name


def _one_channel(E: int, L: int) -> dict:
    """u = B = C = 1, A = D = 0: with delta_softplus, out[e, 0] = softplus(delta[e, 0])."""
    one = torch.ones(1, 1, 1, L, dtype=torch.float64)
    return dict(u=torch.ones(1, E, L), A=torch.zeros(E, 1), B=one.float(), C=one.float())


def test_softplus_of_delta_accurate_over_its_whole_range(impl):
    """The kernels' own softplus (polynomial log1p on the C path) against float64, every
    regime: exp(x) far below 1, the crossover, and x > 20 (the identity)."""
    x = torch.cat([torch.linspace(-60.0, 40.0, 4001), torch.tensor([-1e-7, 0.0, 1e-7, 20.0])])
    out = selective_scan(
        delta=x.reshape(1, -1, 1), **_one_channel(x.numel(), 1), delta_softplus=True
    )
    want = torch.nn.functional.softplus(x.double())
    rel = ((out.reshape(-1).double() - want).abs() / want).max().item()
    assert rel <= SOFTPLUS_MAX_REL, f"softplus max relative error {rel:.2e}"


def test_decay_exp_accurate_down_to_float32s_range(impl):
    """exp(delta * A) for every exponent in [-87, 0] (and a clamp below it): step 0 puts h = 1,
    step 1 has u = 0, so out[:, 1] = exp(delta_1 * A) exactly."""
    _check_decays()


def test_every_decay_form_of_the_build_is_as_accurate():
    """Each form the C kernel build has for exponents in [-126, 0] (exp2, exp2-table, and
    exp2-scalef on AVX-512; cpu.decay_forms) meets the decay bounds and the forward's float32
    tolerance, whichever the CPU's kind would choose at load; a form the build lacks is refused
    by name."""
    if not cpu.c_kernel_available():
        pytest.skip(f"C kernel unavailable: {cpu.c_kernel_error()}")
    lib = cpu._lib
    forms = cpu.decay_forms(lib)
    assert forms[0] in cpu.DECAY_FORMS and "exp2" in forms
    assert f"{forms[0]} decays" in cpu.kernel_info()["scan kernel"]
    with pytest.raises(ValueError, match="got 'exp3'"):
        cpu.use_decay_form(lib, "exp3")
    try:
        for form in forms:
            cpu.use_decay_form(lib, form)
            assert cpu.decay_forms(lib)[0] == form
            _check_decays()
            for c in CASES:
                ins = make_inputs(c, torch.float32)
                out, ref = run(ins, c), reference64(ins, c)
                why = describe_mismatch(out, ref, F32_OUT)
                assert rel_err(out, ref) <= F32_OUT, f"{form}: {why}"
    finally:
        cpu.use_decay_form(lib, forms[0])


def _check_decays():
    e = torch.cat([-torch.logspace(-8, math.log10(87.0), 3000), torch.tensor([0.0])])
    ins = _one_channel(e.numel(), 2)
    ins["u"][..., 1] = 0.0
    delta = torch.stack([torch.ones_like(e), -e], dim=-1).unsqueeze(0)  # A = -1: exponent e
    out = selective_scan(**{**ins, "A": -torch.ones(e.numel(), 1)}, delta=delta)
    e32 = (-delta[0, :, 1]).double()  # the exponent as float32 holds it
    got, want = out[0, :, 1].double(), torch.exp(e32)
    # float32 rounding of the exponent itself grows with |exponent| (tolerances.py says more)
    rel = (got - want).abs() / want
    bound = EXP_MAX_REL + EXP_MAX_REL_PER_UNIT * e32.abs()
    assert (rel <= bound).all(), f"exp max relative error {rel.max():.2e}"
    far_ins = {**_one_channel(2, 2), "A": -torch.ones(2, 1)}
    far_ins["u"][..., 1] = 0.0
    far = selective_scan(**far_ins, delta=torch.tensor([[[1.0, 200.0], [1.0, 1e4]]]))
    assert torch.isfinite(far).all() and (far[0, :, 1] >= 0).all() and (far[0, :, 1] < 1e-37).all()


def test_last_state_is_state_after_last_step_taken():
    c = Case(E=6, L=9, N=3, D=False, z=False)
    ins = make_inputs(c)
    for reverse in (False, True):
        cc = dataclasses.replace(c, reverse=reverse)
        _, last = run(ins, cc, return_last_state=True)
        _, ref = reference64(ins, cc, return_last_state=True)
        assert rel_err(last, ref) < SHORT_STATE_REL_ERR


@pytest.mark.slow
@pytest.mark.parametrize("L", [4099, 16384])
def test_long_sequences_stay_finite_and_accurate(L):
    tol = LONG_SCAN_REL_ERR
    c = Case(Bt=1, E=8, L=L, N=16, reverse=L == 16384)
    ins = make_inputs(c)
    out, last = run(ins, c, return_last_state=True)
    ref, ref_last = reference64(ins, c, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert rel_err(out, ref) <= tol, describe_mismatch(out, ref, tol)
    assert rel_err(last, ref_last) <= tol, describe_mismatch(last, ref_last, tol)


def test_torch_path_long_sequence_is_stable(monkeypatch):
    """The chunked torch path never forms exp of a long cumulative sum: large decays over many
    steps must not overflow to inf/NaN."""
    monkeypatch.setattr(cpu, "c_kernel_available", lambda: False)
    c = Case(Bt=1, E=4, L=1000, N=4, softplus=False, bias=False)
    ins = make_inputs(c)
    ins["delta"] = torch.full_like(ins["delta"], 3.0)  # exp(3 * A) per step: fast decay
    out, last = run(ins, c, return_last_state=True)
    ref, ref_last = reference64(ins, c, return_last_state=True)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= F32_OUT


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------

GRAD_CASES = [
    Case(),
    Case(Bt=1, E=9, L=1, N=3),
    Case(E=8, L=23, N=16, reverse=True),
    Case(E=6, L=19, N=4, G=2, softplus=False, bias=False),
    Case(E=5, L=11, N=2, D=False, z=False, bias=False),
]
GRAD_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def _grads(fn, ins: dict, c: Case, g_out, g_last):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items() if v is not None}
    full = {k: leaves.get(k) for k in ins}
    out, last = fn(**full, **flags(c), return_last_state=True)
    torch.autograd.backward((out, last), (g_out.to(out.dtype), g_last.to(last.dtype)))
    return {k: t.grad for k, t in leaves.items()}


@pytest.mark.parametrize("c", GRAD_CASES, ids=lambda c: c.id)
def test_gradients_match_autograd_through_reference(impl, c):
    ins = make_inputs(c)
    g_out = torch.randn(c.Bt, c.E, c.L, dtype=torch.float64)
    g_last = torch.randn(c.Bt, c.E, c.N, dtype=torch.float64)
    got = _grads(selective_scan, ins, c, g_out, g_last)
    ref = _grads(selective_scan_reference, to64(ins), c, g_out, g_last)
    assert set(got) == set(ref)
    assert all(got[name].dtype == ins[name].dtype for name in got)
    assert_grads_match(got, ref)


@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "raw_delta"])
def test_growing_state_takes_the_general_exp(impl, softplus):
    """Some A > 0 (a growing state, legal if unusual): positive exponents, which the C
    kernel routes past its exp for non-positive ones, forward and backward."""
    c = Case(E=8, L=12, N=4, softplus=softplus)
    ins = make_inputs(c)
    ins["A"] = ins["A"].clone()
    ins["A"][::3] = 0.3  # every third channel grows
    out = run(ins, c)
    assert rel_err(out, reference64(ins, c)) <= GROWING_STATE_REL_ERR
    g_out = torch.randn(c.Bt, c.E, c.L, dtype=torch.float64)
    g_last = torch.randn(c.Bt, c.E, c.N, dtype=torch.float64)
    got = _grads(selective_scan, ins, c, g_out, g_last)
    ref = _grads(selective_scan_reference, to64(ins), c, g_out, g_last)
    assert_grads_match(got, ref)


@given(
    E=st.integers(1, 12),
    L=st.sampled_from([1, 4, 17, 40]),
    N=st.sampled_from([1, 3, 16]),
    z=st.booleans(),
    softplus=st.booleans(),
    reverse=st.booleans(),
    seed=st.integers(0, 999),
)
def test_gradients_property(E, L, N, z, softplus, reverse, seed):
    c = Case(Bt=2, E=E, L=L, N=N, z=z, softplus=softplus, bias=softplus, reverse=reverse)
    ins = make_inputs(c, seed=seed)
    g_out = torch.randn(c.Bt, c.E, c.L, dtype=torch.float64)
    g_last = torch.randn(c.Bt, c.E, c.N, dtype=torch.float64)
    got = _grads(selective_scan, ins, c, g_out, g_last)
    ref = _grads(selective_scan_reference, to64(ins), c, g_out, g_last)
    assert_grads_match(got, ref, what=f"{c.id} ")


def test_only_out_used_gives_same_grads_as_zero_state_cotangent():
    c = Case(E=6, L=10, N=4)
    ins = make_inputs(c)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items() if v is not None}
    run(leaves, c).sum().backward()
    g1 = {k: v.grad.clone() for k, v in leaves.items()}
    for v in leaves.values():
        v.grad = None
    out, last = run(leaves, c, return_last_state=True)
    (out.sum() + 0 * last.sum()).backward()
    for k, v in leaves.items():
        torch.testing.assert_close(v.grad, g1[k])


# ---------------------------------------------------------------------------------------------
# registration and compilation
# ---------------------------------------------------------------------------------------------


def _op_args(c: Case, requires_grad=True):
    ins = make_inputs(c)
    B, C = ins["B"], ins["C"]
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    args = [ins["u"], ins["delta"], ins["A"], B, C, ins["D"], ins["z"], ins["delta_bias"]]
    args = [a.requires_grad_(requires_grad) if a is not None else None for a in args]
    return (*args, c.softplus, c.reverse)


@pytest.mark.parametrize(
    "c",
    [Case(E=8, L=7, N=4), Case(E=6, L=5, N=3, G=2, D=False, z=False, bias=False, reverse=True)],
    ids=lambda c: c.id,
)
def test_opcheck(c):
    torch.library.opcheck(torch.ops.vimc.selective_scan_fwd.default, _op_args(c))


def test_opcheck_token_major():
    """Fake and real kernels agree on output strides for token-major inputs."""
    args = list(_op_args(Case(E=8, L=7, N=4), requires_grad=False))
    for i in (0, 1, 3, 4, 6):  # u, delta, B, C, z
        args[i] = token_major(args[i]).requires_grad_(True)
    torch.library.opcheck(torch.ops.vimc.selective_scan_fwd.default, tuple(args))


def test_opcheck_backward_op():
    c = Case(E=8, L=7, N=4)
    args = _op_args(c, requires_grad=False)
    dout = torch.randn(c.Bt, c.E, c.L)
    dlast = torch.randn(c.Bt, c.E, c.N)
    torch.library.opcheck(
        torch.ops.vimc.selective_scan_bwd.default,
        (dout, dlast, *args),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


@pytest.mark.parametrize("layout", ["contiguous", "token_major"])
def test_compile_fullgraph_forward_and_backward(layout):
    c = Case(E=12, L=20, N=8)
    ins = make_inputs(c)
    if layout == "token_major":
        ins = {k: token_major(v) if k in ("u", "delta", "z", "B") else v for k, v in ins.items()}

    def bidirectional(u, delta, A, B, C, D, z, delta_bias):
        f = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
        b = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, reverse=True)
        return f + b

    assert_compiled_matches_eager(bidirectional, ins)


def test_export_keeps_one_node_per_scan():
    c = Case(E=8, L=9, N=4)
    ins = make_inputs(c)

    class M(torch.nn.Module):
        def forward(self, u, delta, A, B, C):
            return selective_scan(u, delta, A, B, C, delta_softplus=True, reverse=True)

    ep = torch.export.export(M(), (ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"]))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.vimc.selective_scan_fwd.default) == 1
    torch.testing.assert_close(
        ep.module()(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"]),
        M()(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"]),
    )


def test_eager_inference_calls_the_twin_without_autograd(monkeypatch):
    """Grad mode off, eager: vimc::selective_scan_fwd_nograd (no Python autograd kernel on the
    call); grad mode on, or under export even with grad off: vimc::selective_scan_fwd, the op
    every export route translates. The same numbers either way."""
    from vimc.ops.selective_scan import op

    ins = make_inputs(Case(E=8, L=9, N=4))
    args = (ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"])
    seen = []
    for name in ("_FWD", "_FWD_NOGRAD"):
        fn = getattr(op, name)
        monkeypatch.setattr(op, name, lambda *a, fn=fn, name=name: seen.append(name) or fn(*a))
    with torch.no_grad():
        off = selective_scan(*args, delta_softplus=True)
    on = selective_scan(*args, delta_softplus=True)
    assert seen == ["_FWD_NOGRAD", "_FWD"]
    torch.testing.assert_close(off, on, **EXACT)

    class M(torch.nn.Module):
        def forward(self, *xs):
            return selective_scan(*xs, delta_softplus=True)

    with torch.no_grad():
        ep = torch.export.export(M(), args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.vimc.selective_scan_fwd.default in targets


def test_nograd_twin_has_the_schema_and_fake_kernel_of_the_op():
    c = Case(E=8, L=7, N=4, G=1)
    ins = make_inputs(c)
    args = (*(ins[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")), True, False)
    twin = torch.ops.vimc.selective_scan_fwd_nograd.default
    torch.library.opcheck(twin, args, test_utils=("test_schema", "test_faketensor"))
    with torch.no_grad():
        for a, b in zip(twin(*args), torch.ops.vimc.selective_scan_fwd.default(*args)):
            torch.testing.assert_close(a, b, **EXACT)


def test_poisoned_outputs_are_nan():
    """The autouse fixture poisons kernel outputs: anything a kernel does not write stays NaN."""
    from vimc.ops.selective_scan._alloc import new_output

    assert torch.isnan(new_output((3,), torch.float32, "cpu")).all()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def _good():
    return make_inputs(Case(Bt=2, E=4, L=5, N=3))


@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda a: a.update(delta=a["delta"][..., :4]), ValueError, ["delta", "(Bt, E, L)"]),
        (lambda a: a.update(A=a["A"][:3]), ValueError, ["A", "(E, N)"]),
        (lambda a: a.update(B=a["B"][:1]), ValueError, ["B", "(Bt, N, L)"]),
        (lambda a: a.update(C=a["C"][..., :4]), ValueError, ["C"]),
        (lambda a: a.update(u=a["u"].to(torch.int64)), TypeError, ["u", "floating"]),
        (lambda a: a.update(D=a["D"][:2]), ValueError, ["D", "(E,)"]),
        (lambda a: a.update(z=a["z"][:1]), ValueError, ["z"]),
        (lambda a: a.update(delta_bias=a["delta_bias"].to(torch.int32)), TypeError, ["delta_bias"]),
        (lambda a: a.update(u=a["u"][0]), ValueError, ["u", "3 dimensions"]),
        (
            lambda a: a.update(A=torch.zeros(4, MAX_D_STATE + 1)),
            ValueError,
            ["N = A.shape[1]", f"[1, {MAX_D_STATE}]"],
        ),
        (lambda a: a.update(B=a["B"].reshape(2, 1, 3, 5).expand(2, 3, 3, 5)), ValueError, ["G"]),
        (lambda a: a.update(u=a["u"].to("meta")), ValueError, ["one device", "u on meta"]),
        (lambda a: a.update(B=[1, 2]), TypeError, ["B", "torch.Tensor"]),
    ],
)
def test_bad_input_is_named(mutate, exc, words):
    args = _good()
    mutate(args)
    with pytest.raises(exc) as info:
        selective_scan(**args)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.parametrize(
    "index, bad, words",
    [
        # 5-D B once overwrote the next field of the kernel's argument struct
        (3, lambda B: B.unsqueeze(1), ["B must have 4 dimensions (Bt, G, N, L)"]),
        (1, lambda d: d[..., :4], ["delta must have shape (Bt, E, L) like u = (2, 4, 5)"]),
        (4, lambda C: C[..., :4], ["C must have shape (Bt, G, N, L) = (2, 1, 3, 5)"]),
        (2, lambda A: A[:3], ["A must have shape (E, N) with E = 4"]),
        (5, lambda D: D[:2], ["D must have shape (E,) = (4,)"]),
        (6, lambda z: z[:1], ["z must have shape"]),
        (3, lambda B: B.to(torch.int32), ["B must be a floating tensor"]),
    ],
    ids=["B-5d", "delta-short", "C-short", "A-rows", "D-short", "z-batch", "B-int"],
)
def test_op_called_directly_checks_shapes(index, bad, words):
    """torch.ops.vimc.* skip selective_scan's validation; a wrong shape must still be a clear
    error from the kernel's own check (the same validator), never an out-of-bounds read."""
    if not cpu.c_kernel_available():
        pytest.skip(f"no C compiler for the fused CPU kernel: {cpu.c_kernel_error()}")
    args = list(_op_args(Case(Bt=2, E=4, L=5, N=3), requires_grad=False))  # _good()'s shapes
    args[index] = bad(args[index])
    with pytest.raises((ValueError, TypeError)) as info:
        torch.ops.vimc.selective_scan_fwd(*args)
    for w in ["vimc scan kernel: ", *words]:
        assert w in str(info.value), f"{w!r} not in {info.value}"


@pytest.mark.parametrize(
    "name, shape, words",
    [
        ("dout", (2, 4, 4), ["dout must have shape (Bt, E, L) like u = (2, 4, 5)"]),
        ("dlast", (2, 4, 2), ["dlast must have shape (Bt, E, N) = (2, 4, 3)"]),
    ],
)
def test_backward_op_called_directly_checks_cotangents(name, shape, words):
    """The backward op's cotangents size the C kernel's loops too: checked the same way."""
    if not cpu.c_kernel_available():
        pytest.skip(f"no C compiler for the fused CPU kernel: {cpu.c_kernel_error()}")
    c = Case(Bt=2, E=4, L=5, N=3)
    cot = dict(dout=torch.randn(c.Bt, c.E, c.L), dlast=torch.randn(c.Bt, c.E, c.N))
    cot[name] = torch.randn(shape)
    with pytest.raises(ValueError) as info:
        torch.ops.vimc.selective_scan_bwd(cot["dout"], cot["dlast"], *_op_args(c, False))
    for w in ["vimc scan kernel: ", *words]:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def test_reference_scan_of_nothing_has_zero_gradients():
    """The oracle itself on an empty sequence (L = 0) without D or z: outputs connected to
    autograd, so every input gets a zero gradient (the fuzz loop compares against it)."""
    ins = {
        "u": torch.randn(2, 3, 0),
        "delta": torch.randn(2, 3, 0),
        "A": -torch.rand(3, 4),
        "B": torch.randn(2, 4, 0),
        "C": torch.randn(2, 4, 0),
    }
    ins = {k: v.requires_grad_(True) for k, v in ins.items()}
    out, last = selective_scan_reference(**ins, return_last_state=True)
    assert out.shape == (2, 3, 0) and last.shape == (2, 3, 4)
    (out.sum() + last.sum()).backward()
    for k, v in ins.items():
        assert v.grad is not None and v.grad.shape == v.shape and not v.grad.any(), k
