"""vimc.ops.conv1d_silu_pair (the op ``vimc::conv1d_silu_pair_fwd``, the fused C kernel on CPU
in float32) against the shifted form it replaces in eager inference, on float64 copies."""

from __future__ import annotations

import pytest
import torch
from vimc.ops import anticausal_conv1d, causal_conv1d, conv1d_silu_pair, poison_outputs
from vimc.ops.selective_scan import cpu

from ..tolerances import CONV_SILU_PAIR_REL_ERR
from ._scan_cases import rel_err

OP = torch.ops.vimc.conv1d_silu_pair_fwd.default


def _args(B, L, E, K, bias=True, seed=0, strided=True):
    g = torch.Generator().manual_seed(seed)
    # x as a mixer passes it: the first half of in_proj's (B, L, 2E) output
    xz = torch.randn(B, L, 2 * E if strided else E, generator=g)
    x = xz[..., :E]
    w, wb = (torch.randn(E, 1, K, generator=g) * 0.5 for _ in range(2))
    b, bb = (torch.randn(E, generator=g) if bias else None for _ in range(2))
    return x, w, b, wb, bb


def _reference(x, w, b, wb, bb):
    d = [None if t is None else t.double() for t in (x, w, b, wb, bb)]
    return causal_conv1d(d[0], d[1], d[2], silu=True), anticausal_conv1d(
        d[0], d[3], d[4], silu=True
    )


needs_c = pytest.mark.skipif(not cpu.c_kernel_available(), reason="no C kernel here")


@needs_c
@pytest.mark.parametrize(
    "B, L, E, K",
    [(1, 197, 384, 4), (2, 9, 40, 4), (3, 2, 17, 4), (1, 1, 16, 3), (2, 5, 8, 2), (1, 7, 33, 1)],
)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_pair_matches_the_shifted_form(B, L, E, K, bias):
    """Vim-Ti's layer, channel counts off the vector width (tails), sequences shorter than the
    kernel, K from 1 to 4, with and without bias; every output element written (poisoned)."""
    args = _args(B, L, E, K, bias)
    with torch.no_grad(), poison_outputs():
        got = conv1d_silu_pair(*args)
    for g, want in zip(got, _reference(*args)):
        assert g.shape == (B, L, E) and g.dtype == torch.float32 and g.is_contiguous()
        assert rel_err(g, want) <= CONV_SILU_PAIR_REL_ERR


@needs_c
def test_fused_pair_takes_any_x_layout():
    """A channel-major x (stride 1 along L) and a contiguous one give what the strided one does."""
    x, w, b, wb, bb = _args(2, 11, 24, 4)
    with torch.no_grad():
        want = conv1d_silu_pair(x, w, b, wb, bb)
        for other in (x.mT.contiguous().mT, x.contiguous()):
            for g, h in zip(conv1d_silu_pair(other, w, b, wb, bb), want):
                torch.testing.assert_close(g, h, rtol=0, atol=0)


def test_grad_mode_and_other_dtypes_take_the_shifted_form():
    """With grad mode on the pair is the shifted form (autograd differentiates it); float64 and
    float16 inputs run the shifted form inside the op."""
    x, w, b, wb, bb = _args(2, 6, 8, 4)
    w = w.requires_grad_(True)
    u, ub = conv1d_silu_pair(x, w, b, wb, bb)
    assert u.grad_fn is not None
    (u.sum() + ub.sum()).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    with torch.no_grad():
        for dtype in (torch.float64, torch.float16):
            got = OP(*(None if t is None else t.to(dtype) for t in (x, w, b, wb, bb)))
            want = _reference(x, w, b, wb, bb)
            assert got[0].dtype == dtype
            tol = 1e-12 if dtype == torch.float64 else 2e-3
            for g, h in zip(got, want):
                torch.testing.assert_close(g.double(), h, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda a: (a[0][0], *a[1:]), "x must be a \\(B, L, E\\) tensor"),
        (lambda a: (a[0], a[1][:4], *a[2:]), "weight must be \\(E, 1, K\\)"),
        (lambda a: (*a[:3], a[3][..., :2], a[4]), "weight_b must have weight's shape"),
        (lambda a: (*a[:2], a[2][:3], *a[3:]), "bias must be None or \\(8,\\)"),
        (lambda a: (*a[:4], a[4].double()[None]), "bias_b must be None or \\(8,\\)"),
        (lambda a: (a[0], a[1][..., :0], a[2], a[3][..., :0], a[4]), "at least one tap"),
        (lambda a: (a[0], a[1].to("meta"), *a[2:]), "on x's device"),
        (lambda a: (a[0].int(), *a[1:]), "x must be a floating-point tensor, got torch.int32"),
        (lambda a: (*a[:4], a[4].bool()), "bias_b must be a floating-point tensor"),
    ],
)
def test_bad_arguments_are_named(bad, match):
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        OP(*bad(_args(2, 6, 8, 4)))


@needs_c
def test_compiles_whole_and_the_fake_kernel_agrees():
    """The op in a fullgraph torch.compile (its fake kernel gives the shapes), and its result
    there is the eager op's."""
    args = _args(2, 9, 40, 4)
    with torch.no_grad():
        want = OP(*args)
        got = torch.compile(lambda *a: OP(*a), fullgraph=True)(*args)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=0, atol=0)


@needs_c
def test_a_checked_layout_skips_the_checks_after_its_first_call(monkeypatch):
    """The second call with one layout goes straight to the kernel (no _check_pair) and gives
    the first call's numbers; another layout, or a bypassed() block, takes the full path."""
    from vimc.ops.selective_scan import conv, cpu_plans

    checks, check = [], conv._check_pair

    def spy(*args):
        checks.append(args[0].shape)
        return check(*args)

    monkeypatch.setattr(conv, "_check_pair", spy)
    monkeypatch.setattr(conv, "_CHECKED", cpu_plans.CheckedLayouts())
    args = _args(2, 9, 40, 4, seed=5)
    with torch.no_grad(), poison_outputs():
        first = OP(*args)
        assert len(checks) == 1
        second = OP(*args)
        assert len(checks) == 1
        for a, b in zip(first, second):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        OP(args[0].contiguous(), *args[1:])  # other strides: checked anew
        assert len(checks) == 2
        with cpu_plans.bypassed():
            OP(*args)
        assert len(checks) == 3


@needs_c
def test_a_checked_layout_still_checks_the_storage():
    """A storage shrunk under a view of a checked layout is refused, named, not read past."""
    x, w, b, wb, bb = _args(2, 9, 40, 4, seed=6)
    x = x.clone()  # its own storage
    with torch.no_grad():
        OP(x, w, b, wb, bb)
        x.untyped_storage().resize_(16)
        with pytest.raises(ValueError, match="x reaches past the end of its storage"):
            OP(x, w, b, wb, bb)
