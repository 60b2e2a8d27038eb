"""The fuzz loop's cases (tests/sanitize/fuzz.py): sizes and options drawn at random, and inputs
in random memory layouts, each a view into a storage of exactly its extent, so that a kernel
reading one element too far reads ASan's redzone instead of a neighbour's memory."""

from __future__ import annotations

import dataclasses
import math
import random

import torch
from vimc.ops import MAX_D_STATE, selective_scan_reference

from ..ops._scan_cases import rel_err

MAX_WORK = 400_000  # Bt * E * L * N of one case: a few milliseconds under the sanitizers
OPTIONS = ("D", "z", "bias", "softplus", "reverse")
DIRECTION = ("u", "delta", "A", "B", "C", "D", "delta_bias")


@dataclasses.dataclass
class Case:
    Bt: int
    E: int
    L: int
    N: int
    G: int  # 0: B, C as (Bt, N, L) (the public functions only); else (Bt, G, N, L)
    D: bool
    z: bool
    bias: bool
    softplus: bool
    reverse: bool
    dtype: torch.dtype  # of u, delta, z, B, C
    param_dtype: torch.dtype  # of A, D, delta_bias
    growing: bool  # some A > 0: the state may overflow, so results are not compared
    nonfinite: str | None  # an input given one NaN or Inf, if any

    @property
    def comparable(self) -> bool:
        """Small, well-scaled, float32/64: compared with the float64 reference."""
        return (
            not self.growing
            and self.nonfinite is None
            and self.L <= 96
            and self.Bt * self.E * self.L * self.N <= 40_000
            and self.dtype in (torch.float32, torch.float64)
            and self.param_dtype in (torch.float32, torch.float64)
        )


def draw_case(rng: random.Random) -> Case:
    dtype = rng.choice([torch.float32] * 5 + [torch.float64, torch.bfloat16, torch.float16])
    # float64 runs the chunked torch path, not the C kernel: kept short, it is slow
    work = MAX_WORK if dtype != torch.float64 else MAX_WORK // 100
    r = rng.random()
    if r < 0.6 or dtype == torch.float64:
        L = rng.randint(0, 70)
    else:
        L = rng.randint(71, 2000) if r < 0.9 else rng.randint(2001, 70_000)
    steps = max(L, 1)
    N = rng.choice([1, 2, 3, 4, 5, 8, 16, 17, 32, 64, rng.randint(1, MAX_D_STATE), MAX_D_STATE])
    N = max(1, min(N, work // steps))
    E = max(1, min(rng.randint(1, 40), work // (steps * N)))
    Bt = max(1, min(rng.randint(1, 3), work // (steps * N * E)))
    if rng.random() < 0.08:  # an empty scan
        Bt, E, L = rng.choice([(0, E, L), (Bt, 0, L), (Bt, E, 0), (0, E, 0)])
    grouped = E > 0 and rng.random() < 0.5
    G = rng.choice([g for g in range(1, E + 1) if E % g == 0]) if grouped else 0
    param_dtype = (
        torch.float64 if dtype == torch.float64 else rng.choice([torch.float32] * 3 + [dtype])
    )
    flags = {k: rng.random() < 0.5 for k in OPTIONS}
    growing = L <= 64 and rng.random() < 0.1
    nonfinite = rng.choice(["u", "delta", "A", "B", "C", "D", "z"]) if rng.random() < 0.1 else None
    return Case(
        Bt,
        E,
        L,
        N,
        G,
        **flags,
        dtype=dtype,
        param_dtype=param_dtype,
        growing=growing,
        nonfinite=nonfinite,
    )


# ---------------------------------------------------------------------------------------------
# values and layouts
# ---------------------------------------------------------------------------------------------


def _values(name: str, c: Case, n: int, g: torch.Generator) -> torch.Tensor:
    """n float64 values in the range Vim gives ``name`` (as tests/ops/_scan_cases.make_inputs)."""
    if name == "delta":
        if c.softplus:
            return torch.randn(n, generator=g, dtype=torch.float64) * 0.5 - 2.0
        return torch.rand(n, generator=g, dtype=torch.float64) * 0.2
    if name == "A":
        a = -torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * math.log(c.N + 1))
        return a.abs() * 0.3 if c.growing else a
    if name == "delta_proj":  # dt_proj weights: a raw delta of order 1 for R up to 64
        return torch.randn(n, generator=g, dtype=torch.float64) * 0.1
    if name == "delta_bias":
        x = torch.randn(n, generator=g, dtype=torch.float64)
        return x * 0.3 if c.softplus else x.abs() * 0.05
    return torch.randn(n, generator=g, dtype=torch.float64)


def _strides(shape: tuple, rng: random.Random) -> tuple[list[int], str]:
    """Random element strides for ``shape`` -> (strides, the layout's name)."""
    kind = rng.choice(["contiguous", "contiguous", "permuted", "gapped", "broadcast", "overlap"])
    order = list(range(len(shape)))  # outermost first
    if kind in ("permuted", "gapped"):
        rng.shuffle(order)
    strides = [0] * len(shape)
    step = 1
    for d in reversed(order):
        strides[d] = step * (rng.randint(1, 3) if kind == "gapped" else 1)
        step = strides[d] * max(shape[d], 1)
    if kind == "broadcast":
        for d in range(len(shape)):
            if rng.random() < 0.5:
                strides[d] = 0
    elif kind == "overlap":
        strides = [rng.randint(0, 3) for _ in shape]
    for d, size in enumerate(shape):
        if size == 1 and rng.random() < 0.3:
            strides[d] = 2**40 + rng.randint(0, 7)  # never stepped along
    return strides, kind


def make_tensor(name, shape, dtype, c: Case, rng: random.Random, g) -> torch.Tensor:
    """A view with random strides into a storage of exactly its extent, filled with
    ``name``'s values (one NaN or Inf among them when the case says so)."""
    strides, _ = _strides(shape, rng)
    offset = rng.randint(0, 3)
    numel = math.prod(shape)
    extent = offset + (1 + sum((s - 1) * st for s, st in zip(shape, strides)) if numel else 0)
    base = _values(name, c, extent, g)
    if c.nonfinite == name and extent > offset:
        base[rng.randint(offset, extent - 1)] = rng.choice([math.nan, math.inf, -math.inf])
    return base.to(dtype).as_strided(shape, strides, offset)


def make_inputs(c: Case, rng, g, grouped: bool) -> dict:
    """One direction's inputs; B, C grouped (Bt, G, N, L) when ``grouped`` or c.G > 0."""
    G = c.G or 1
    bc = (c.Bt, G, c.N, c.L) if (grouped or c.G) else (c.Bt, c.N, c.L)
    shapes = dict(
        u=(c.Bt, c.E, c.L),
        delta=(c.Bt, c.E, c.L),
        A=(c.E, c.N),
        B=bc,
        C=bc,
        D=(c.E,),
        z=(c.Bt, c.E, c.L),
        delta_bias=(c.E,),
    )
    present = {"D": c.D, "z": c.z, "delta_bias": c.bias}
    params = ("A", "D", "delta_bias")
    return {
        k: make_tensor(k, s, c.param_dtype if k in params else c.dtype, c, rng, g)
        if present.get(k, True)
        else None
        for k, s in shapes.items()
    }


def f64(ins: dict) -> dict:
    return {k: None if v is None else v.detach().to(torch.float64) for k, v in ins.items()}


def check_close(what: str, got, want, tol: float) -> None:
    err = rel_err(got, want)
    if not err <= tol:
        raise AssertionError(f"{what}: relative error {err:.3e} > {tol:.1e}")


def check_written(what: str, t: torch.Tensor, c: Case) -> None:
    """Outputs start as NaN (poisoned): a finite, well-scaled case must overwrite all of it."""
    if c.comparable and not torch.isfinite(t).all():
        raise AssertionError(f"{what}: {int((~torch.isfinite(t)).sum())} non-finite elements")


def make_pair(c, rng, g, grouped: bool) -> dict:
    fwd, bwd = make_inputs(c, rng, g, grouped), make_inputs(c, rng, g, grouped)
    return {k: fwd[k] for k in DIRECTION} | {k + "_b": bwd[k] for k in DIRECTION} | {"z": fwd["z"]}


def pair_reference(ins: dict, c: Case) -> torch.Tensor:
    x = f64(ins)
    f = selective_scan_reference(
        *(x[k] for k in DIRECTION[:6]), x["z"], x["delta_bias"], delta_softplus=c.softplus
    )
    b = selective_scan_reference(
        *(x[k + "_b"] for k in DIRECTION[:6]),
        x["z"],
        x["delta_bias_b"],
        delta_softplus=c.softplus,
        reverse=True,
    )
    return (f + b) / 2
