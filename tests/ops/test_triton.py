"""The Triton selective-scan kernels (ops/selective_scan/triton.py) against the float64 reference.

On a machine without an NVIDIA GPU conftest.py sets TRITON_INTERPRET=1 and the kernels run on
CPU tensors through Triton's interpreter, which is slow: every case here is tiny (Bt <= 2,
E <= 16, L <= 40), and the backward runs with a small chunk so that L = 33 crosses several chunk
boundaries. With a GPU the same cases run on CUDA.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from vimc.ops.selective_scan import triton as tri  # noqa: E402
from vimc.ops.selective_scan.reference import selective_scan_reference  # noqa: E402

pytestmark = pytest.mark.triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if _INTERPRET:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("neither a CUDA device nor TRITON_INTERPRET=1", allow_module_level=True)

TEST_CHUNK = 8  # backward chunk for the tests: L = 33 spans 5 chunks, the last one of 1 step

# dtype of u, delta, z, B, C -> (forward rel tol, gradient rel tol). A, D, delta_bias stay
# float32 as in Mamba. Low-precision errors come from rounding out / du / dB... on store.
TOLERANCES = {
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (1e-3, 1e-3),
}
_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@dataclass(frozen=True)
class Case:
    Bt: int
    E: int
    L: int
    N: int
    G: int = 1
    reverse: bool = False
    softplus: bool = False
    D: bool = False
    z: bool = False
    bias: bool = False
    dlast: bool = True  # a cotangent for last_state (else None reaches the kernel)
    block_e: int | None = None  # None: the launcher's choice
    dtype: torch.dtype = torch.float32

    @property
    def id(self) -> str:
        parts = [f"B{self.Bt}-E{self.E}-L{self.L}-N{self.N}-G{self.G}"]
        parts += [
            name
            for name, on in (
                ("rev", self.reverse),
                ("sp", self.softplus),
                ("D", self.D),
                ("z", self.z),
                ("bias", self.bias),
            )
            if on
        ]
        if not self.dlast:
            parts.append("nodlast")
        if self.block_e is not None:
            parts.append(f"be{self.block_e}")
        parts.append(_SHORT[self.dtype])
        return "-".join(parts)


def _inputs(c: Case, device=DEVICE):
    """(u, delta, A, B, C, D, z, delta_bias) in the case's dtypes, values that keep the scan
    well conditioned: decays in (0, 1), delta around softplus' bend."""
    g = torch.Generator().manual_seed(zlib.crc32(c.id.encode()))  # stable across runs

    def rnd(*shape, scale=1.0, shift=0.0, dtype=c.dtype):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).to(device)

    u = rnd(c.Bt, c.E, c.L)
    if c.softplus:
        delta = rnd(c.Bt, c.E, c.L, scale=1.0, shift=-1.0)
    else:
        delta = (torch.rand(c.Bt, c.E, c.L, generator=g) * 0.9 + 0.1).to(c.dtype).to(device)
    A = -(torch.rand(c.E, c.N, generator=g) * 1.5 + 0.2).to(device)
    B = rnd(c.Bt, c.G, c.N, c.L)
    C = rnd(c.Bt, c.G, c.N, c.L)
    D = rnd(c.E, dtype=torch.float32) if c.D else None
    z = rnd(c.Bt, c.E, c.L) if c.z else None
    bias = rnd(c.E, scale=0.3, dtype=torch.float32) if c.bias else None
    return u, delta, A, B, C, D, z, bias


def _reference(c: Case, inputs, requires_grad=False):
    ins = [None if t is None else t.detach().double().requires_grad_(requires_grad) for t in inputs]
    u, delta, A, B, C, D, z, bias = ins
    out, last = selective_scan_reference(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=bias,
        delta_softplus=c.softplus,
        return_last_state=True,
        reverse=c.reverse,
    )
    return ins, out, last


def _check(name: str, got: torch.Tensor, ref: torch.Tensor, tol: float, case: Case) -> None:
    """Relative error ||got - ref|| / ||ref||, with NaN/inf and the worst element reported."""
    assert got.shape == ref.shape, (
        f"{case.id} {name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    )
    g = got.detach().double().cpu()
    r = ref.detach().double().cpu()
    bad = ~torch.isfinite(g)
    assert not bad.any(), (
        f"{case.id} {name}: {int(bad.sum())} non-finite values, first at "
        f"{tuple(bad.nonzero()[0].tolist())}"
    )
    diff = (g - r).abs()
    rel = float(diff.norm() / r.norm().clamp_min(1e-30))
    if rel > tol:
        worst = tuple(torch.unravel_index(diff.argmax(), diff.shape))
        worst = tuple(int(i) for i in worst)
        raise AssertionError(
            f"{case.id} {name}: relative error {rel:.3e} > {tol:.0e} (max abs diff "
            f"{float(diff.max()):.3e} at {worst}: got {float(g[worst]):.6g}, "
            f"ref {float(r[worst]):.6g})"
        )


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------

FWD_CASES = [
    Case(1, 4, 1, 1),
    Case(1, 5, 7, 16, softplus=True, D=True),
    Case(1, 6, 7, 5, G=2, reverse=True, z=True),
    Case(2, 3, 40, 1, bias=True),
    Case(2, 12, 33, 5, G=2, reverse=True, softplus=True, D=True, z=True, bias=True, block_e=4),
    Case(1, 16, 33, 16, G=2, softplus=True, D=True, z=True, bias=True),
]


@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: c.id)
def test_forward_matches_reference(case):
    inputs = _inputs(case)
    out, last = tri.selective_scan_fwd_triton(
        *inputs, case.softplus, case.reverse, block_e=case.block_e
    )
    _, ref_out, ref_last = _reference(case, inputs)
    tol = TOLERANCES[case.dtype][0]
    assert out.dtype == case.dtype and out.is_contiguous()
    assert last.dtype == torch.float32
    _check("out", out, ref_out, tol, case)
    _check("last_state", last, ref_last, tol, case)


# ---------------------------------------------------------------------------------------------
# backward: every gradient against autograd through the float64 reference
# ---------------------------------------------------------------------------------------------

GRAD_CASES = [
    Case(1, 4, 1, 1),
    Case(1, 12, 33, 5, G=2, reverse=True, softplus=True, D=True, z=True, bias=True, block_e=4),
    Case(2, 6, 17, 16, softplus=True, D=True, bias=True, block_e=4),
    Case(1, 5, 7, 5, reverse=True, z=True, dlast=False),
    Case(2, 4, 9, 1, G=2, D=True, z=True),
    Case(1, 7, 33, 5, softplus=True, z=True, bias=True, dlast=False),
    Case(1, 4, 9, 5, softplus=True, D=True, z=True, bias=True, dtype=torch.bfloat16),
    Case(1, 4, 9, 5, reverse=True, D=True, z=True, dtype=torch.float16),
]

_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")


def _ref_grads(case, inputs, dout, dlast):
    ins, out, last = _reference(case, inputs, requires_grad=True)
    outs, cots = [out], [dout.double()]
    if dlast is not None:
        outs.append(last)
        cots.append(dlast.double())
    wrt = [t for t in ins if t is not None]
    grads = iter(torch.autograd.grad(outs, wrt, cots))
    return out, last, [None if t is None else next(grads) for t in ins]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: c.id)
def test_gradients_match_autograd(case):
    inputs = _inputs(case)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(case.Bt, case.E, case.L, generator=g).to(case.dtype).to(DEVICE)
    dlast = torch.randn(case.Bt, case.E, case.N, generator=g).to(DEVICE) if case.dlast else None
    fwd_tol, grad_tol = TOLERANCES[case.dtype]

    out, last = tri.selective_scan_fwd_triton(
        *inputs, case.softplus, case.reverse, block_e=case.block_e
    )
    grads = tri.selective_scan_bwd_triton(
        dout, dlast, *inputs, case.softplus, case.reverse, block_e=case.block_e, chunk=TEST_CHUNK
    )
    ref_out, ref_last, ref_grads = _ref_grads(case, inputs, dout, dlast)
    _check("out", out, ref_out, fwd_tol, case)
    _check("last_state", last, ref_last, fwd_tol, case)
    for name, got, ref, inp in zip(_NAMES, grads, ref_grads, inputs):
        if inp is None:
            assert got is None, f"{case.id} {name}: expected None for an absent input"
            continue
        assert got.dtype == inp.dtype, f"{case.id} {name}: dtype {got.dtype} != {inp.dtype}"
        assert got.is_contiguous(), f"{case.id} {name}: not contiguous"
        _check(name, got, ref, grad_tol, case)


def test_backward_is_deterministic():
    """dB/dC are reduced through per-block partials, not atomics: bitwise reproducible."""
    case = Case(1, 12, 9, 5, G=2, softplus=True, D=True, block_e=4)
    inputs = _inputs(case)
    dout = torch.randn(case.Bt, case.E, case.L).to(DEVICE)
    a = tri.selective_scan_bwd_triton(dout, None, *inputs, True, False, block_e=4, chunk=4)
    b = tri.selective_scan_bwd_triton(dout, None, *inputs, True, False, block_e=4, chunk=4)
    for name, x, y in zip(_NAMES, a, b):
        if x is not None:
            assert torch.equal(x, y), f"{name} differs between two identical runs"


# ---------------------------------------------------------------------------------------------
# the triton_op twins, eager and autograd
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        Case(1, 6, 33, 5, G=2, reverse=True, softplus=True, D=True, z=True, bias=True),
        Case(2, 4, 5, 3),
    ],
    ids=lambda c: c.id,
)
def test_triton_op_eager_and_autograd(case):
    """torch.ops.vimc.selective_scan_fwd_cuda with its registered autograd; it runs with the
    default chunk (tri.CHUNK = 16), which L = 33 crosses twice."""
    inputs = _inputs(case)
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in inputs]
    out, last = torch.ops.vimc.selective_scan_fwd_cuda(*leaves, case.softplus, case.reverse)
    g = torch.Generator().manual_seed(2)
    dout = torch.randn(out.shape, generator=g).to(DEVICE)
    dlast = torch.randn(last.shape, generator=g).to(DEVICE)
    wrt = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad((out, last), wrt, (dout, dlast)))
    ref_out, ref_last, ref_grads = _ref_grads(case, inputs, dout, dlast)
    fwd_tol, grad_tol = TOLERANCES[case.dtype]
    _check("out", out, ref_out, fwd_tol, case)
    _check("last_state", last, ref_last, fwd_tol, case)
    for name, leaf, ref in zip(_NAMES, leaves, ref_grads):
        if leaf is not None:
            _check(name, next(grads), ref, grad_tol, case)


def test_triton_op_schema_matches_the_cpu_op():
    from vimc.ops.selective_scan import op  # noqa: F401  (registers vimc::selective_scan_fwd)

    for base in ("selective_scan_fwd", "selective_scan_bwd"):
        ours = getattr(torch.ops.vimc, base + "_cuda").default._schema
        theirs = getattr(torch.ops.vimc, base).default._schema
        assert [(a.name, str(a.type)) for a in ours.arguments] == [
            (a.name, str(a.type)) for a in theirs.arguments
        ]
        assert [str(r.type) for r in ours.returns] == [str(r.type) for r in theirs.returns]


def test_triton_op_available_is_false_without_a_gpu():
    if _INTERPRET or not torch.cuda.is_available():
        assert not tri.triton_op_available()


def test_launcher_rejects_bad_shapes():
    case = Case(1, 4, 3, 2)
    u, delta, A, B, C, D, z, bias = _inputs(case)
    with pytest.raises(ValueError, match="G = 3 must divide E = 4"):
        tri.selective_scan_fwd_triton(
            u,
            delta,
            A,
            B.expand(1, 3, 2, 3).contiguous(),
            C.expand(1, 3, 2, 3).contiguous(),
            None,
            None,
            None,
            False,
            False,
        )
    with pytest.raises(ValueError, match="block_e must be a power of two"):
        tri.selective_scan_fwd_triton(u, delta, A, B, C, None, None, None, False, False, block_e=3)


def test_triton_op_opcheck():
    """Schema and autograd registration of the twins. (The fake-tensor and AOT checks trace the
    kernels, which needs a real GPU backend: an interpreted kernel cannot run on fake tensors.)"""
    case = Case(1, 4, 5, 3, G=2, reverse=True, softplus=True, D=True, z=True)
    u, delta, A, B, C, D, z, bias = _inputs(case)
    args = (u.requires_grad_(True), delta, A, B, C, D, z, bias, True, True)
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(torch.ops.vimc.selective_scan_fwd_cuda, args, test_utils=utils)
    dout = torch.randn_like(u)
    bargs = (dout, None, u.detach(), delta, A, B, C, D, z, bias, True, True)
    torch.library.opcheck(
        torch.ops.vimc.selective_scan_bwd_cuda, bargs, test_utils=("test_schema",)
    )
