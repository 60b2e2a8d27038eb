"""Every tolerance the tests hold a result to, grouped by the metric it bounds.

Each group names its metric; each entry says what it compares. "Reference" is the float64
recurrence (``selective_scan_reference`` on float64 copies of the inputs) unless an entry says
otherwise. A bound is only ever tightened: loosening one means a test got weaker.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# relative L2 error: ||got - ref|| / ||ref|| over the whole tensor, in float64, against the
# float64 reference; NaN or inf anywhere counts as inf (tests/ops/_scan_cases.py: rel_err)
# ---------------------------------------------------------------------------------------------

# dtype of u, delta, z, B, C -> (bound on out and last_state, bound on each gradient), for the
# scan as the CPU kernels run it (selective_scan, selective_scan_bidirectional, the ONNX Runtime
# plugin) on _scan_cases.make_inputs' values. float32: the bounds the project was specified
# with. Half types: inputs are rounded to 8 (bf16) or 11 (fp16) bits and out is rounded again on
# return, so the bound is a few units of the type's epsilon; their gradients are checked only in
# TRITON_REL_ERR (None here).
SCAN_REL_ERR = {
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (2e-2, None),
    torch.float16: (4e-3, None),
}

# The same metric for the Triton kernels called through their launchers (tests/ops/
# test_triton.py), which also store half-precision gradients. The half rows differ from
# SCAN_REL_ERR's because each was set for its own tests: these cover gradients as well, on that
# file's cases. Neither may be loosened to match the other.
TRITON_REL_ERR = {
    torch.float32: (2e-5, 1e-4),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (1e-3, 1e-3),
}

# float32, L = 4099 and 16384: rounding accumulates along the sequence
LONG_SCAN_REL_ERR = 1e-4
# float32 last state of a short scan without D or z (E = 6, L = 9, N = 3): nothing but the
# recurrence itself contributes, so it holds to a tighter bound than SCAN_REL_ERR
SHORT_STATE_REL_ERR = 1e-6
# float32 out with some A > 0 (a growing state), which the C kernel routes past its exp for
# non-positive exponents
GROWING_STATE_REL_ERR = 1e-5

# ---------------------------------------------------------------------------------------------
# per element: |got - want| <= atol + rtol * |want| (torch.testing.assert_close), between two
# float32 computations that should agree up to rounding order
# ---------------------------------------------------------------------------------------------

# reverse=True against the forward scan of time-flipped inputs, flipped back
REVERSE_VS_FLIPPED = dict(rtol=1e-5, atol=1e-6)
# torch.compile(fullgraph=True) against eager on the same kernels: the output ...
COMPILED_VS_EAGER = dict(rtol=1e-5, atol=1e-5)
# ... and each input's gradient under one random cotangent
COMPILED_VS_EAGER_GRAD = dict(rtol=1e-4, atol=1e-5)
# vimc's ONNX Runtime plugin built for another -march against the native build: the same
# polynomials, only FMA contraction differs
OTHER_TARGET_BUILD = dict(rtol=1e-5, atol=1e-6)

# ---------------------------------------------------------------------------------------------
# maximum relative error per element: max |got - want| / |want|, against float64 math
# ---------------------------------------------------------------------------------------------

# the kernels' softplus of delta, over its whole range (x in [-60, 40])
SOFTPLUS_MAX_REL = 1e-6
# the kernels' decay exp(delta * A) for exponents e in [-87, 0]: EXP_MAX_REL + EXP_MAX_REL_PER_UNIT
# * |e|. The second term is float32 rounding of the exponent itself (d * A, with log2(e) folded in
# as the official kernels do), the first the polynomial's own error plus rounding
EXP_MAX_REL = 5e-7
EXP_MAX_REL_PER_UNIT = 2e-7
# the C kernel's polynomials (cpu_kernel.c) on their reduced ranges, evaluated as it does (Horner,
# float32): the accuracies its comments and the README state
POLYNOMIAL_MAX_REL = {
    "vexp2_nonpos8": 2.4e-7,  # 2^r on |r| <= 1/2
    "vlog1p_01": 2.1e-7,  # log1p(w) = w * P(w) on (0, 1]
}
