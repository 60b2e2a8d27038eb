"""The scan tests' one case class, input builders and error measures (tests/ops/*)."""

from __future__ import annotations

import dataclasses

import torch
from vimc.ops import selective_scan_reference

from ..tolerances import COMPILED_VS_EAGER, COMPILED_VS_EAGER_GRAD, SCAN_REL_ERR

_SHORT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.float64: "f64"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One scan: its sizes, which optional parts it has, and how a test runs it."""

    Bt: int = 2
    E: int = 12
    L: int = 33
    N: int = 5
    G: int = 0  # 0: B, C as (Bt, N, L); G >= 1: grouped (Bt, G, N, L)
    D: bool = True
    z: bool = True
    bias: bool = True
    softplus: bool = True
    reverse: bool = False
    dtype: torch.dtype = torch.float32  # of u, delta, z, B, C; A, D, delta_bias stay float32
    dlast: bool = True  # backward tests: a cotangent for last_state (False: None reaches it)
    block_e: int | None = None  # the Triton launchers' channel block (None: their choice)

    @classmethod
    def bare(cls, Bt: int, E: int, L: int, N: int, **on) -> Case:
        """A case whose D, z, bias and softplus are off unless ``on`` turns them on."""
        return cls(Bt, E, L, N, **{"D": False, "z": False, "bias": False, "softplus": False} | on)

    @property
    def id(self) -> str:
        flags = "".join(
            f
            for f, on in (
                ("-D", self.D),
                ("-z", self.z),
                ("-bias", self.bias),
                ("-sp", self.softplus),
                ("-rev", self.reverse),
                ("-nodlast", not self.dlast),
                (f"-be{self.block_e}", self.block_e is not None),
                (f"-{_SHORT[self.dtype]}", self.dtype != torch.float32),
            )
            if on
        )
        g = f"-G{self.G}" if self.G else ""
        return f"B{self.Bt}-E{self.E}-L{self.L}-N{self.N}{g}{flags}"


def make_inputs(c: Case, dtype: torch.dtype | None = None, seed: int = 0) -> dict:
    """Inputs in the ranges Vim sees: delta around softplus(-4..0), A = -exp(A_log) with A_log
    around log(1..N), unit-scale u, z, B, C; in ``dtype`` (default the case's)."""
    dtype = c.dtype if dtype is None else dtype
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift

    bc_shape = (c.Bt, c.N, c.L) if not c.G else (c.Bt, c.G, c.N, c.L)
    A_log = torch.log(torch.arange(1, c.N + 1, dtype=torch.float64)).repeat(c.E, 1)
    ins = dict(
        u=rn(c.Bt, c.E, c.L),
        delta=rn(c.Bt, c.E, c.L, scale=0.5, shift=-2.0 if c.softplus else 0.0)
        if c.softplus
        else torch.rand(c.Bt, c.E, c.L, generator=g, dtype=torch.float64) * 0.2,
        A=-torch.exp(A_log + rn(c.E, c.N, scale=0.1)),
        B=rn(*bc_shape),
        C=rn(*bc_shape),
        D=rn(c.E) if c.D else None,
        z=rn(c.Bt, c.E, c.L) if c.z else None,
        # without softplus, delta + bias must stay >= 0 or the state grows past float32's range
        delta_bias=(rn(c.E, scale=0.3) if c.softplus else rn(c.E).abs() * 0.05) if c.bias else None,
    )
    # A, D and delta_bias are float32 parameters in Vim whatever the activation dtype
    keep32 = {"A", "D", "delta_bias"}
    return {
        k: None
        if v is None
        else v.to(torch.float32 if (k in keep32 and dtype != torch.float64) else dtype)
        for k, v in ins.items()
    }


def token_major(t: torch.Tensor) -> torch.Tensor:
    """The same values as a (Bt, ..., L) view of (Bt, L, ...) memory, as a mixer's linears
    produce them."""
    return t.movedim(-1, 1).contiguous().movedim(1, -1)


def flags(c: Case) -> dict:
    return dict(delta_softplus=c.softplus, reverse=c.reverse)


def to64(ins: dict) -> dict:
    return {k: None if v is None else v.detach().to(torch.float64) for k, v in ins.items()}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref||, computed in float64; NaN or inf anywhere gives inf."""
    got, ref = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(got).all():
        return float("inf")
    denom = ref.norm().item()
    return (got - ref).norm().item() / (denom if denom > 0 else 1.0)


def describe_mismatch(got: torch.Tensor, ref: torch.Tensor, tol: float) -> str:
    got, ref = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    nan = (~torch.isfinite(got)).sum().item()
    diff = (got - ref).abs()
    bad = (diff > tol * ref.abs().max().clamp_min(1e-30)).nonzero()
    first = bad[:3].tolist()
    return (
        f"rel_err={rel_err(got, ref):.3e} (tol {tol:.1e}), max_abs={diff.max().item():.3e}, "
        f"non-finite={nan}, mismatches={len(bad)} first at {first}"
    )


def assert_compiled_matches_eager(fn, ins: dict) -> None:
    """``torch.compile(fn, fullgraph=True)`` against eager ``fn`` on keyword tensors ``ins``:
    the output and every input's gradient under one random cotangent."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    leaves = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    eager = {k: v.clone().requires_grad_(True) for k, v in ins.items()}
    out, ref = compiled(**leaves), fn(**eager)
    torch.testing.assert_close(out, ref, **COMPILED_VS_EAGER)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for k in leaves:
        torch.testing.assert_close(leaves[k].grad, eager[k].grad, **COMPILED_VS_EAGER_GRAD)


def assert_grads_match(got: dict, ref: dict, tol: float | None = None, what: str = "") -> None:
    """Each gradient in ``got`` within ``tol`` (default: SCAN_REL_ERR's float32 gradient bound)
    relative L2 error of ``ref``'s, named on failure."""
    tol = SCAN_REL_ERR[torch.float32][1] if tol is None else tol
    for name, g in got.items():
        assert rel_err(g, ref[name]) <= tol, f"{what}d{name}: " + describe_mismatch(
            g, ref[name], tol
        )


# Vim's two directions (selective_scan_bidirectional and the ONNX plugin's node)

DIRECTION = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_pair(c: Case, dtype: torch.dtype | None = None, layout="contiguous") -> dict:
    """Two directions' inputs (``*_b`` the reverse one's, other values) and one z."""
    fwd, bwd = make_inputs(c, dtype, seed=0), make_inputs(c, dtype, seed=1)
    ins = {k: fwd[k] for k in DIRECTION} | {k + "_b": bwd[k] for k in DIRECTION}
    ins["z"] = fwd["z"]
    if layout == "token_major":  # as a Vim mixer hands them over
        ins = {
            k: token_major(v)
            if v is not None and k.removesuffix("_b") in ("u", "delta", "z", "B", "C")
            else v
            for k, v in ins.items()
        }
    return ins


def pair_reference(ins: dict, softplus: bool) -> torch.Tensor:
    """The mean of a pair's two float64 reference scans (the second reversed)."""
    x = {k: None if v is None else v.to(torch.float64) for k, v in ins.items()}  # keeps grad
    f = selective_scan_reference(
        *(x[k] for k in DIRECTION[:6]), x["z"], x["delta_bias"], delta_softplus=softplus
    )
    b = selective_scan_reference(
        *(x[k + "_b"] for k in DIRECTION[:6]),
        x["z"],
        x["delta_bias_b"],
        delta_softplus=softplus,
        reverse=True,
    )
    return (f + b) / 2


def mixer_core_args(B, L, E, N, R, K, seed=0, a_scale=1.0, dt_shift=-2.0):
    """A mixer's core inputs: xz as in_proj gives it, parameters as the mixer holds them (A =
    -exp(A_log) times ``a_scale``; dt_proj's bias shifted by ``dt_shift``, so softplus runs in
    the small-delta range Vim's init gives, or far past it)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    A_log = torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1) + rnd(E, N) * 0.1
    ps = []
    for _ in range(2):  # per direction: conv w, b, x_proj, dt w, b, A, D
        ps.append([
            rnd(E, 1, K, scale=0.5), rnd(E, scale=0.1), rnd(R + 2 * N, E, scale=E**-0.5),
            rnd(E, R, scale=R**-0.5), rnd(E, scale=0.5) + dt_shift,
            -torch.exp(A_log + rnd(E, N) * 0.1) * a_scale, rnd(E),
        ])  # fmt: skip
    (cw, cb, xp, dw, db, A, D), (cwb, cbb, xpb, dwb, dbb, Ab, Db) = ps
    return (rnd(B, L, 2 * E), cw, cb, cwb, cbb, xp, xpb, dw, db, dwb, dbb, A, Ab, D, Db)
