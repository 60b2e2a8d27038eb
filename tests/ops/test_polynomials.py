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
