"""mamba_ssm's scan test, widened to its full grid, against vimc's selective_scan on CPU.

The peer's own test of its CUDA scan holds the forward and every gradient to per-element
bounds, |got - want| <= atol + rtol * |want|, against float32 autograd through the per-step
recurrence on the same inputs. Here it is widened to the whole grid (issue 19, part 4):
float32, L up to 4096, every combination of D, z, delta_bias, softplus and a last-state
cotangent, B and C in 1 or 2 groups, and bfloat16 at L = 1024. The inputs have long memory:
A in (-0.5, 0) and delta + bias in (0, 1), so the decays exp(delta * A) sit close to 1 and
an error the kernel makes in each decay compounds over hundreds of steps.

The peer's reference is float32 too, and where a result is a sum of large terms that cancels
to a small one (dA at L = 4096, a long memory), float32 autograd itself misses the float64
result by more than the bound. So an element beyond the bound fails only where vimc is also
further from the float64 result than float32 autograd is: there the kernel, not the
reference, is off. The float64 reference is computed only for a case with such an element.

The peer's bounds are loose enough to let a kernel lose digits, so a second test measures
against float64: vimc's gradients must be about as accurate as plain float32 autograd through
the recurrence (tests/tolerances.py: PEER_GRID, GRAD_VS_FP32_AUTOGRAD;
benchmarks/results/grad_accuracy-*.md has the figures).

The float32 reference is autograd through the per-step recurrence, 8 variants at a time: one
run carries every combination of D, delta_bias and last state on its own block of channels
(and its own B, C groups), with D, delta_bias or the last state's cotangent set to 0 where a
variant has none. Adding those zeros changes no float32 result, so each block is that
variant's own reference, and the grid needs an eighth of the reference runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from vimc.ops import selective_scan, selective_scan_reference
from vimc.ops.selective_scan import cpu
from vimc.ops.selective_scan.reference import softplus

from ..tolerances import GRAD_VS_FP32_AUTOGRAD, PEER_GRID
from ._scan_cases import rel_err

Bt, E, N = 2, 16, 16  # per variant; E / G channels per group: one or two blocks of 8 lanes
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# the variants one reference run carries, as (D, delta_bias, last state)
VARIANTS = list(itertools.product((False, True), repeat=3))


@pytest.fixture(autouse=True)
def _c_kernel():
    if not cpu.c_kernel_available():
        pytest.skip(f"no C compiler for the fused CPU kernel: {cpu.c_kernel_error()}")


# ---------------------------------------------------------------------------------------------
# the float32 reference
# ---------------------------------------------------------------------------------------------


def stepwise_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """selective_scan_reference's arithmetic, operation for operation, with the time steps
    taken by ``unbind``: autograd then goes back through L steps in O(L) time, where indexing
    a step (``x[..., t]``) makes every step's backward write a full-size gradient, O(L^2).
    B, C grouped (Bt, G, N, L). -> (out in u's dtype, last state in the compute dtype)."""
    f64 = any(t is not None and t.dtype == torch.float64 for t in (u, delta, A, B, C, D, z))
    ct = torch.float64 if f64 else torch.float32
    u_, dt = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = softplus(dt)
    A_ = A.to(ct)
    B_ = B.to(ct).repeat_interleave(u.shape[1] // B.shape[1], dim=1)  # (Bt, E, N, L)
    C_ = C.to(ct).repeat_interleave(u.shape[1] // C.shape[1], dim=1)
    h = u_.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u_.unbind(-1), B_.unbind(-1), C_.unbind(-1)):
        h = torch.exp(dt_t[:, :, None] * A_) * h + (dt_t * u_t)[:, :, None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    out = y if D is None else y + u_ * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    return out.to(u.dtype), h


@contextlib.contextmanager
def one_thread():
    """The per-step reference works on small tensors, which one thread runs fastest (a thread
    pool spins, on a loaded machine most of all)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def forward_backward(fn, ins: dict, dout, dlast, softplus_: bool) -> dict:
    """``fn`` (the two functions above or selective_scan) on leaf copies of ``ins``, then one
    backward with cotangents ``dout`` and ``dlast`` (None: the last state is not asked for)
    -> {"out", "last_state" (with dlast), "d" + each present input's name: its gradient}."""
    leaves = {
        k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in ins.items()
    }
    args = [leaves[k] for k in ARGS]
    if fn is selective_scan:
        res = fn(*args, delta_softplus=softplus_, return_last_state=dlast is not None)
        out, last = res if dlast is not None else (res, None)
    else:
        out, last = fn(*args, delta_softplus=softplus_)
    pairs = [(out, dout)] + ([(last, dlast)] if dlast is not None else [])
    torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    got = {"out": out.detach()} | ({"last_state": last.detach()} if dlast is not None else {})
    return got | {"d" + k: v.grad for k, v in leaves.items() if v is not None}


def test_stepwise_is_the_reference():
    """stepwise_reference gives selective_scan_reference's results and gradients bit for bit,
    float32 and bfloat16 inputs, every option on."""
    for dtype in (torch.float32, torch.bfloat16):
        ins, dout, dlast = draw(L=37, G=2, z=True, dtype=dtype, variants=1)
        ref = forward_backward(stepwise_reference, ins, dout, dlast, True)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items()}
        out, last = selective_scan_reference(**leaves, delta_softplus=True, return_last_state=True)
        torch.autograd.backward([out, last], [dout, dlast])
        want = {"out": out, "last_state": last} | {"d" + k: v.grad for k, v in leaves.items()}
        for k in want:
            assert torch.equal(ref[k], want[k]), f"{dtype} {k}"


# ---------------------------------------------------------------------------------------------
# inputs: one family of variants per (L, G, z, dtype)
# ---------------------------------------------------------------------------------------------


def draw(L: int, G: int, z: bool, dtype, variants: int = len(VARIANTS)):
    """Inputs for ``variants`` blocks of E channels and G groups each, long memory (A in
    (-0.5, 0), delta and delta_bias in (0, 0.5)), u, B, C, D, z and the cotangents standard
    normal; u, delta, B, C, z and dout in ``dtype``, the rest float32 as in a model.
    -> (inputs by name, dout, dlast)."""
    g = torch.Generator().manual_seed(1000 * L + 10 * G + z)
    Ev, Gv = variants * E, variants * G

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt)

    def rand(*shape, scale, dt=dtype):
        return (scale * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dt)

    f32 = torch.float32
    ins = dict(
        u=randn(Bt, Ev, L),
        delta=rand(Bt, Ev, L, scale=0.5),
        A=-rand(Ev, N, scale=0.5, dt=f32),
        B=randn(Bt, Gv, N, L),
        C=randn(Bt, Gv, N, L),
        D=randn(Ev, dt=f32),
        z=randn(Bt, Ev, L) if z else None,
        delta_bias=rand(Ev, scale=0.5, dt=f32),
    )
    return ins, randn(Bt, Ev, L), randn(Bt, Ev, N, dt=f32)


# the grid runs a family's 8 variants one after another: a family is drawn and referenced once
@functools.lru_cache(maxsize=2)
def family(L: int, G: int, z: bool, dtype) -> tuple:
    return draw(L, G, z, dtype)


@functools.lru_cache(maxsize=3)
def reference(L: int, G: int, softplus_: bool, z: bool, dtype, exact: bool = False) -> dict:
    """A family's reference results for all VARIANTS at once (see the module docstring):
    float32 autograd through the per-step recurrence, or with ``exact`` the same in float64."""
    ins, dout, dlast = family(L, G, z, dtype)
    cast = torch.Tensor.double if exact else torch.Tensor.clone
    ref_ins = {k: None if v is None else cast(v) for k, v in ins.items()}
    ref_dlast = cast(dlast)
    for k, (has_D, has_bias, has_last) in enumerate(VARIANTS):
        ch = slice(k * E, (k + 1) * E)
        if not has_D:
            ref_ins["D"][ch] = 0.0
        if not has_bias:
            ref_ins["delta_bias"][ch] = 0.0
        if not has_last:
            ref_dlast[:, ch] = 0.0
    with one_thread():
        return forward_backward(stepwise_reference, ref_ins, cast(dout), ref_dlast, softplus_)


def _take(name: str, t: torch.Tensor, k: int, G: int) -> torch.Tensor:
    """Variant k's block of a family-wide tensor, named as an input (``u``), its gradient
    (``du``), ``out`` or ``last_state``."""
    base = name[1:] if name[1:] in ARGS else name  # "ddelta" -> "delta"; "delta" stays
    if base in ("B", "C"):  # (Bt, G, N, L): the variant's groups
        return t[:, k * G : (k + 1) * G]
    if base in ("A", "D", "delta_bias"):  # (E, ...)
        return t[k * E : (k + 1) * E]
    return t[:, k * E : (k + 1) * E]  # (Bt, E, ...)


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GridCase:
    L: int
    G: int
    softplus: bool
    z: bool
    D: bool
    bias: bool
    last: bool
    dtype: torch.dtype = torch.float32

    @property
    def id(self) -> str:
        on = [f for f, v in (("sp", self.softplus), ("z", self.z), ("D", self.D)) if v]
        on += [f for f, v in (("bias", self.bias), ("last", self.last)) if v]
        dt = "" if self.dtype == torch.float32 else "-bf16"
        return f"L{self.L}-G{self.G}" + "".join("-" + f for f in on) + dt


def grid(Ls, dtype=torch.float32, Gs=(1, 2), softplus=(False, True), zs=(False, True)):
    """Every case of the families (L, G, softplus, z), variants innermost (they share a
    reference run)."""
    return [
        GridCase(L, G, sp, z, *variant, dtype)
        for L, G, sp, z in itertools.product(Ls, Gs, softplus, zs)
        for variant in VARIANTS
    ]


def check_case(c: GridCase) -> None:
    ins, dout, dlast = family(c.L, c.G, c.z, c.dtype)
    ref = reference(c.L, c.G, c.softplus, c.z, c.dtype)
    k = VARIANTS.index((c.D, c.bias, c.last))
    mine = {n: None if v is None else _take(n, v, k, c.G).contiguous() for n, v in ins.items()}
    if not c.D:
        mine["D"] = None
    if not c.bias:
        mine["delta_bias"] = None
    got = forward_backward(
        selective_scan,
        mine,
        _take("out", dout, k, c.G).contiguous(),
        _take("last_state", dlast, k, c.G).contiguous() if c.last else None,
        c.softplus,
    )
    for name, value in got.items():
        rtol, atol = PEER_GRID[c.dtype][name]
        value, want = value.double(), _take(name, ref[name], k, c.G).double()
        far = ~((value - want).abs() <= atol + rtol * want.abs())  # NaN counts as far
        if not far.any():
            continue
        exact = _take(name, reference(c.L, c.G, c.softplus, c.z, c.dtype, exact=True)[name], k, c.G)
        worse = far & ~((value - exact).abs() <= (want - exact).abs())
        if worse.any():
            i = tuple(worse.nonzero()[0].tolist())
            raise AssertionError(
                f"{c.id} {name}: {int(worse.sum())} of {value.numel()} elements beyond rtol "
                f"{rtol:g} / atol {atol:g} of float32 autograd and further than it from float64; "
                f"first at {i}: vimc {value[i].item():.7g}, float32 autograd "
                f"{want[i].item():.7g}, float64 {exact[i].item():.7g}"
            )


FAST = grid([128])
SLOW = grid([784, 4096])
BF16 = grid([1024], torch.bfloat16, Gs=(2,), softplus=(True,), zs=(True,))


@pytest.mark.parametrize("c", FAST + BF16, ids=lambda c: c.id)
def test_peer_grid(c):
    check_case(c)


@pytest.mark.slow
@pytest.mark.parametrize("c", SLOW, ids=lambda c: c.id)
def test_peer_grid_long(c):
    check_case(c)


# ---------------------------------------------------------------------------------------------
# against float64: about as close as float32 autograd
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "L, G, has_D, has_z, has_bias",
    [
        # the two configurations issue 19 measured (its table), softplus on in both
        (784, 2, False, True, True),
        pytest.param(4096, 1, True, False, False, marks=pytest.mark.slow),
    ],
    ids=["L784-G2-z-bias-sp", "L4096-D-sp"],
)
def test_gradients_as_accurate_as_fp32_autograd(L, G, has_D, has_z, has_bias):
    """Each gradient's relative L2 error against float64 at most GRAD_VS_FP32_AUTOGRAD times
    that of float32 autograd through the per-step recurrence, both on the same float32
    inputs."""
    ins, dout, dlast = draw(L, G, has_z, torch.float32, variants=1)
    ins["D"] = ins["D"] if has_D else None
    ins["delta_bias"] = ins["delta_bias"] if has_bias else None
    to64 = {k: None if v is None else v.double() for k, v in ins.items()}
    with one_thread():
        exact = forward_backward(stepwise_reference, to64, dout.double(), dlast.double(), True)
        fp32 = forward_backward(stepwise_reference, ins, dout, dlast, True)
    got = forward_backward(selective_scan, ins, dout, dlast, True)
    report = []
    for name in (n for n in got if n.startswith("d")):
        mine, theirs = rel_err(got[name], exact[name]), rel_err(fp32[name], exact[name])
        report.append(f"{name}: {mine:.1e} vs {theirs:.1e}")
        assert mine <= GRAD_VS_FP32_AUTOGRAD * theirs, "; ".join(report)
