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
# the fused conv + silu (vimc.ops.conv1d_silu_pair's C kernel, float32: FMA sums, a polynomial
# exp and a refined reciprocal in silu) against the shifted form on float64 copies
CONV_SILU_PAIR_REL_ERR = 1e-6
# the mixer core in one call (vimc.ops.mixer_core's C kernel, float32: the conv, x_proj as FMA
# sums, dt_proj, softplus, both scans, the gate) against its composition on float64 copies
# (vimc.ops.selective_scan.mixer.mixer_core_composed)
MIXER_CORE_REL_ERR = 2e-5
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
# the two-direction ops in an exported or compiled graph against eager: the same kernel, only
# the graph around it differs
PAIR_GRAPH_VS_EAGER = dict(rtol=1e-6, atol=1e-6)
# torch.compile(fullgraph=True) against eager on the same kernels: the output ...
COMPILED_VS_EAGER = dict(rtol=1e-5, atol=1e-5)
# ... and each input's gradient under one random cotangent
COMPILED_VS_EAGER_GRAD = dict(rtol=1e-4, atol=1e-5)
# vimc's ONNX Runtime plugin built for another -march against the native build: the same
# polynomials, only FMA contraction differs
OTHER_TARGET_BUILD = dict(rtol=1e-5, atol=1e-6)
# the scan with another decay form of the same build (VIMC_SCAN_DECAY): decays within 1.6e-7
# of each other, carried through the recurrence
OTHER_DECAY_FORM = dict(rtol=1e-5, atol=1e-6)

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
    "vexp2_poly": 1.7e-7,  # 2^r on |r| <= 1/2 (the forward's decays)
    "vlog1p_01": 2.1e-7,  # log1p(w) = w * P(w) on (0, 1]
    # 2^x on [-126, 0] by vexp2_nonpos_table: the degree-3 polynomial on its reduced range, the
    # table value and their product, each rounded to float32
    "vexp2_nonpos_table": 1.62e-7,
    # exp(-a) on [0, 87] by vexp_neg_table (softplus's exp), the same table and polynomial
    "vexp_neg_table": 1.62e-7,
    # its degree-3 polynomials for 2^(s / lanes) on |s| <= 1/2 (cpu_kernel.c's EXP2_Q)
    "exp2_q8": 8.7e-8,
    "exp2_q16": 6.2e-8,
}

# =============================================================================================
# The model, its exports and the apps (tests/model, tests/export, tests/cli, tests/test_*.py).
# "Eager" is the float32 model run by PyTorch; logits are the model's outputs.
# =============================================================================================

# ---------------------------------------------------------------------------------------------
# exact: assert_close(got, want, **EXACT), every element equal (and the same dtype and shape)
# ---------------------------------------------------------------------------------------------

# one computation on the same bits: a model rebuilt from saved, registered, checkpointed or
# Hub-cached weights against the model they came from, or a value copied, not computed (the
# class token a pos_embed resize carries over)
EXACT = dict(rtol=0, atol=0)

# ---------------------------------------------------------------------------------------------
# per element: |got - want| <= atol + rtol * |want| (torch.testing.assert_close,
# np.testing.assert_allclose), float32 unless an entry says otherwise
# ---------------------------------------------------------------------------------------------

# the depthwise convs' forms (anti-causal, causal, channel-major) against the flip formulation
# and each other, float64: the same multiply-adds in another order
CONV_FORMS_FLOAT64 = dict(rtol=1e-12, atol=1e-12)
# conv1d_channel_major on float16 input against the float64 result: float16's 11 bits
CONV_FLOAT16_VS_FLOAT64 = dict(rtol=2e-3, atol=2e-3)
# the mixer's fast path against vim.md's flip formulation with the python-loop scan, float64
MIXER_FAST_VS_REFERENCE_FLOAT64 = dict(rtol=1e-10, atol=1e-10)
# the same two paths' gradients (input and every parameter) under one cotangent, float32
MIXER_FAST_VS_REFERENCE_GRAD = dict(rtol=1e-4, atol=1e-5)
# the mixer with x_proj's weight padded by zero rows against unpadded, float32: each output
# column is the same dot product, which a GEMM may only block differently
X_PROJ_PADDED_VS_NOT = dict(rtol=1e-6, atol=1e-6)
# the model's logits (fast and reference scan) against vim.md written out from the state_dict
MODEL_VS_VIM_MD = dict(rtol=1e-5, atol=1e-5)
# dynamic_img_size=True at 48x40 against a model built for 48x40 with the resized pos_embed
DYNAMIC_VS_FIXED_IMG_SIZE = dict(rtol=1e-6, atol=1e-6)
# torch.compile of the whole model against eager: logits and training loss ...
MODEL_COMPILED_VS_EAGER = dict(rtol=1e-5, atol=1e-5)
# ... and every parameter's gradient
MODEL_COMPILED_VS_EAGER_GRAD = dict(rtol=1e-4, atol=1e-5)
# one model called from several threads at once against its single-threaded logits (thread
# pools may split the work differently)
THREADS_VS_SINGLE_THREAD = dict(rtol=1e-5, atol=1e-5)
# a torch.export program (every scan_form) run as a module against eager logits
EXPORTED_PROGRAM_VS_EAGER = dict(rtol=1e-5, atol=1e-5)
# an ONNX lowering of the scan ("paired", "step") in ONNX Runtime against vimc's selective_scan,
# out and last state
ONNX_SCAN_VS_OP = dict(rtol=1e-4, atol=1e-5)
# the same with float16 u, delta, z in and float16 out (float32 arithmetic inside)
ONNX_SCAN_FLOAT16_VS_OP = dict(rtol=2e-2, atol=2e-2)
# the DeiT baseline's attention implementations (sdpa against the explicit softmax), logits
DEIT_ATTENTION_IMPLS = dict(rtol=1e-4, atol=1e-5)
# per-channel mean of a preprocessed one-colour image against (value - mean) / std
PREPROCESS_CHANNEL_MEAN = dict(rtol=0, atol=1e-5)

# ---------------------------------------------------------------------------------------------
# max abs error relative to max |ref|: max |got - ref| / max |ref| over the whole tensor
# (tests/model/test_parity.py: _rel), on logits unless an entry says otherwise
# ---------------------------------------------------------------------------------------------

# model.to(dtype) against the float32 model: the type's rounding at every layer
HALF_MODEL_VS_FLOAT32 = {torch.bfloat16: 6e-2, torch.float16: 1e-2}
# the float32 model under autocast("cpu", bfloat16) against it without
AUTOCAST_BF16_VS_FLOAT32 = 6e-2
# the mixer's output in every (scan_form, conv_form) against the default forms: float64 to
# rounding, float32 within the scan's forward bound
MIXER_FORMS = {torch.float64: 1e-12, torch.float32: 2e-5}
# vim_tiny (random weights, 224x224) on the fast path against the reference path, per dtype:
# bfloat16's 8 bits rounded at different points by the two paths through 24 layers
VIM_TINY_FAST_VS_REFERENCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}

# ---------------------------------------------------------------------------------------------
# max absolute error: max |got - want|, on logits against eager unless an entry says otherwise
# (vimc.export.compare reports it as a row's max_abs)
# ---------------------------------------------------------------------------------------------

# an ONNX file (standard ops, any lowering, or the plugin route) in ONNX Runtime, float32; also
# as vimc parity's onnxruntime rows and examples/export_onnx.py report it
ONNX_VS_EAGER = 1e-4
# an AOTInductor package loaded with load_aoti, float32
AOTI_VS_EAGER = 1e-4
# torch.compile(fullgraph=True) of vim_tiny (224x224), float32
VIM_TINY_COMPILED_VS_EAGER = 1e-4
# the torch-tensorrt route's float32 engine against eager on the same GPU
TENSORRT_VS_EAGER = 1e-3
# ONNX Runtime's com.microsoft GatedDeltaNet / LinearAttention computing the scan
# (benchmarks/ort_contrib.py) against vimc's selective_scan: out and last state
ORT_CONTRIB_VS_OP = 1e-4
# a 16-bit image against the same picture at 8 bits, preprocessed: on top of one 8-bit level
# (the 8-bit file's rounding), float32 rounding
IMAGE_16_VS_8_BIT = 1e-6
# ... and vim_digits' softmax probabilities on the two
IMAGE_16_VS_8_BIT_PROBS = 0.05
# a preprocessed all-white crop (mean 0, std 1) against 1.0, on its minimum
WHITE_CROP = 1e-2

# ---------------------------------------------------------------------------------------------
# relative error of a scalar: |got - want| <= rel * |want| (pytest.approx)
# ---------------------------------------------------------------------------------------------

# float64 sum of head.weight printed by a fresh process that loaded the Hub cache, against this
# process's: the same weights, printed and parsed back
HUB_WEIGHT_SUM_REL = 1e-12

# ---------------------------------------------------------------------------------------------
# cosine similarity of the logits with eager's, at least
# ---------------------------------------------------------------------------------------------

# the bfloat16 eager row of vimc.export.compare
BF16_EAGER_MIN_COS_SIM = 0.99

# ---------------------------------------------------------------------------------------------
# initialization: |statistic of the initialized tensor - the initializer's value| (vim_tiny)
# ---------------------------------------------------------------------------------------------

# std of head.weight and pos_embed against trunc_normal's 0.02 ...
INIT_STD_TRUNC_NORMAL = 2e-3
# ... and of patch_embed.proj.weight against lecun-normal's 1 / sqrt(fan_in). Both about a tenth
# of the target: far above the sampling noise of tensors this size, far below the std of a
# default or missing init
INIT_STD_LECUN_NORMAL = 3e-3
# softplus(dt_proj.bias) against the init's range [1e-3, 0.1], relative to its ends: float32
# rounding of the inverse softplus the init stores
DT_INIT_RANGE_REL = 1e-3

# =============================================================================================
# mamba_ssm's scan test, widened to its full grid (tests/ops/test_grad_grid.py, issue 19)
# =============================================================================================

# per element, |got - want| <= atol + rtol * |want|, vimc's selective_scan on CPU against
# float32 autograd through the per-step recurrence on the same inputs: the bounds mamba_ssm's
# own test holds its CUDA scan to, as (rtol, atol) per output and gradient. An element beyond
# them passes only where float32 autograd is further from the float64 result than vimc is.
# float32: the forward's bound (out, last state) also holds du, ddelta, dB and dC (tighter than
# the peer, which widens du and ddelta); the weights' gradients get the peer's weight bound, dA
# with its 5x atol. bfloat16 (u, delta, B, C, z, dout; the weights float32): the peer's
# bfloat16 output bound for out and the bfloat16 gradients, the float32 bounds for the float32
# last state and weight gradients, which both sides compute in float32 from the same values.
_F32_FORWARD = (6e-4, 2e-3)
_F32_WEIGHT = (1e-3, 1e-3)
_F32_DA = (1e-3, 5e-3)
_BF16_OUTPUT = (3e-2, 5e-2)
PEER_GRID = {
    torch.float32: {
        **dict.fromkeys(("out", "last_state", "du", "ddelta", "dB", "dC"), _F32_FORWARD),
        **dict.fromkeys(("dD", "dz", "ddelta_bias"), _F32_WEIGHT),
        "dA": _F32_DA,
    },
    torch.bfloat16: {
        **dict.fromkeys(("out", "du", "ddelta", "dB", "dC", "dz"), _BF16_OUTPUT),
        **dict.fromkeys(("last_state", "dD", "ddelta_bias"), _F32_WEIGHT),
        "dA": _F32_DA,
    },
}

# relative L2 error against float64 (the metric of SCAN_REL_ERR), float32 gradients on
# long-memory inputs: vimc's error at most this many times that of float32 autograd through the
# per-step recurrence on the same inputs (benchmarks/results/grad_accuracy-*.md)
GRAD_VS_FP32_AUTOGRAD = 3.0
