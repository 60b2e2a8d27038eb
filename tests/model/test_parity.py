"""The fast path (anti-causal conv + reverse scan, token-major layouts, the fused kernel)
against the reference path (vim.md's flip formulation with the python-loop scan)."""

import pytest
import torch
from vimc.ops.selective_scan import conv as conv_ops
from vimc.ops.selective_scan import cpu

import vimc
from vimc import layers
from vimc.layers import (
    CONV_FORMS,
    SCAN_FORMS,
    BiMambaMixer,
    anticausal_conv1d,
    causal_conv1d,
    conv1d_channel_major,
    mixer_forms,
)

from ..tolerances import (
    CONV_FLOAT16_VS_FLOAT64,
    CONV_FORMS_FLOAT64,
    MIXER_FAST_VS_REFERENCE_FLOAT64,
    MIXER_FAST_VS_REFERENCE_GRAD,
    MIXER_FORMS,
    VIM_TINY_FAST_VS_REFERENCE,
    X_PROJ_PADDED_VS_NOT,
)
from ._helpers import randomize_


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 17, 197])
def test_anticausal_conv_equals_flip_formulation(L):
    E, K = 7, 4
    x = torch.randn(3, E, L, dtype=torch.float64)
    conv = torch.nn.Conv1d(E, E, K, groups=E, padding=K - 1, dtype=torch.float64)
    flip = conv(x.flip(-1))[..., :L].flip(-1)  # the official backward branch's conv
    xt = x.mT.contiguous()  # the convs take token-major (B, L, E)
    torch.testing.assert_close(
        anticausal_conv1d(xt, conv.weight, conv.bias).mT, flip, **CONV_FORMS_FLOAT64
    )
    torch.testing.assert_close(
        causal_conv1d(xt, conv.weight, conv.bias).mT, conv(x)[..., :L], **CONV_FORMS_FLOAT64
    )
    # and on a non-contiguous slice, as the mixer feeds it (x = xz[..., :E])
    xz = torch.randn(2, L, 2 * E, dtype=torch.float64)
    torch.testing.assert_close(
        anticausal_conv1d(xz[..., :E], conv.weight, conv.bias).mT,
        conv(xz[..., :E].mT.flip(-1))[..., :L].flip(-1),
        **CONV_FORMS_FLOAT64,
    )


@pytest.mark.parametrize("silu", [False, True], ids=["plain", "silu"])
@pytest.mark.parametrize("L", [1, 3, 17, 197])
def test_channel_major_conv_equals_the_shifted_sums(L, silu):
    """The one-Conv form node-by-node exports record (conv1d_channel_major) against the
    shifted multiply-adds the model runs, both directions, float64; float32 rounds once."""
    E, K = 7, 4
    xz = torch.randn(2, L, 2 * E, dtype=torch.float64)
    x = xz[..., :E]  # token-major and strided, as the mixer has it
    conv = torch.nn.Conv1d(E, E, K, groups=E, padding=K - 1, dtype=torch.float64)
    for causal, fn in ((True, causal_conv1d), (False, anticausal_conv1d)):
        got = conv1d_channel_major(x.mT, conv.weight, conv.bias, causal, silu)
        want = fn(x, conv.weight, conv.bias, silu=silu).mT
        torch.testing.assert_close(got, want, **CONV_FORMS_FLOAT64)
        half = conv1d_channel_major(x.mT.half(), conv.weight, conv.bias.float(), causal, silu)
        assert half.dtype == torch.float16
        torch.testing.assert_close(half.double(), want, **CONV_FLOAT16_VS_FLOAT64)


@pytest.mark.parametrize("L", [1, 5, 17, 64])
def test_mixer_fast_equals_flip_formulation_float64(L):
    """The reverse scan + anti-causal conv branch equals flip(branch(flip(.))), to float64
    rounding, at odd lengths and a non-default d_state."""
    torch.manual_seed(L)
    mixer = BiMambaMixer(40, d_state=6, dtype=torch.float64)
    randomize_(mixer, seed=L)
    h = torch.randn(3, L, 40, dtype=torch.float64)
    fast = mixer(h)
    mixer.scan_impl = "reference"
    torch.testing.assert_close(fast, mixer(h), **MIXER_FAST_VS_REFERENCE_FLOAT64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_mixer_forms_compute_the_same(dtype):
    """Every (scan_form, conv_form) is the same computation: float64 to rounding, float32
    within the scan's forward bound; unknown forms are refused by name."""
    mixer = randomize_(BiMambaMixer(24, d_state=5, dtype=dtype), seed=5)
    h = torch.randn(2, 13, 24, dtype=dtype)
    with torch.no_grad():
        ref = mixer(h)
        for scan_form in SCAN_FORMS:
            for conv_form in CONV_FORMS:
                mixer.scan_form, mixer.conv_form = scan_form, conv_form
                assert _rel(mixer(h), ref) <= MIXER_FORMS[dtype], (scan_form, conv_form)
    with pytest.raises(ValueError, match="scan_form must be one of"):
        mixer.scan_form = "fused"
    with pytest.raises(ValueError, match="conv_form must be one of"):
        mixer.conv_form = "im2col"


def test_mixer_forms_sets_and_restores_every_mixer():
    """mixer_forms sets the named forms on every mixer for its block and gives each its own
    back (also on error); a class default set there stays a class default; unknown names and
    bad values are refused."""
    model = vimc.create_model("vim_digits", depth=2).eval()
    a, b = (layer.mixer for layer in model.layers)
    a.scan_form = "per_direction"
    with mixer_forms(model, scan_form="token_major", conv_form="shifted", x_proj_align=1):
        assert {(m.scan_form, m.conv_form, m.x_proj_align) for m in (a, b)} == {
            ("token_major", "shifted", 1)
        }
    assert (a.scan_form, b.scan_form, a.conv_form) == ("per_direction", "core", "fused")
    assert "x_proj_align" not in vars(a)  # the class's default again, not a copy of it
    with pytest.raises(RuntimeError, match="boom"), mixer_forms(model, conv_form="shifted"):
        raise RuntimeError("boom")
    assert {m.conv_form for m in (a, b)} == {"fused"}
    with pytest.raises(TypeError, match="no such mixer form"), mixer_forms(model, scan="core"):
        pass
    with pytest.raises(ValueError, match="scan_form must be one of"):
        with mixer_forms(model, scan_form="fused"):
            pass
    assert (a.scan_form, b.scan_form) == ("per_direction", "core")


@pytest.mark.parametrize(
    "d_model,stored,padded", [(192, 44, 48), (384, 56, 64), (768, 80, 80), (40, 35, 48)]
)
def test_x_proj_padded_width(d_model, stored, padded):
    """Vim-Ti/S/B's x_proj widths (dt_rank + 2 x 16) and an odd one: the weight the fast
    forward multiplies by has zero rows up to a multiple of x_proj_align; the stored
    parameter (the official state_dict's shape) is untouched, and 1 turns padding off."""
    mixer = BiMambaMixer(d_model)
    w = mixer.x_proj.weight
    assert w.shape == (stored, 2 * d_model)
    got = mixer._x_proj_weight(w)
    assert got.shape == (padded, 2 * d_model) and mixer.x_proj_width == padded
    assert torch.equal(got[:stored], w) and not got[stored:].any()
    mixer.x_proj_align = 1
    assert mixer._x_proj_weight(w) is w and mixer.x_proj_width == stored


def _graph_ops(fn, *args) -> list:
    """The call targets of the FX graph torch.compile traces for ``fn(*args)``."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    # traced afresh, and forgotten after: whether the C kernel runs is a constant of the trace
    torch._dynamo.reset()
    try:
        out = torch.compile(fn, fullgraph=True, backend=backend)(*args)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    return out, [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]


def test_fused_conv_form_calls_the_pair_op_in_inference_only(monkeypatch):
    """The default conv form: one conv1d_silu_pair call per mixer in an eager forward with
    grad mode off, and one ``vimc::conv1d_silu_pair_fwd`` node in the compiled graph where its
    C kernel runs (CPU, float32); with grad mode on the shifted form, which autograd
    differentiates."""
    mixer = randomize_(BiMambaMixer(24, d_state=5), seed=3)
    mixer.scan_form = "bidirectional"  # the default "core" runs the conv inside mixer_core
    assert mixer.conv_form == "fused"
    calls, pair = [], layers.conv1d_silu_pair

    def spy(*args):
        calls.append(args[0].shape)
        return pair(*args)

    monkeypatch.setattr(layers, "conv1d_silu_pair", spy)
    h = torch.randn(2, 9, 24)
    with torch.no_grad():
        eager = mixer(h)
        assert calls == [(2, 9, 48)]
        compiled, targets = _graph_ops(mixer, h)
    op = torch.ops.vimc.conv1d_silu_pair_fwd.default
    want = 1 if cpu.c_kernel_available() else 0
    assert sum(t in (op, op.overloadpacket) for t in targets) == want
    assert _rel(compiled, eager) <= MIXER_FORMS[torch.float32]
    seen, op_calls, pair_op = len(calls), [], conv_ops._PAIR
    monkeypatch.setattr(conv_ops, "_PAIR", lambda *a: op_calls.append(1) or pair_op(*a))
    mixer(h).sum().backward()  # grad mode on: the shifted form, not the op
    assert len(calls) == seen + 1 and op_calls == []
    assert mixer.conv1d.weight.grad.abs().sum() > 0


def test_compiled_fused_conv_form_is_shifted_without_the_c_kernel(monkeypatch):
    """Where the C kernel does not run, the compiled graph holds the shifted form (one loop
    for Inductor) rather than the op, whose fallback would run it unfused."""
    monkeypatch.setattr(cpu, "c_kernel_available", lambda: False)
    mixer = randomize_(BiMambaMixer(24, d_state=5), seed=3)
    h = torch.randn(2, 9, 24)
    with torch.no_grad():
        eager = mixer(h)
        compiled, targets = _graph_ops(mixer, h)
    names = {str(t) for t in targets}
    assert not any("conv1d_silu_pair" in n for n in names), names
    assert _rel(compiled, eager) <= MIXER_FORMS[torch.float32]


def test_compiled_pair_takes_the_op_only_for_all_float32_cpu_tensors():
    """The compile-time test is the op's own: a float64 weight beside float32 x (which the op
    would run in its eager fallback) gives the shifted form in the graph."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 16, generator=g)
    w, wb = (torch.randn(16, 1, 4, generator=g) for _ in range(2))
    b, bb = (torch.randn(16, generator=g) for _ in range(2))
    with torch.no_grad():
        for weight, want in ((w, int(cpu.c_kernel_available())), (w.double(), 0)):
            out, targets = _graph_ops(layers.conv1d_silu_pair, x, weight, b, wb, bb)
            n = sum("conv1d_silu_pair" in str(t) for t in targets)
            assert n == want, (weight.dtype, targets)
            ref = layers.conv1d_silu_pair(x, weight, b, wb, bb)
            for o, r in zip(out, ref):
                torch.testing.assert_close(o, r.to(o.dtype), rtol=1e-5, atol=1e-6)


def test_core_form_is_one_op_per_mixer_where_its_kernel_runs(monkeypatch):
    """The default scan form: one ``vimc::mixer_core_fwd`` node per mixer in the compiled graph
    where its C kernel runs (grad mode off, CPU float32), and no conv or scan op beside it;
    eager the same numbers as "bidirectional". With grad mode on, or the kernel off, the
    "bidirectional" path (x_proj padded, the fused conv form) and no core op."""
    mixer = randomize_(BiMambaMixer(32, d_state=5), seed=3)  # E = 64: both vector widths
    assert mixer.scan_form == "core"
    h = torch.randn(2, 19, 32)
    with torch.no_grad():
        eager = mixer(h)
        mixer.scan_form = "bidirectional"
        want = mixer(h)
        mixer.scan_form = "core"
        compiled, targets = _graph_ops(mixer, h)
    names = [str(t) for t in targets]
    runs = cpu.c_kernel_available()
    assert sum("mixer_core_fwd" in n for n in names) == int(runs), names
    assert not runs or not any("selective_scan" in n or "conv1d_silu" in n for n in names)
    assert _rel(eager, want) <= MIXER_FORMS[torch.float32]
    assert _rel(compiled, want) <= MIXER_FORMS[torch.float32]
    core_calls, core = [], mixer._core
    monkeypatch.setattr(mixer, "_core", lambda xz: core_calls.append(1) or core(xz))
    with torch.no_grad():
        mixer(h)  # the spy sees the core's calls
    assert core_calls == [1]
    core_calls.clear()
    mixer(h).sum().backward()  # grad mode on: the bidirectional path
    assert core_calls == [] and mixer.x_proj.weight.grad.abs().sum() > 0
    monkeypatch.setattr(cpu, "c_kernel_available", lambda: False)
    with torch.no_grad():
        mixer(h)
        assert core_calls == []
        _, targets = _graph_ops(mixer, h)
    assert not any("mixer_core" in str(t) for t in targets)


def test_x_proj_padding_changes_no_number(monkeypatch):
    """The mixer with x_proj padded (the default) against unpadded: output, input gradient and
    every parameter's gradient (x_proj's keeps its stored shape); the padded run multiplies by
    the 16-row weight."""
    mixer = randomize_(BiMambaMixer(40, d_state=6), seed=7)  # 3 + 12 = 15 columns -> 16
    h, gout = torch.randn(2, 9, 40), torch.randn(2, 9, 40)
    widths, linear = [], torch.nn.functional.linear

    def spy(x, w, *rest):
        widths.append(w.shape[0])
        return linear(x, w, *rest)

    monkeypatch.setattr(layers.F, "linear", spy)
    runs = []
    for align, x_proj_width in ((BiMambaMixer.x_proj_align, 16), (1, 15)):
        mixer.x_proj_align = align
        mixer.zero_grad()
        hh = h.clone().requires_grad_(True)
        widths.clear()
        out = mixer(hh)
        assert widths[:3] == [160, x_proj_width, x_proj_width]  # in_proj, x_proj x 2
        (out * gout).sum().backward()
        runs.append([out, hh.grad] + [p.grad.clone() for p in mixer.parameters()])
    names = [n for n, _ in mixer.named_parameters()]
    assert runs[0][2 + names.index("x_proj.weight")].shape == (15, 80)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, **X_PROJ_PADDED_VS_NOT)


def test_mixer_gradients_fast_vs_reference():
    mixer = randomize_(BiMambaMixer(32, d_state=4), seed=3)
    h = torch.randn(2, 11, 32)
    gout = torch.randn(2, 11, 32)
    grads = []
    for impl in ("fast", "reference"):
        mixer.scan_impl = impl
        mixer.zero_grad()
        hh = h.clone().requires_grad_(True)
        (mixer(hh) * gout).sum().backward()
        grads.append([hh.grad] + [p.grad.clone() for p in mixer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **MIXER_FAST_VS_REFERENCE_GRAD)


@pytest.fixture(scope="module")
def vim_tiny_random():
    torch.manual_seed(0)
    return randomize_(vimc.create_model("vim_tiny"), scale=0.3).eval(), torch.randn(1, 3, 224, 224)


@pytest.mark.slow
def test_vim_tiny_fast_vs_reference_float32(vim_tiny_random):
    m, x = vim_tiny_random
    with torch.no_grad():
        m.scan_impl = "fast"
        fast = m(x)
        m.scan_impl = "reference"
        ref = m(x)
        m.scan_impl = "fast"
    assert _rel(fast, ref) <= VIM_TINY_FAST_VS_REFERENCE[torch.float32]


@pytest.mark.slow
def test_vim_tiny_fast_vs_reference_bfloat16(vim_tiny_random):
    m, x = vim_tiny_random
    mb = vimc.create_model("vim_tiny", dtype=torch.bfloat16).eval()
    mb.load_state_dict(m.state_dict())
    xb = x.to(torch.bfloat16)
    with torch.no_grad():
        fast = mb(xb)
        mb.scan_impl = "reference"
        ref = mb(xb)
    assert fast.dtype == torch.bfloat16
    assert _rel(fast, ref) <= VIM_TINY_FAST_VS_REFERENCE[torch.bfloat16]
