"""vimc.ops.mixer_core (the op ``vimc::mixer_core_fwd``, one fused C kernel call on CPU in
float32 for a Vim mixer's conv, x_proj, dt_proj, both scans and the gate) against its
composition from the package's separate functions, on float64 copies."""

from __future__ import annotations

import ctypes

import pytest
import torch
from vimc.ops import mixer_core, mixer_core_available, poison_outputs
from vimc.ops.selective_scan import cpu
from vimc.ops.selective_scan import mixer as mixer_ops

from ..tolerances import MIXER_CORE_REL_ERR
from ._scan_cases import mixer_core_args, rel_err

OP = torch.ops.vimc.mixer_core_fwd.default
needs_c = pytest.mark.skipif(not cpu.c_kernel_available(), reason="no C kernel here")


def _want(args):
    with torch.no_grad():
        return mixer_ops.mixer_core_composed(*(a.double() for a in args))


@needs_c
@pytest.mark.parametrize(
    "B, L, E, N, R, K",
    [
        (1, 197, 384, 16, 12, 4),  # Vim-Ti's layer at batch 1
        (2, 40, 32, 16, 12, 4),
        (3, 17, 16, 5, 3, 3),  # N off the state block, a chunk and one step
        (1, 1, 16, 1, 1, 1),  # one token, one state, one tap
        (2, 33, 48, 6, 24, 2),  # x_proj wider than one pass of output vectors (R + 2N = 36)
        (1, 16, 32, 16, 48, 4),  # Vim-B's dt rank: 80 x_proj rows, two passes
        (1, 2, 16, 4, 2, 4),  # more taps than steps: every conv window reaches past both ends
    ],
)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_core_matches_its_composition(B, L, E, N, R, K, threads):
    """Sizes through every chunk and tail of the kernel's loops, on fewer threads than batch
    rows (a task per row) and more (a task per row and direction); every output written."""
    args = mixer_core_args(B, L, E, N, R, K)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), poison_outputs():
            got = OP(*args)
    finally:
        torch.set_num_threads(old)
    assert got.shape == (B, L, E) and got.dtype == torch.float32 and got.is_contiguous()
    assert rel_err(got, _want(args)) <= MIXER_CORE_REL_ERR


@needs_c
def test_thread_counts_and_work_splits_agree_exactly():
    """A task per batch row (the forward direction's y kept per thread) and a task per row and
    direction (y through memory, then the gate) compute the same numbers in the same order."""
    args = mixer_core_args(2, 37, 32, 16, 4, 4, seed=1)
    outs = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(OP(*args))
    finally:
        torch.set_num_threads(old)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=0)


@needs_c
@pytest.mark.parametrize(
    "a_scale, dt_shift",
    [(1.0, 40.0), (-1.0, -2.0)],
    ids=["decays-below-2^-126", "growing-states"],
)
def test_decays_outside_the_bounded_form(a_scale, dt_shift):
    """Exponents below -126 (a large delta: the clamped form) and A > 0 (growing states: the
    plain exp) take the kernel's other decay forms, as the scan's do."""
    args = mixer_core_args(1, 24, 16, 4, 2, 4, seed=2, a_scale=a_scale, dt_shift=dt_shift)
    if a_scale < 0:  # a growing state over 24 steps: keep it finite
        args = (*args[:11], args[11] * 0.05, args[12] * 0.05, *args[13:])
    with torch.no_grad():
        got = OP(*args)
    assert rel_err(got, _want(args)) <= MIXER_CORE_REL_ERR


@needs_c
def test_nan_input_reaches_the_output():
    """A NaN in x reaches the outputs the composition's NaN reaches (x_proj mixes every channel
    of its conv window's steps, and each direction's states carry it on: here all of them); a
    NaN in z reaches its own output alone."""
    args = list(mixer_core_args(1, 20, 16, 4, 2, 4, seed=3))
    args[0] = args[0].clone()
    args[0][0, 10, 3] = float("nan")  # x of channel 3 at step 10
    with torch.no_grad():
        got, want = OP(*args), mixer_ops.mixer_core_composed(*args)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    args[0] = mixer_core_args(1, 20, 16, 4, 2, 4, seed=3)[0].clone()
    args[0][0, 10, 16 + 3] = float("nan")  # z of channel 3 at step 10
    with torch.no_grad():
        got = OP(*args)
    only = torch.zeros_like(got, dtype=torch.bool)
    only[0, 10, 3] = True
    assert torch.equal(got.isnan(), only)


@needs_c
def test_a_checked_layout_skips_the_checks(monkeypatch):
    """The second call with a layout goes straight to the kernel; a storage shrunk under that
    layout is refused by name on the full path."""
    args = mixer_core_args(1, 9, 16, 4, 2, 4, seed=4)
    mixer_ops._CHECKED.clear()
    with torch.no_grad():
        first = OP(*args)
        monkeypatch.setattr(mixer_ops, "_check_core", lambda a: pytest.fail("checked again"))
        torch.testing.assert_close(OP(*args), first, rtol=0, atol=0)
        monkeypatch.undo()
        D = args[13].clone()
        D.untyped_storage().resize_(8)
        shrunk = (*args[:13], D, args[14])
        with pytest.raises(ValueError, match="D reaches past the end of its storage"):
            OP(*shrunk)


def test_composition_where_the_kernel_does_not_run():
    """float64, a width off the kernel's vector (E = 12) and grad mode: the composition, and
    mixer_core_available says so."""
    for args in (
        tuple(a.double() for a in mixer_core_args(1, 9, 16, 4, 2, 4)),
        mixer_core_args(2, 9, 12, 4, 2, 4),
    ):
        with torch.no_grad():
            assert not mixer_core_available(args[0], args[1:])
            torch.testing.assert_close(
                OP(*args), mixer_ops.mixer_core_composed(*args), rtol=0, atol=0
            )
    args = [a.requires_grad_(True) for a in mixer_core_args(1, 9, 16, 4, 2, 4)]
    assert not mixer_core_available(args[0], args[1:])
    mixer_core(*args).sum().backward()
    assert all(a.grad is not None for a in args)


@pytest.mark.parametrize(
    "index, bad, message",
    [
        (0, torch.randn(2, 9), "xz must be \\(B, L, 2E\\)"),
        (0, torch.randn(2, 9, 33), "xz must be \\(B, L, 2E\\)"),
        (11, torch.randn(16, 4, 1), "A must be \\(E, N\\)"),
        (7, torch.randn(16), "dt_proj_weight must be \\(E, R\\)"),
        (1, torch.randn(16, 4), "conv_weight must be \\(E, 1, K\\)"),
        (6, torch.randn(9, 16), "x_proj_weight_b must have shape \\(10, 16\\)"),
        (14, torch.randn(15), "D_b must have shape \\(16,\\)"),
        (12, torch.randn(16, 4, dtype=torch.float64)[:, :3], "A_b must have shape"),
        (2, torch.ones(16, dtype=torch.int32), "conv_bias must be a floating-point tensor"),
        (4, "bias", "argument 'conv_bias_b' but instead found type 'str'"),  # the dispatcher
        (13, torch.randn(16, device="meta"), "D must be on xz's device"),
    ],
)
def test_bad_arguments_are_named(index, bad, message):
    args = list(mixer_core_args(1, 9, 16, 4, 2, 4))
    args[index] = bad
    with torch.no_grad(), pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        OP(*args)


class _FakeLayout:
    """A library's vimc_mixer_layout reporting ``offsets`` (each field's, then the size)."""

    def __init__(self, offsets):
        def layout(i):
            return offsets[i] if 0 <= i < len(offsets) else -1

        layout.argtypes = layout.restype = None
        self.vimc_mixer_layout = layout


def test_mixer_struct_layouts_are_compared_field_by_field():
    """cpu.bind refuses a library whose MixerArgs differs from cpu._MixerArgs, naming the
    first field where they part: two fields swapped, a field added on the C side, another
    size. The loaded library agrees."""
    fields = [name for name, _ in cpu._MixerArgs._fields_]
    ours = [getattr(cpu._MixerArgs, n).offset for n in fields] + [ctypes.sizeof(cpu._MixerArgs)]
    assert cpu._mixer_layout_differs(_FakeLayout(ours)) is None
    swapped = list(ours)
    i, j = fields.index("out"), fields.index("y")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert cpu._mixer_layout_differs(_FakeLayout(swapped)) == "out"
    assert cpu._mixer_layout_differs(_FakeLayout([*ours[:-1], ours[-1] + 8])) == "the struct's size"
    longer = [*ours[:-1], ours[-1], ours[-1] + 8]  # a field added at the end in C only
    assert cpu._mixer_layout_differs(_FakeLayout(longer)) == "a field cpu.py lacks"
    assert cpu._mixer_layout_differs(object()).startswith("every field")  # an older build
    if cpu.c_kernel_available():
        assert cpu._mixer_layout_differs(cpu._lib) is None
    # the op's argument -> word map covers every parameter field word once
    words = sorted(at for at, _ in mixer_ops._PARAM_WORDS)
    first = mixer_ops._AT["conv_w"]
    assert words == list(range(first, first + 14))
