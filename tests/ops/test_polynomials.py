"""The CPU kernel's own polynomials, read from cpu_kernel.c and evaluated as the kernel does
(Horner, float32), against float64: the accuracies its comments and the README state."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ..tolerances import POLYNOMIAL_MAX_REL

SOURCE = Path(__file__).resolve().parents[2] / "ops" / "selective_scan" / "cpu_kernel.c"


def coefficients(function: str) -> list[np.float32]:
    """The coefficients, highest degree first, of the ``static const float`` table that
    ``function`` (or its n-wide form ``<function>_n``) hands to ``horner_n``."""
    text = SOURCE.read_text()
    body = re.search(
        rf"\b{function}(?:_n)?\(vf \*?\w+(?:, const int n)?\) \{{(.*?)\n\}}", text, re.S
    )
    assert body, f"{function} not found in {SOURCE.name}"
    call = re.search(r"horner_n\([^,]+, [^,]+, (\w+), (\d+), \w+\)", body.group(1))
    assert call, f"{function} calls no horner_n"
    table = re.search(rf"static const float {call.group(1)}\[\d+\] = \{{(.*?)\}};", text, re.S)
    assert table, f"{call.group(1)} not found in {SOURCE.name}"
    consts = re.findall(r"([-+0-9.e]+)f", table.group(1))
    assert len(consts) == int(call.group(2)), f"{call.group(1)}: not {call.group(2)} terms"
    return [np.float32(c) for c in consts]


def horner(cs: list[np.float32], x: np.ndarray) -> np.ndarray:
    p = np.full_like(x, cs[0])
    for c in cs[1:]:
        p = (p * x + c).astype(np.float32)
    return p


@pytest.mark.parametrize(
    "function, x, f, want",
    [
        # 2^r on |r| <= 1/2, the reduced argument of the forward's decays
        ("vexp2_poly", np.linspace(-0.5, 0.5, 200001), np.exp2, lambda p, x: p),
        # log1p(w) = w * P(w) on (0, 1], the softplus's tail
        ("vlog1p_01", np.linspace(1e-7, 1.0, 200001), np.log1p, lambda p, x: x * p),
    ],
    ids=["exp2", "log1p"],
)
def test_polynomial_relative_error(function, x, f, want):
    bound = POLYNOMIAL_MAX_REL[function]
    cs = coefficients(function)
    assert len(cs) == {"vexp2_poly": 6, "vlog1p_01": 9}[function]
    x32 = x.astype(np.float32)
    got = want(horner(cs, x32), x32).astype(np.float32).astype(np.float64)
    ref = f(x32.astype(np.float64))
    rel = np.abs(got - ref) / np.abs(ref)
    assert rel.max() <= bound, f"{function}: max relative error {rel.max():.2e} > {bound:.1e}"


def table_form(lanes: int) -> tuple[list[np.float32], np.ndarray, int]:
    """vexp2_nonpos_table's EXP2_Q coefficients, EXP2_TABLE entries and TABLE_SHIFT for the
    build with ``lanes`` lanes (cpu_kernel.c defines the 16-lane set first)."""
    text = SOURCE.read_text()
    qs = re.findall(r"static const float EXP2_Q\[4\] = \{(.*?)\};", text, re.S)
    tables = re.findall(r"static const int32_t EXP2_TABLE\[(\d+)\] = \{(.*?)\};", text, re.S)
    shifts = re.findall(r"#define TABLE_SHIFT (\d+)", text)
    assert len(qs) == len(tables) == len(shifts) == 2, "expected a 16-lane and an 8-lane set"
    i = 0 if lanes == 16 else 1
    assert int(tables[i][0]) == lanes
    entries = re.findall(r"(0x[0-9a-f]+) - \((\d+) << (\d+)\)", tables[i][1])
    assert [int(j) for _, j, _ in entries] == list(range(lanes))
    assert all(int(sh) == int(shifts[i]) for _, _, sh in entries)
    table = np.array([int(b, 16) - (int(j) << int(sh)) for b, j, sh in entries], np.int64)
    return [np.float32(c) for c in re.findall(r"([-+0-9.e]+)f", qs[i])], table, int(shifts[i])


MAGIC = np.float32(12582912.0)  # cpu_kernel.c's ROUND_MAGIC


def table_pow2(t: np.ndarray, s: np.ndarray, lanes: int) -> np.ndarray:
    """cpu_kernel.c's table_pow2 in float32: 2^((k + s) / lanes), k in t's low mantissa bits
    (vpermps's low-bit index, the shifted integer add) -> float64 of the float32 result."""
    qs, table, shift = table_form(lanes)
    tbits = t.view(np.int32).astype(np.int64)
    scale = (table[tbits & (lanes - 1)] + ((tbits << shift) & 0xFFFFFFFF)) & 0xFFFFFFFF
    scale = scale.astype(np.uint32).view(np.float32)
    return (horner(qs, s) * scale).astype(np.float32).astype(np.float64)


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c rounded once to float32, as an FMA does (the float32 product is exact in
    float64; rounding the float64 sum again is off by one float32 ulp at most, rarely)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


@pytest.mark.parametrize("lanes", [8, 16])
def test_exp2_table_form(lanes):
    """The table form of the bounded decays, step by step as the kernel computes it (rounding
    by the magic constant, Horner in float32, vpermps's low-bit index, the shifted integer
    add), over [-126, 0] and densely near 0: within its bound of 2^x, the table's values are
    2^(j / lanes), and a decay near 1 carries no constant error (exactly 1 at x = 0)."""
    qs, table, shift = table_form(lanes)
    assert len(qs) == 4 and qs[-1] == 1.0
    # the polynomial alone on its reduced range, as its comment states
    s = np.linspace(-0.5, 0.5, 200001).astype(np.float32)
    poly = horner(qs, s).astype(np.float64) / np.exp2(s.astype(np.float64) / lanes) - 1
    assert np.abs(poly).max() <= POLYNOMIAL_MAX_REL[f"exp2_q{lanes}"]
    want_bits = np.exp2(np.arange(lanes) / lanes).astype(np.float32).view(np.int32)
    assert np.array_equal(table + (np.arange(lanes) << shift), want_bits)
    x = np.concatenate([np.linspace(-126.0, 0.0, 2_000_001), -np.geomspace(1e-30, 1.0, 200_001)])
    x = x.astype(np.float32)
    xs = (x * np.float32(lanes)).astype(np.float32)  # the kernel folds lanes into A: exact
    t = (xs + MAGIC).astype(np.float32)
    got = table_pow2(t, (xs - (t - MAGIC)).astype(np.float32), lanes)
    rel = np.abs(got / np.exp2(x.astype(np.float64)) - 1)
    bound = POLYNOMIAL_MAX_REL["vexp2_nonpos_table"]
    assert rel.max() <= bound, f"max relative error {rel.max():.3g} > {bound:.3g}"
    assert got[np.argmax(x)] == 1.0  # x = 0
    near = np.abs(x) < 1e-3
    # no constant error near 1: the error shrinks with x there, as the memory length grows
    assert (rel[near] <= 4 * np.abs(x[near]) + 6e-8).all()


@pytest.mark.parametrize("lanes", [8, 16])
def test_softplus_exp_table_form(lanes):
    """vexp_neg_table, softplus's exp(-a) for a >= 0, step by step as GCC compiles it (the
    product fused into the rounding's add and subtract, log2(e)'s second part added by one more
    FMA) over [0, 87], the clamp: within the table form's bound of exp(-a) everywhere. Without
    log2(e)'s second part the error grows with a, to 1.3e-6 at 87."""
    text = SOURCE.read_text()
    log2e = {}  # LOG2E and LOG2E_LO as the kernel defines them
    for name in ("LOG2E", "LOG2E_LO"):
        found = re.search(rf"#define {name} ([-+0-9.e]+)f", text)
        assert found, f"{name} not found in {SOURCE.name}"
        log2e[name] = np.float32(found.group(1)) * np.float32(lanes)  # a power of 2: exact
    clamp = re.search(
        r"vexp_neg_table\(vf a, vf tbl\) \{\n.*?vmin\(vsplat\(([0-9.]+)f\), a\)", text
    )
    assert clamp and float(clamp.group(1)) == 87.0, "vexp_neg_table's clamp is not at 87"
    a = np.concatenate([np.linspace(0.0, 87.0, 2_000_001), np.geomspace(1e-30, 1.0, 200_001)])
    a = a.astype(np.float32)
    hi = np.full_like(a, -log2e["LOG2E"])
    t = fma32(a, hi, np.full_like(a, MAGIC))
    s = fma32(a, hi, -(t - MAGIC))
    s = fma32(a, np.full_like(a, -log2e["LOG2E_LO"]), s)
    got = table_pow2(t, s, lanes)
    rel = np.abs(got / np.exp(-a.astype(np.float64)) - 1)
    bound = POLYNOMIAL_MAX_REL["vexp_neg_table"]
    assert rel.max() <= bound, f"max relative error {rel.max():.3g} > {bound:.3g}"
