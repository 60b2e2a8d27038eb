"""Call plans for the fused CPU kernel's forward ops: the checks and the packing once per layout.

What an op's checks conclude (``_checks.py``) and how ``cpu._pack`` lays out the kernel's
argument words depend only on each argument's dtype, shape, strides, storage offset and
device, plus the flags and the thread count. A Vim forward calls the scan op once per layer,
24 times with one such signature, and in a compiled graph that call is the op's Python kernel
every time: on the Ice Lake worker the full checks and packing took about 130 us of a batch-1
layer call of about 0.5 ms (``benchmarks/bidirectional.py``'s ``full path`` rows against the
planned ones; ``benchmarks/model.py``'s ``unplanned`` column for the whole model).

So the first call of a signature runs the op's own checks and packs the words as ever; the
plan keeps those words with every pointer taken out. A later call with that signature checks
what can differ between tensors of equal layout, each storage's size (``check_storage``'s
condition: a storage may be resized under a view), and writes the pointers of this call's
tensors, its fresh outputs and the scratch buffer into a copy of the words. Anything a plan
does not cover (a tensor not float32, a parameter that would need a contiguous copy, an empty
scan, another device, the torch path) gets ``None`` from ``run`` and the op's full path.
"""

from __future__ import annotations

import array
import contextlib
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import cpu
from ._alloc import new_output, new_output_like
from ._checks import ScanDims, storage_end

_MAX_PLANS = 256  # signatures kept per op; a process that exceeds it starts over
_POINTER_WORDS = frozenset(
    cpu._AT[name] for name, ctype in cpu._ScanArgs._fields_ if ctype is cpu.ctypes.c_void_p
)


class OpSpec(NamedTuple):
    """Where an op's arguments go in a kernel call. ``ins``: the op argument index of each
    kernel input in ``cpu._INPUTS`` order (None: absent), ``proj`` the dt_proj weight's; the
    ``pair_*`` ones likewise for the reverse direction of a pair (``pair_ins`` None: a single
    scan), ``softplus`` the delta_softplus flag's and ``reverse`` the single scan's reverse
    flag's (None: the first direction runs forward). ``check``: the op's own full checks on
    its argument tuple -> the sizes."""

    check: Callable[[tuple], ScanDims]
    ins: tuple
    softplus: int
    reverse: int | None = None
    proj: int | None = None
    pair_ins: tuple | None = None
    pair_proj: int | None = None
    last_states: bool = True


class _Words(NamedTuple):
    """One direction's packed words with every pointer 0, and where its tensors' pointers go:
    (word, op argument index) per input."""

    words: array.array
    pointers: tuple


class _Plan(NamedTuple):
    main: _Words
    pair: _Words | None
    last_shape: tuple
    scratch_floats: int  # of the per-thread scratch buffer, all threads together
    storage_ends: tuple  # (op argument index, bytes its storage must hold) per nonempty tensor


def signature(args: tuple) -> tuple | None:
    """What the checks and the packing read of ``args``: per tensor its dtype, shape, strides,
    storage offset, whether it is on the CPU and its layout (a sparse tensor reports strides
    too, those of no dense tensor it could be mistaken for), and each other argument itself;
    the thread count first. None where an argument is not a tensor, None or a bool, or a
    tensor has no strides at all (nested): the op's full path then runs and names what is
    wrong, if anything is."""
    try:
        key = [
            (a.dtype, a.shape, a.stride(), a.storage_offset(), a.is_cpu, a.layout)
            if isinstance(a, torch.Tensor)
            else a
            for a in args
        ]
    except RuntimeError:  # stride() of a tensor that has none
        return None
    if not all(a is None or a.__class__ in (tuple, bool) for a in key):
        return None
    return (torch.get_num_threads(), *key)


# pointer words every call fills in itself (_call, _fill), besides the tensor arguments'
_CALL_POINTERS = frozenset(cpu._AT[n] for n in ("out", "last_state", "scratch", "pair"))


def _template(words: array.array, args_at: dict[int, int]) -> _Words:
    """``words`` as packed for a real call with every pointer word set to 0; ``args_at`` maps
    the pointer word of each tensor argument to its op argument index. A pointer the packing
    set that neither it nor _CALL_POINTERS refills is refused here, once per signature,
    rather than left pointing at the first call's tensors."""
    unplanned = {at for at in _POINTER_WORDS if words[at] != 0} - set(args_at) - _CALL_POINTERS
    if unplanned:
        raise AssertionError(f"cpu_plans: pointer words {unplanned} unplanned")
    template = array.array("q", words)
    for at in _POINTER_WORDS:
        template[at] = 0
    return _Words(template, tuple(args_at.items()))


def _build(spec: OpSpec, args: tuple) -> _Plan | None:
    """Runs the op's checks on ``args`` (raising as the op does) -> a plan, or None where the
    plan does not cover these arguments."""
    dims = spec.check(args)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if (
        not cpu.c_kernel_available()
        or cpu._is_empty(dims)
        or any(t.dtype != torch.float32 or not t.is_cpu for t in tensors)
    ):
        return None
    directions = [(spec.ins, spec.proj, False if spec.reverse is None else args[spec.reverse])]
    if spec.pair_ins is not None:
        directions.append((spec.pair_ins, spec.pair_proj, True))
    # the kernel reads A, D, delta_bias and dt_proj contiguous (cpu._vec would copy them)
    for ins, proj, _ in directions:
        params = [args[i] for i in (ins[2], ins[5], ins[7], proj) if i is not None]
        if not all(p is None or p.is_contiguous() for p in params):
            return None
    T = cpu._threads(cpu._items(dims))
    last_shape = (dims.Bt, dims.E, dims.N)
    # one real packing per direction, on this call's tensors and outputs made as run() makes
    # them (the out strides are packed words)
    out = new_output_like(args[0], torch.float32)
    lasts = [
        new_output(last_shape, torch.float32, out.device) if spec.last_states else None
        for _ in directions
    ]
    packed = []
    for d, (ins, proj, reverse) in enumerate(directions):
        kernel_ins = [None if i is None else args[i] for i in ins]
        outs = {"last_state": lasts[d], "dt_proj": None if proj is None else args[proj]}
        if d == 0:
            outs["out"] = out
        words = cpu._pack(dims, kernel_ins, args[spec.softplus], reverse, T, outs)
        args_at = {at: i for (at, _), i, t in zip(cpu._IN_SLOTS, ins, kernel_ins) if t is not None}
        if proj is not None:
            args_at[cpu._AT["dt_proj"]] = proj
        packed.append(_template(words, args_at))
    ends = tuple((i, storage_end(a)) for i, a in enumerate(args)
                 if isinstance(a, torch.Tensor) and a.numel() > 0)  # fmt: skip
    scratch = packed[0].words[cpu._AT["scratch_floats"]] * T
    return _Plan(packed[0], packed[1] if len(packed) == 2 else None, last_shape, scratch, ends)


_bypassed = False


@contextlib.contextmanager
def bypassed():
    """Within this block (in any thread) no plan serves a call: every op call takes its full
    path. For tests and benchmarks that set the two paths side by side."""
    global _bypassed
    old, _bypassed = _bypassed, True
    try:
        yield
    finally:
        _bypassed = old


class PlannedOp:
    """One op's plans by signature."""

    def __init__(self, spec: OpSpec):
        self.spec = spec
        self.plans: dict[tuple, _Plan | None] = {}

    def run(self, args: tuple):
        """The op's result for ``args`` through a plan -> (out, last states...), or None where
        no plan covers them (the caller then runs its full path)."""
        # a CUDA call is never planned: one attribute read, not a whole signature, says so.
        # The C kernel's availability is asked per call: a plan made while it was there must
        # not outlive it (tests switch it off to run the torch path).
        u = args[0]
        if _bypassed or not (isinstance(u, torch.Tensor) and u.is_cpu):
            return None
        if not cpu.c_kernel_available():
            return None
        key = signature(args)
        if key is None:
            return None
        plan = self.plans.get(key, _MISSING)
        if plan is _MISSING:
            plan = _build(self.spec, args)
            if len(self.plans) >= _MAX_PLANS:
                self.plans.clear()
            self.plans[key] = plan
        if plan is None:
            return None
        for i, end in plan.storage_ends:
            if args[i].untyped_storage().nbytes() < end:
                return None  # the full path's storage check says which and why
        return _call(plan, args, self.spec.last_states)


class CheckedLayouts:
    """For ops that pack nothing (the conv pair, the mixer core): the layouts, by
    :func:`signature`, whose full checks passed, each with what its op derived from them and
    the bytes each tensor argument's storage must hold. A later call with that layout checks
    only those storages (a storage can shrink under a view of equal layout)."""

    def __init__(self):
        self._layouts: dict[tuple, tuple] = {}

    def clear(self) -> None:
        self._layouts.clear()

    def remember(self, args: tuple, derived) -> None:
        """``args`` passed their op's full checks; ``derived``: what the op needs of them."""
        key = signature(args)
        if key is None:
            return
        if len(self._layouts) >= _MAX_PLANS:
            self._layouts.clear()
        ends = tuple((i, storage_end(t)) for i, t in enumerate(args)
                     if isinstance(t, torch.Tensor) and t.numel())  # fmt: skip
        self._layouts[key] = (derived, ends)

    def lookup(self, args: tuple):
        """What was derived from ``args``'s layout if it passed the full checks before and each
        tensor still lies inside its storage; else None (the op's full path then runs, and its
        storage check says which tensor and why)."""
        x = args[0]  # a CUDA call is never served: one attribute read, not a signature, says so
        if not (self._layouts and isinstance(x, torch.Tensor) and x.is_cpu):
            return None
        if _bypassed or not cpu.c_kernel_available():
            return None
        key = signature(args)
        hit = self._layouts.get(key) if key is not None else None
        if hit is None:
            return None
        derived, ends = hit
        for i, end in ends:
            if args[i].untyped_storage().nbytes() < end:
                return None
        return derived


_MISSING = object()
_OUT, _LAST, _SCRATCH, _PAIR = (cpu._AT[n] for n in ("out", "last_state", "scratch", "pair"))


def _fill(w: _Words, args: tuple, scratch: int, last) -> array.array:
    words = array.array("q", w.words)
    for at, i in w.pointers:
        words[at] = args[i].data_ptr()
    words[_SCRATCH] = scratch
    if last is not None:
        words[_LAST] = last.data_ptr()
    return words


def _call(plan: _Plan, args: tuple, last_states: bool):
    u = args[0]
    out = new_output_like(u, torch.float32)  # u's layout, as the fake kernels promise
    n = 1 if plan.pair is None else 2
    lasts = [
        new_output(plan.last_shape, torch.float32, u.device) if last_states else None
        for _ in range(n)
    ]
    scratch = cpu._scratch_buffer(plan.scratch_floats).data_ptr()
    words = _fill(plan.main, args, scratch, lasts[0])
    words[_OUT] = out.data_ptr()
    if plan.pair is not None:
        pair_words = _fill(plan.pair, args, scratch, lasts[1])
        words[_PAIR] = pair_words.buffer_info()[0]
    cpu._call(cpu._lib.vimc_scan_fwd, words)  # pair_words lives until here
    return (out, *lasts)
