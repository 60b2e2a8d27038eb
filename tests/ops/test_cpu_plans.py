"""cpu_plans: the fused CPU forward ops' calls after the first of each argument layout take the
packed words of a plan instead of the full checks and packing. A plan must give what the full
path gives, to the bit, on every later call's own tensors; must never skip a check whose
answer can differ between calls of one layout (the storage size); and must leave to the full
path whatever it does not cover."""

from __future__ import annotations

import array

import pytest
import torch
from vimc.ops.selective_scan import _alloc, bidirectional, cpu, cpu_plans
from vimc.ops.selective_scan import op as op_module
from vimc.ops.selective_scan.op import _grouped

from ..tolerances import EXACT
from ._scan_cases import Case, make_pair
from .test_delta_proj import make_projected

pytestmark = pytest.mark.skipif(
    not cpu.c_kernel_available(), reason="plans serve the fused C kernel, unavailable here"
)

FWD_OP = torch.ops.vimc.selective_scan_fwd_nograd.default
PAIR_OP = torch.ops.vimc.selective_scan_bidirectional_fwd_nograd.default
PROJ_OP = torch.ops.vimc.selective_scan_bidirectional_proj_fwd.default
ORDER = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def single_args(ins: dict, softplus: bool = True, reverse: bool = False) -> tuple:
    """One direction of a pair, as selective_scan_fwd takes it."""
    a = pair_args(ins, softplus)
    return (*a[:6], a[14], a[6], softplus, reverse)


def pair_args(ins: dict, softplus: bool = True) -> tuple:
    fwd = [ins[k] for k in ORDER]
    bwd = [ins[k + "_b"] for k in ORDER]
    for d in (fwd, bwd):
        d[3], d[4] = _grouped(d[3]), _grouped(d[4])
    return (*fwd, *bwd, ins["z"], softplus)


def proj_args(ins: dict, softplus: bool = True) -> tuple:
    a = list(pair_args(ins, softplus))
    return (*a[:7], ins["delta_proj"], *a[7:14], ins["delta_proj_b"], *a[14:])


def full_path(op, args: tuple):
    """The op's full path (checks, conversions, packing) on ``args``: no plan serves it."""
    with cpu_plans.bypassed():
        return op(*args)


def fresh(args: tuple) -> tuple:
    """Other values in new storage, every layout kept (strides, offsets)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            base = torch.empty(a.untyped_storage().nbytes() // 4).uniform_(-1, 1)
            a = base.as_strided(a.shape, a.stride(), a.storage_offset())
            if a.dim() == 2:  # A (E, N) negative, as a decay needs (and dt_proj's (E, R))
                a = -a.abs()
        out.append(a)
    return tuple(out)


def as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


PLANS = {FWD_OP: op_module._FWD_PLANS, PAIR_OP: bidirectional._PAIR_PLANS,
         PROJ_OP: bidirectional._PROJ_PLANS}  # fmt: skip
CASES = [
    Case(E=12, L=33, N=5),
    Case(Bt=1, E=40, L=21, N=4, G=2),
    Case(E=9, L=13, N=6, D=False, z=False, bias=False),
]


@pytest.mark.parametrize("layout", ["contiguous", "token_major"])
@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize(
    "op, make",
    [
        (FWD_OP, single_args),
        (FWD_OP, lambda ins, sp: single_args(ins, sp, reverse=True)),
        (PAIR_OP, pair_args),
        (PROJ_OP, proj_args),
    ],
    ids=["single", "single-reverse", "pair", "proj"],
)
def test_a_plan_gives_the_full_paths_answer_on_each_calls_own_tensors(op, make, c, layout):
    ins = make_projected(c, 6, layout) if op is PROJ_OP else make_pair(c, layout=layout)
    first = make(ins, c.softplus)
    with _alloc.poison_outputs(), torch.no_grad():
        key = cpu_plans.signature(first)
        for args in (first, fresh(first), fresh(first)):  # the plan made, then reused twice
            got, want = as_tuple(op(*args)), as_tuple(full_path(op, args))
            for g, w in zip(got, want):
                assert g.stride() == w.stride()
                torch.testing.assert_close(g, w, **EXACT)  # no NaN left by the poison either
    assert PLANS[op].plans.get(key) is not None  # a plan served these calls


def test_a_storage_shrunk_after_the_plan_was_made_is_still_refused():
    ins = make_projected(Case(E=12, L=33, N=5), 6)
    args = proj_args(ins)
    with torch.no_grad():
        PROJ_OP(*args)  # makes the plan
        again = fresh(args)
        u = again[0]
        u.untyped_storage().resize_(u.untyped_storage().nbytes() // 2)
        with pytest.raises(ValueError, match="u reaches past the end of its storage"):
            PROJ_OP(*again)


@pytest.mark.parametrize("op, make", [(FWD_OP, single_args), (PAIR_OP, pair_args)])
def test_no_plan_serves_a_call_once_the_c_kernel_is_off(op, make, monkeypatch):
    """The torch path runs when the C kernel is unavailable, however many plans exist: the
    ops' tests switch the kernel off to test that path."""
    args = make(make_pair(Case(E=12, L=33, N=5)), True)
    with torch.no_grad():
        op(*args)  # a plan made
        torch_calls = []
        real = cpu._fwd_torch
        monkeypatch.setattr(cpu, "c_kernel_available", lambda: False)
        monkeypatch.setattr(
            cpu, "_fwd_torch", lambda *a, **k: torch_calls.append(1) or real(*a, **k)
        )
        op(*args)
    assert torch_calls


def test_bad_input_after_a_plan_gets_the_full_checks_error():
    ins = make_pair(Case(E=12, L=33, N=5))
    args = pair_args(ins)
    with torch.no_grad():
        PAIR_OP(*args)
        bad = list(fresh(args))
        bad[8] = bad[8][..., :-1]  # delta_b one step short
        with pytest.raises(ValueError, match="delta and delta_b must have equal shapes"):
            PAIR_OP(*bad)


def test_another_thread_count_gets_its_own_plan():
    ins = make_pair(Case(Bt=4, E=40, L=21, N=4))
    args = pair_args(ins)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            keys = set()
            for n in (1, 2):
                torch.set_num_threads(n)
                keys.add(cpu_plans.signature(args))
                got, want = as_tuple(PAIR_OP(*args)), as_tuple(full_path(PAIR_OP, args))
                for g, w in zip(got, want):
                    torch.testing.assert_close(g, w, **EXACT)
    finally:
        torch.set_num_threads(threads)
    assert len(keys) == 2 and all(bidirectional._PAIR_PLANS.plans.get(k) for k in keys)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda a: (a[0].to(torch.bfloat16), *a[1:]), id="bf16-u"),
        pytest.param(lambda a: (*a[:2], a[2].t().contiguous().t(), *a[3:]), id="strided-A"),
        pytest.param(lambda a: (a[0][:, :, :0], a[1][:, :, :0], *a[2:3],
                                *(t[..., :0] for t in a[3:5]), *a[5:7],
                                a[7][:, :, :0], a[8][:, :, :0], *a[9:10],
                                *(t[..., :0] for t in a[10:12]), *a[12:14],
                                a[14][:, :, :0], a[15]), id="empty"),
    ],
)  # fmt: skip
def test_what_a_plan_does_not_cover_takes_the_full_path(change):
    args = change(pair_args(make_pair(Case(E=12, L=33, N=5))))
    with torch.no_grad():
        got, want = as_tuple(PAIR_OP(*args)), as_tuple(full_path(PAIR_OP, args))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **EXACT)
    key = cpu_plans.signature(args)
    assert key in bidirectional._PAIR_PLANS.plans and bidirectional._PAIR_PLANS.plans[key] is None


def test_a_first_argument_that_is_no_tensor_gets_the_checks_error():
    """The kernels' Python functions are called directly too (the token-major op's kernel
    calls the pair's): a u that is no tensor is named by the checks, not an AttributeError."""
    args = list(pair_args(make_pair(Case(E=12, L=33, N=5))))
    args[0] = None
    with pytest.raises(TypeError, match="u must be a torch.Tensor"):
        bidirectional.selective_scan_bidirectional_fwd(*args)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_signatures_tell_layouts_apart():
    # torch reports strides (0, 0) for this sparse tensor, as for a dense expanded one
    sparse, expanded = torch.eye(3).to_sparse(), torch.ones(1).expand(3, 3)
    assert cpu_plans.signature((sparse,)) != cpu_plans.signature((expanded,))
    with pytest.raises(TypeError, match="delta_b must be a dense"):
        args = list(pair_args(make_pair(Case(E=3, L=3, N=2))))
        PAIR_OP(*args)
        args[8] = sparse.unsqueeze(0)
        PAIR_OP(*args)
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    assert cpu_plans.signature((torch.ones(3), nested)) is None
    assert cpu_plans.signature((torch.ones(3), [1, 2])) is None
    assert cpu_plans.signature((torch.ones(3), None, True)) is not None


def test_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(cpu_plans, "_MAX_PLANS", 3)
    planned = cpu_plans.PlannedOp(bidirectional._PAIR_PLANS.spec)
    with torch.no_grad():
        for L in range(5, 12):
            args = pair_args(make_pair(Case(E=12, L=L, N=5)))
            out = planned.run(args)
            torch.testing.assert_close(out[0], full_path(PAIR_OP, args)[0], **EXACT)
            assert len(planned.plans) <= 3


def test_a_pointer_the_plan_would_not_refill_is_refused():
    words = array.array("q", [0] * cpu._WORDS)
    words[cpu._AT["dout"]] = 1234  # set by a packing, unknown to the plan
    with pytest.raises(AssertionError, match="unplanned"):
        cpu_plans._template(words, {cpu._AT["u"]: 0})
    words[cpu._AT["dout"]], words[cpu._AT["out"]] = 0, 5678  # out: every call fills it in
    assert cpu_plans._template(words, {cpu._AT["u"]: 0}).words[cpu._AT["out"]] == 0
