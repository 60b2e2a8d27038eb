"""The sequential Triton selective-scan kernels (ops/selective_scan/triton_sequential.py, through
the launchers of triton.py) against the float64 reference, and the launchers' ``triton_op``
twins. The chunked kernels have their own file, test_triton_chunked.py.

On a machine without an NVIDIA GPU conftest.py sets TRITON_INTERPRET=1 and the kernels run on
CPU tensors through Triton's interpreter, which is slow: every case here is tiny (Bt <= 2,
E <= 16, L <= 40), and the backward runs with a small chunk so that L = 33 crosses several chunk
boundaries. With a GPU the same cases run on CUDA. These shapes are few channel rows, which the
launchers would give the chunked kernels: the tests ask for the sequential ones by name.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

pytest.importorskip("triton")

from vimc.ops import MAX_D_STATE  # noqa: E402
from vimc.ops.selective_scan import triton as tri  # noqa: E402
from vimc.ops.selective_scan.reference import selective_scan_reference  # noqa: E402

from ..tolerances import TRITON_REL_ERR  # noqa: E402
from ._scan_cases import Case, describe_mismatch, make_inputs, rel_err  # noqa: E402

pytestmark = pytest.mark.triton

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if _INTERPRET:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("neither a CUDA device nor TRITON_INTERPRET=1", allow_module_level=True)

TEST_CHUNK = 8  # backward chunk for the tests: L = 33 spans 5 chunks, the last one of 1 step
SEQ = "sequential"
_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")  # the launchers' order
_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")


def _inputs(c: Case):
    """(u, delta, A, B, C, D, z, delta_bias) as the launchers take them: make_inputs' values
    (seeded per case, stable across runs), B and C grouped (G = 0 as one group), on DEVICE."""
    ins = make_inputs(c, seed=zlib.crc32(c.id.encode()))
    for k in ("B", "C"):
        if ins[k].dim() == 3:
            ins[k] = ins[k].unsqueeze(1)
    return tuple(None if ins[k] is None else ins[k].to(DEVICE) for k in _ARGS)


def _cotangents(c: Case, seed: int = 1):
    """A random dout in the case's dtype and, if the case has one, a float32 dlast."""
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(c.Bt, c.E, c.L, generator=g).to(c.dtype).to(DEVICE)
    dlast = torch.randn(c.Bt, c.E, c.N, generator=g).to(DEVICE) if c.dlast else None
    return dout, dlast


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
    """Relative L2 error within ``tol``; shape, NaN/inf and the first mismatches reported."""
    assert got.shape == ref.shape, (
        f"{case.id} {name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    )
    got, ref = got.detach().cpu(), ref.detach().cpu()
    assert rel_err(got, ref) <= tol, f"{case.id} {name}: " + describe_mismatch(got, ref, tol)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------

FWD_CASES = [
    Case.bare(1, 4, 1, 1),
    Case.bare(1, 5, 7, 16, softplus=True, D=True),
    Case.bare(1, 6, 7, 5, G=2, reverse=True, z=True),
    Case.bare(2, 3, 40, 1, bias=True),
    Case(2, 12, 33, 5, G=2, reverse=True, block_e=4),
    Case(1, 16, 33, 16, G=2),
]


def check_forward(case, **launch) -> None:
    """The launcher's forward (``launch``: kernel=, chunk=) against the float64 reference: out
    in u's dtype and dense, the last state float32, both within TRITON_REL_ERR."""
    inputs = _inputs(case)
    out, last = tri.selective_scan_fwd_triton(
        *inputs, case.softplus, case.reverse, block_e=case.block_e, **launch
    )
    _, ref_out, ref_last = _reference(case, inputs)
    tol = TRITON_REL_ERR[case.dtype][0]
    assert out.dtype == case.dtype and out.is_contiguous()
    assert last.dtype == torch.float32
    _check("out", out, ref_out, tol, case)
    _check("last_state", last, ref_last, tol, case)


def check_forward_and_gradients(case, **launch) -> None:
    """The launcher's forward and backward (``launch``: kernel=, chunk=) against autograd
    through the float64 reference: out, last state and every gradient within TRITON_REL_ERR;
    an absent input gets None, each gradient its input's dtype, dense."""
    inputs = _inputs(case)
    dout, dlast = _cotangents(case)
    fwd_tol, grad_tol = TRITON_REL_ERR[case.dtype]
    kw = dict(block_e=case.block_e, **launch)
    out, last = tri.selective_scan_fwd_triton(*inputs, case.softplus, case.reverse, **kw)
    grads = tri.selective_scan_bwd_triton(dout, dlast, *inputs, case.softplus, case.reverse, **kw)
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


@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: c.id)
def test_forward_matches_reference(case):
    check_forward(case, kernel=SEQ)


def test_forward_reads_any_strides():
    """The launcher makes the dense rows its kernels index: token-major inputs give the same
    bits as contiguous ones."""
    case = Case(1, 6, 9, 4, G=2)
    inputs = _inputs(case)
    strided = [
        t if t is None or t.dim() < 3 else t.movedim(-1, 1).contiguous().movedim(1, -1)
        for t in inputs
    ]
    assert not strided[0].is_contiguous() and not strided[3].is_contiguous()
    want = tri.selective_scan_fwd_triton(*inputs, case.softplus, case.reverse, kernel=SEQ)
    got = tri.selective_scan_fwd_triton(*strided, case.softplus, case.reverse, kernel=SEQ)
    for name, x, y in zip(("out", "last_state"), got, want):
        assert torch.equal(x, y), f"{name} differs for strided inputs"


# ---------------------------------------------------------------------------------------------
# backward: every gradient against autograd through the float64 reference
# ---------------------------------------------------------------------------------------------

GRAD_CASES = [
    Case.bare(1, 4, 1, 1),
    Case(1, 12, 33, 5, G=2, reverse=True, block_e=4),
    Case(2, 6, 17, 16, z=False, block_e=4),
    Case.bare(1, 5, 7, 5, reverse=True, z=True, dlast=False),
    Case.bare(2, 4, 9, 1, G=2, D=True, z=True),
    Case(1, 7, 33, 5, D=False, dlast=False),
    Case(1, 4, 9, 5, dtype=torch.bfloat16),
    Case.bare(1, 4, 9, 5, reverse=True, D=True, z=True, dtype=torch.float16),
]


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
    check_forward_and_gradients(case, kernel=SEQ, chunk=TEST_CHUNK)


@pytest.mark.parametrize(
    "case",
    [Case(1, 12, 33, 5, G=2, reverse=True, block_e=4), Case.bare(2, 6, 17, 16, D=True)],
    ids=lambda c: c.id,
)
def test_backward_is_bitwise_the_same_for_every_chunk_length(case):
    """The backward's gradients are bit-identical whatever its chunk length, from a checkpoint
    before every step (chunk 1) to one chunk over the whole sequence (64 > L). Every chunking
    recomputes the same states, because a checkpoint is a stored copy of the forward's state
    and the recompute steps through the forward's own _scan_step, and sweeps them in the same
    order: only a fault tells them apart (a checkpoint taken at the wrong step, a recompute
    that drifts from the forward, a scratch slot read before it is written). This holds under
    the interpreter as on a GPU. A second identical run must match as well: the reductions
    over channel blocks go through partial buffers, not atomics, which on a GPU would not be
    reproducible."""
    inputs = _inputs(case)
    dout, dlast = _cotangents(case)

    def backward(chunk):
        return tri.selective_scan_bwd_triton(
            dout,
            dlast,
            *inputs,
            case.softplus,
            case.reverse,
            block_e=case.block_e,
            kernel=SEQ,
            chunk=chunk,
        )

    want = backward(TEST_CHUNK)
    for chunk in (1, 4, 64, TEST_CHUNK):
        for name, got, ref in zip(_NAMES, backward(chunk), want):
            if ref is not None:
                assert torch.equal(got, ref), f"{case.id} {name} differs with chunk = {chunk}"


# ---------------------------------------------------------------------------------------------
# the triton_op twins, eager and autograd
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["chunked", "sequential"])
@pytest.mark.parametrize(
    "case",
    [Case(1, 6, 33, 5, G=2, reverse=True), Case.bare(2, 4, 5, 3)],
    ids=lambda c: c.id,
)
def test_triton_op_eager_and_autograd(case, kernel, monkeypatch):
    """torch.ops.vimc.selective_scan_fwd_cuda with its registered autograd, as the launchers
    dispatch it: these few rows run the chunked kernels, and with CHUNKED_MAX_ROWS at 0 the
    sequential ones, each with its default chunk (the sequential CHUNK = 16, which L = 33
    crosses twice)."""
    if kernel == "sequential":
        monkeypatch.setattr(tri, "CHUNKED_MAX_ROWS", 0)
    assert tri.kernel_for(case.Bt, case.E) == kernel
    inputs = _inputs(case)
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in inputs]
    out, last = torch.ops.vimc.selective_scan_fwd_cuda(*leaves, case.softplus, case.reverse)
    dout, dlast = _cotangents(case, seed=2)
    wrt = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad((out, last), wrt, (dout, dlast)))
    ref_out, ref_last, ref_grads = _ref_grads(case, inputs, dout, dlast)
    fwd_tol, grad_tol = TRITON_REL_ERR[case.dtype]
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


def test_triton_op_available_exactly_with_a_gpu_and_no_interpreter():
    """selective_scan routes CUDA tensors to the triton_op twins exactly when Triton can compile
    for a GPU here: a CUDA device, and not the interpreter (which runs on CPU tensors only)."""
    assert tri.triton_op_available() == (not _INTERPRET and torch.cuda.is_available())


def test_launcher_rejects_bad_arguments():
    """The launchers run the op's own validator (ops/selective_scan/_checks.py), grouped B and C
    only, and check their own block and chunk sizes."""
    case = Case.bare(1, 4, 3, 2)
    u, delta, A, B, C, D, z, bias = _inputs(case)
    flags = (False, False)
    B3 = B.expand(1, 3, 2, 3).contiguous()
    with pytest.raises(ValueError, match=r"\(triton\): B .* needs G to divide E = 4, got G = 3"):
        tri.selective_scan_fwd_triton(u, delta, A, B3, B3, None, None, None, *flags)
    with pytest.raises(ValueError, match=r"\(triton\): B must have 4 dimensions"):
        tri.selective_scan_fwd_triton(u, delta, A, B[:, 0], C[:, 0], None, None, None, *flags)
    wide = torch.zeros(4, MAX_D_STATE + 1, device=DEVICE)
    with pytest.raises(ValueError, match=rf"must be in \[1, {MAX_D_STATE}\]"):
        tri.selective_scan_fwd_triton(u, delta, wide, B, C, None, None, None, *flags)
    with pytest.raises(ValueError, match="dout must have shape"):
        tri.selective_scan_bwd_triton(u[..., :2], None, u, delta, A, B, C, None, None, None, *flags)
    with pytest.raises(ValueError, match="block_e must be a power of two"):
        tri.selective_scan_fwd_triton(u, delta, A, B, C, None, None, None, *flags, block_e=3)
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        tri.selective_scan_bwd_triton(u, None, u, delta, A, B, C, None, None, None, *flags, chunk=6)
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        tri.selective_scan_fwd_triton(u, delta, A, B, C, None, None, None, *flags, chunk=0)
    with pytest.raises(ValueError, match=r"kernel must be one of \('sequential', 'chunked'\)"):
        tri.selective_scan_fwd_triton(u, delta, A, B, C, None, None, None, *flags, kernel="tree")


def test_triton_op_opcheck():
    """Schema and autograd registration of the twins. (The fake-tensor and AOT checks trace the
    kernels, which needs a real GPU backend: an interpreted kernel cannot run on fake tensors.)"""
    case = Case(1, 4, 5, 3, G=2, reverse=True, bias=False)
    u, delta, A, B, C, D, z, bias = _inputs(case)
    args = (u.requires_grad_(True), delta, A, B, C, D, z, bias, True, True)
    utils = ("test_schema", "test_autograd_registration")
    torch.library.opcheck(torch.ops.vimc.selective_scan_fwd_cuda, args, test_utils=utils)
    dout = torch.randn_like(u)
    bargs = (dout, None, u.detach(), delta, A, B, C, D, z, bias, True, True)
    torch.library.opcheck(
        torch.ops.vimc.selective_scan_bwd_cuda, bargs, test_utils=("test_schema",)
    )
