"""The selective scan on CPU: a fused C kernel when a C compiler is present, else chunked torch.

The C kernel (``cpu_kernel.c``) is called through ctypes (no torch headers). An installed wheel
carries it prebuilt for each instruction-set level (setup.py) and the best one this CPU runs
is loaded; a source checkout builds it on first use with the compiler that ``torch.compile``
already needs on a CPU, cached under ``$VIMC_CACHE_DIR`` (default ``~/.cache/vimc``; see
_cbuild.py; the README gives the build time). Where neither works, a RuntimeWarning says why,
once. :func:`kernel_info` tells which kernel runs and where it came from.
``VIMC_CPU_KERNEL=torch`` (read at import) forces the pure-torch path; it is also what float64
inputs take. ``VIMC_CPU_LEVEL=<level>`` (read at import; a level _cbuild.LEVELS lists, e.g.
``x86-64-v3``) loads or builds the kernel for that instruction-set level instead of the best
one this CPU runs: to compare the variants on one machine, or to step around one.
``VIMC_SCAN_DECAY=<form>`` (read when the kernel loads; one of :data:`DECAY_FORMS` that the
build has) sets how the forward computes its decays where every exponent is in [-126, 0];
by default the kernel picks one by the CPU's kind (cpu_kernel.c's bounded_decay says why). The
ONNX Runtime plugin, which compiles the same kernel in, always takes that default.

The torch path is chunked: within a chunk of ``CHUNK`` steps the state is a masked sum with
``exp(segsum)`` weights (every exponent <= 0, so it is stable for any L), and one state per
(row, channel) is carried between chunks: memory O(Bt*E*N*CHUNK^2), never O(Bt*E*N*L).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import os
import threading
import warnings

import torch

from . import _cbuild
from ._alloc import new_output, new_output_like
from ._checks import KERNEL, MAX_DT_RANK, ScanDims, check_scan_args, check_storage
from .reference import softplus

CHUNK = 16

# ---------------------------------------------------------------------------------------------
# the C kernel: build, load, call
# ---------------------------------------------------------------------------------------------

# channels per vector of the loaded kernel (cpu_kernel.c: 16 in an AVX-512 build, else 8), set
# from the library when it loads; it sizes the scratch, the work items and the dB/dC partials
LANES = 8
_SCRATCH_ROWS = 12  # (L, LANES) rows per thread: cpu_kernel.c's BWD_SCRATCH_ROWS (fwd: fewer)


class _Strides3(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("b", "e", "t")]


class _Strides4(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("b", "g", "n", "t")]


_STRIDED3 = ("u", "delta", "z", "out", "dout", "du", "ddelta", "dz")  # (Bt, E, L)
_STRIDED4 = ("B", "C")  # (Bt, G, N, L)


class _ScanArgs(ctypes.Structure):
    _fields_ = (
        [
            (n, ctypes.c_int64)
            for n in ("Bt", "E", "L", "N", "G", "delta_softplus", "reverse", "nthreads")
        ]
        + [
            (n, ctypes.c_void_p)
            for n in (
                "u",
                "delta",
                "A",
                "B",
                "C",
                "D",
                "z",
                "bias",
                "out",
                "last_state",
                "dout",
                "dlast",
                "du",
                "ddelta",
                "dz",
                "dA_part",
                "dD_part",
                "dbias_part",
                "dB_part",
                "dC_part",
                "scratch",
            )
        ]
        + [("scratch_floats", ctypes.c_int64)]
        + [("s_" + n, _Strides3) for n in _STRIDED3]
        + [("s_" + n, _Strides4) for n in _STRIDED4]
        + [("pair", ctypes.c_void_p), ("dt_proj", ctypes.c_void_p), ("R", ctypes.c_int64)]
    )


_lib = None
_lib_error: str | None = None
_lib_lock = threading.Lock()
# read once at import: an os.environ lookup per scan call would add to every call
_FORCED_TORCH = os.environ.get("VIMC_CPU_KERNEL", "").lower() == "torch"
_FORCED_LEVEL = os.environ.get("VIMC_CPU_LEVEL") or None


_lib_source: str | None = None  # where the loaded kernel came from, for kernel_info()


def _load() -> tuple[ctypes.CDLL, str]:
    """The kernel library and where it came from: the best prebuilt variant this CPU runs (a
    wheel carries one per instruction-set level, see setup.py; the OpenMP one first, if its
    libgomp loads), else a first-use build for this CPU with the system C compiler."""
    problems = []
    if _FORCED_LEVEL is not None:
        _cbuild.check_level(_FORCED_LEVEL)
    for stem in ("vimc_scan_omp", "vimc_scan"):
        found = _cbuild.prebuilt(stem, _FORCED_LEVEL)
        if found is None:
            continue
        path, level = found
        try:
            return ctypes.CDLL(str(path)), f"prebuilt for {level} ({path.name}, in the package)"
        except OSError as exc:
            problems.append(f"{path.name}: {exc}")
    # -march=native is not known to every compiler; OpenMP lets the kernel share torch's
    # thread pool (see run_parallel in the C file), pthreads otherwise
    variants = [["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []]
    if _FORCED_LEVEL is not None:
        variants = [[f"-march={_FORCED_LEVEL}", "-fopenmp"], [f"-march={_FORCED_LEVEL}"]]
    try:
        path = _cbuild.build("cpu_kernel.c", "vimc_scan", variants)
    except RuntimeError as exc:
        raise RuntimeError("; ".join([*problems, str(exc)])) from None
    where = f"for {_FORCED_LEVEL} (VIMC_CPU_LEVEL)" if _FORCED_LEVEL else "for this CPU"
    return ctypes.CDLL(str(path)), f"built at first use {where} ({path})"


class _MixerArgs(ctypes.Structure):  # cpu_kernel.c's MixerArgs (mixer.py packs it)
    _fields_ = (
        [("xz", ctypes.c_void_p)]
        + [(n, ctypes.c_int64) for n in ("B", "L", "E", "N", "R", "K", "nthreads")]
        + [  # (forward, reverse) each
            (n, ctypes.c_void_p * 2)
            for n in ("conv_w", "conv_b", "x_proj", "dt_w", "dt_b", "A", "D")
        ]
        + [(n, ctypes.c_void_p) for n in ("out", "y", "scratch")]
        + [("scratch_floats", ctypes.c_int64), ("shared", ctypes.c_void_p)]
    )


def _mixer_layout_differs(lib: ctypes.CDLL) -> str | None:
    """The first MixerArgs field whose offset the library and _MixerArgs disagree on (or
    "the struct's size"), None where they agree."""
    if not hasattr(lib, "vimc_mixer_layout"):  # a build of an older revision
        return "every field (the library reports no layout)"
    lib.vimc_mixer_layout.argtypes, lib.vimc_mixer_layout.restype = [ctypes.c_int64], ctypes.c_int64
    ours = [getattr(_MixerArgs, n).offset for n, _ in _MixerArgs._fields_]
    ours.append(ctypes.sizeof(_MixerArgs))
    names = [n for n, _ in _MixerArgs._fields_] + ["the struct's size"]
    for i, (name, offset) in enumerate(zip(names, ours)):
        if lib.vimc_mixer_layout(i) != offset:
            return name
    return None if lib.vimc_mixer_layout(len(ours)) == -1 else "a field cpu.py lacks"


def bind(lib: ctypes.CDLL) -> int:
    """Declares a loaded kernel library's entry points and checks that it packs the argument
    struct as this file does (any other build of cpu_kernel.c would read garbage) -> its
    LANES. RuntimeError where it disagrees."""
    lib.vimc_scan_abi.restype = lib.vimc_scan_lanes.restype = ctypes.c_int64
    lanes = lib.vimc_scan_lanes()
    if lanes not in (8, 16) or lib.vimc_scan_abi() != ctypes.sizeof(_ScanArgs) * 1000 + lanes:
        raise RuntimeError("cpu_kernel.c and cpu.py disagree on the argument struct")
    for fn in (lib.vimc_scan_fwd, lib.vimc_scan_bwd):
        fn.argtypes = [ctypes.c_void_p]  # a packed _ScanArgs (see _pack)
        fn.restype = ctypes.c_int  # 0, or -1 where it refused the sizes it was given
    # conv.py's kernel: x, B, L, E, x's batch and step strides, w, bias, w_b, bias_b, K, out,
    # out_b, threads. Absent only from builds of older revisions, which benchmarks/scan_builds.py
    # loads to time their scans
    if hasattr(lib, "vimc_conv_silu_pair"):
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.vimc_conv_silu_pair.argtypes = [ptr, *[i64] * 5, *[ptr] * 4, i64, ptr, ptr, i64]
        lib.vimc_conv_silu_pair.restype = ctypes.c_int
    # mixer.py's kernel: a packed _MixerArgs; absent from older builds
    if hasattr(lib, "vimc_mixer_fwd"):
        differs = _mixer_layout_differs(lib)
        if differs:
            raise RuntimeError(
                f"cpu_kernel.c and cpu.py disagree on the mixer's argument struct at {differs}"
            )
        lib.vimc_mixer_scratch.argtypes = lib.vimc_mixer_shared.argtypes = [ctypes.c_int64] * 4
        lib.vimc_mixer_scratch.restype = lib.vimc_mixer_shared.restype = ctypes.c_int64
        lib.vimc_mixer_fwd.argtypes = [ctypes.c_void_p]
        lib.vimc_mixer_fwd.restype = ctypes.c_int
    if hasattr(lib, "vimc_scan_set_decay"):  # the same: older builds have one form
        for fn in (lib.vimc_scan_set_decay, lib.vimc_scan_has_decay):
            fn.argtypes, fn.restype = [ctypes.c_char_p], ctypes.c_int
        lib.vimc_scan_decay.restype = ctypes.c_char_p
        wanted = os.environ.get("VIMC_SCAN_DECAY")
        if wanted:
            use_decay_form(lib, wanted)
    return lanes


# the forward's decay forms for exponents in [-126, 0] (cpu_kernel.c's vexp2_nonpos*): the
# integer-add exp2, vscalefps (AVX-512 builds), the table form (AVX2 and AVX-512 builds)
DECAY_FORMS = ("exp2", "exp2-scalef", "exp2-table")


def decay_forms(lib: ctypes.CDLL) -> list[str]:
    """The decay forms a loaded kernel library has, the one it runs first."""
    if not hasattr(lib, "vimc_scan_set_decay"):
        return ["exp2"]
    current = lib.vimc_scan_decay().decode()
    others = [f for f in DECAY_FORMS if f != current]
    return [current] + [f for f in others if lib.vimc_scan_has_decay(f.encode())]


def use_decay_form(lib: ctypes.CDLL, form: str) -> None:
    """Makes a loaded kernel library compute its bounded decays in ``form`` from the next work
    item on (process-wide; each direction of an item is computed in one form). ValueError where
    the library lacks it, naming the forms it has."""
    forms = decay_forms(lib)
    if form not in forms:
        raise ValueError(
            f"VIMC_SCAN_DECAY / decay form must be one of this kernel build's {sorted(forms)}, "
            f"got {form!r}"
        )
    lib.vimc_scan_set_decay(form.encode())


def _build() -> ctypes.CDLL:
    global _lib_source, LANES
    lib, source = _load()
    LANES = bind(lib)
    _lib_source = source
    return lib


def c_kernel_available() -> bool:
    """Whether the fused C kernel can be used (loads or builds it on first call). Where it
    cannot, says why once (a RuntimeWarning) and the scans take the slower torch path."""
    global _lib, _lib_error
    if _lib is not None:  # the per-call fast path: no lock
        return not _FORCED_TORCH
    if _FORCED_TORCH:
        return False
    with _lib_lock:
        if _lib is None and _lib_error is None:
            try:
                _lib = _build()
            except (RuntimeError, OSError) as exc:
                _lib_error = str(exc)
                warnings.warn(
                    "vimc: the fused C scan kernel is unavailable, so CPU scans use the "
                    f"slower torch path. Reason: {_lib_error}",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _lib is not None


def kernel_info() -> dict:
    """Which CPU scan kernel runs and where it came from, whether a Vim mixer's core runs as
    one call of it, and where the ONNX Runtime plugin would come from (``vimc info
    --kernels``). Loads or builds the scan kernel if not yet."""
    level = _cbuild.cpu_level()
    info = {"cpu": f"{_cbuild.arch()}, instruction-set level {level or 'unknown'}"}
    c_kernel = c_kernel_available()
    if _FORCED_TORCH:
        info["scan kernel"] = "torch (VIMC_CPU_KERNEL=torch)"
    elif c_kernel:
        form = decay_forms(_lib)[0]
        info["scan kernel"] = (
            f"C (fused, {LANES} channels per vector, {form} decays), {_lib_source}"
        )
    else:
        info["scan kernel"] = f"torch, because the C kernel is unavailable: {_lib_error}"
    # mixer.py's mixer_core_available, its conditions on the model and the call in words
    info["mixer core"] = (
        f"one C call per Vim mixer (conv, x_proj, dt_proj, scan, gate) in CPU float32 "
        f"inference, for inner widths that are multiples of {LANES} and dt ranks up to "
        f"{MAX_DT_RANK}"
        if c_kernel
        else "the separate ops, one after another (no C kernel)"
    )
    plugin = _cbuild.prebuilt("vimc_ort_plugin")
    info["onnxruntime plugin"] = (
        f"prebuilt for {plugin[1]} ({plugin[0].name}, in the package)"
        if plugin
        else "built at first use (no prebuilt plugin in this install)"
    )
    return info


def c_kernel_error() -> str | None:
    """Why the C kernel is unavailable, if it is."""
    return _lib_error


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """float32 with t's strides (the kernel reads any strides; (E,), (E, N) are contiguous)."""
    if t is None or t.dtype == torch.float32:
        return t  # the common case: no conversion, no Python-level call into torch
    return t.to(torch.float32)


def _vec(t: torch.Tensor | None) -> torch.Tensor | None:
    """The per-channel parameters (A, D, delta_bias): float32, contiguous."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.to(torch.float32).contiguous()


_scratch = threading.local()


def _scratch_buffer(numel: int) -> torch.Tensor:
    """Per-calling-thread staging memory, grown on demand and reused across calls (a Vim
    forward makes 48 scan calls of the same size)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _scratch.buf = torch.empty(numel, dtype=torch.float32)
    return buf


def _threads(items: int) -> int:
    return max(1, min(torch.get_num_threads(), items, 64))


# _ScanArgs is all 8-byte words (int64 and pointers), so a call packs it as one flat int64
# array.array, a single C-level copy, instead of filling the ctypes Structure field by field
# (one Python-level setattr per field): a Vim forward makes 48 calls, so per-call overhead counts
_WORDS = ctypes.sizeof(_ScanArgs) // 8
_AT = {name: getattr(_ScanArgs, name).offset // 8 for name, _ in _ScanArgs._fields_}
assert ctypes.sizeof(_ScanArgs) == 8 * _WORDS and all(
    getattr(_ScanArgs, n).size % 8 == 0 for n in _AT
)
_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "bias")  # the order of _inputs()
# per tensor argument: (word of its pointer, word of its first stride or None)
_SLOTS = {n: (_AT[n], _AT.get("s_" + n)) for n in _AT}
_IN_SLOTS = [_SLOTS[n] for n in _INPUTS]


def _pack(dims: ScanDims, ins, delta_softplus, reverse, nthreads, outs) -> array.array:
    """``ins`` (the 8 inputs in _INPUTS order, None where absent) and ``outs`` (field name ->
    tensor: the outputs, and a dt_proj weight, whose R it also sets) as a _ScanArgs word
    array, sized by ``dims`` (check_scan_args' answer for ``ins``: the kernel's loops trust
    it; no size 0: empty scans never reach C, see _is_empty). Kept lean: it runs per scan."""
    per_thread = _SCRATCH_ROWS * dims.L * LANES
    words = [0] * _WORDS
    words[:8] = *dims, delta_softplus, reverse, nthreads
    words[_AT["scratch_floats"]] = per_thread
    words[_AT["scratch"]] = _scratch_buffer(nthreads * per_thread).data_ptr()
    for (at, st), t in [*zip(_IN_SLOTS, ins), *((_SLOTS[n], t) for n, t in outs.items())]:
        if t is not None:
            words[at] = t.data_ptr()
            if st is not None:
                words[st : st + t.dim()] = t.stride()
    if outs.get("dt_proj") is not None:
        words[_AT["R"]] = outs["dt_proj"].shape[1]
    return array.array("q", words)


def _items(dims: ScanDims) -> int:
    """The kernel's units of work: (batch row, group, block of LANES channels)."""
    return dims.Bt * dims.G * (-(-(dims.E // dims.G) // LANES))


# the inputs' names in errors: the first scan's, and a pair's (the reverse direction's)
_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
_PAIR_NAMES = tuple(n + "_b" for n in _NAMES)


def _inputs(u, delta, A, B, C, D, z, delta_bias, names=_NAMES) -> list:
    """The inputs as the kernel reads them (float32), each checked to lie in its storage first
    (a conversion would read past it too)."""
    check_storage(KERNEL, zip(names, (u, delta, A, B, C, D, z, delta_bias)))
    return [_f32(u), _f32(delta), _vec(A), _f32(B), _f32(C), _vec(D), _f32(z), _vec(delta_bias)]


def _projection(name: str, w: torch.Tensor | None) -> torch.Tensor | None:
    """A dt_proj weight (E, R) as the kernel reads it: inside its storage, float32, contiguous."""
    if w is not None:
        check_storage(KERNEL, ((name, w),))
    return _vec(w)


def _call(fn, packed: array.array) -> None:
    if fn(packed.buffer_info()[0]) != 0:  # what the words point to is alive until here
        raise RuntimeError(f"{KERNEL}: the C kernel refused the sizes cpu.py packed (a bug)")


def _is_empty(dims: ScanDims) -> bool:
    """A scan with nothing to compute (Bt, E or L = 0): handled in torch, so that no pointer
    to an empty tensor (which may be NULL) reaches the kernel's address arithmetic."""
    return dims.Bt == 0 or dims.E == 0 or dims.L == 0


def _fwd_c(
    dims: ScanDims,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus,
    reverse,
    pair=None,
    delta_proj=None,
    pair_proj=None,
    last_states=True,
):
    """The forward kernel on one scan, or with ``pair`` (u, delta, A, B, C, D, delta_bias of
    a second scan over the same shape, run reversed) on both at once: out = (y + y_pair) / 2
    gated by silu(z). With ``delta_proj`` (E, R) (and ``pair_proj`` for a pair), each delta is
    (Bt, R, L) and the kernel applies the projection itself. ``dims``: check_scan_args' (or
    check_scan_pair's) answer for these arguments, which the kernel trusts for both scans.
    -> (out in u's dtype and layout, last state[, the pair's last state]); without
    ``last_states`` the kernel writes none and each is None."""
    T = _threads(_items(dims))
    out = new_output_like(u, torch.float32)  # u's layout, as the fake kernel promises
    last_shape = (dims.Bt, dims.E, dims.N)
    n_lasts = 1 if pair is None else 2  # a pair's z, out and scratch are the first scan's
    lasts = [
        new_output(last_shape, torch.float32, u.device) if last_states else None
        for _ in range(n_lasts)
    ]
    if _is_empty(dims):
        for last in lasts:
            if last is not None:
                last.zero_()  # no step taken: the state is still 0
        return (out.to(u.dtype), *lasts)
    ins = _inputs(u, delta, A, B, C, D, z, delta_bias)
    w = _projection("delta_proj", delta_proj)
    packed = _pack(
        dims, ins, delta_softplus, reverse, T, {"out": out, "last_state": lasts[0], "dt_proj": w}
    )
    if pair is not None:
        pair_ins = _inputs(*pair[:6], None, pair[6], names=_PAIR_NAMES)
        w_b = _projection("delta_proj_b", pair_proj)
        pair_outs = {"last_state": lasts[1], "dt_proj": w_b}
        packed_pair = _pack(dims, pair_ins, delta_softplus, True, T, pair_outs)
        packed[_AT["pair"]] = packed_pair.buffer_info()[0]
    _call(_lib.vimc_scan_fwd, packed)
    return ((out if u.dtype == torch.float32 else out.to(u.dtype)), *lasts)


def _bwd_c(
    dims: ScanDims, dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
):
    Bt, E, L, N, G = dims
    T = _threads(_items(dims))
    f32 = torch.float32
    ins = _inputs(u, delta, A, B, C, D, z, delta_bias)
    # each gradient in its input's layout, as the fake kernel promises
    du = new_output_like(u, f32)
    ddelta = new_output_like(delta, f32)
    dz = new_output_like(z, f32) if z is not None else None
    # partial sums, one slice per thread, added up below
    dA_p = torch.zeros(T, E, N, dtype=f32)
    dD_p = torch.zeros(T, E, dtype=f32)
    db_p = torch.zeros(T, E, dtype=f32)
    dB_p = torch.zeros(T, Bt, G, N, L, LANES, dtype=f32)
    dC_p = torch.zeros(T, Bt, G, N, L, LANES, dtype=f32)
    check_storage(KERNEL, (("dout", dout), ("dlast", dlast)))
    dout, dlast = _f32(dout), _vec(dlast)
    outs = dict(
        dout=dout,
        dlast=dlast,
        du=du,
        ddelta=ddelta,
        dz=dz,
        dA_part=dA_p,
        dD_part=dD_p,
        dbias_part=db_p,
        dB_part=dB_p,
        dC_part=dC_p,
    )
    _call(_lib.vimc_scan_bwd, _pack(dims, ins, delta_softplus, reverse, T, outs))
    dB, dC = dB_p.sum((0, -1)), dC_p.sum((0, -1))
    return (
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA_p.sum(0).to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        None if D is None else dD_p.sum(0).to(D.dtype),
        None if z is None else dz.to(z.dtype),
        None if delta_bias is None else db_p.sum(0).to(delta_bias.dtype),
    )


# ---------------------------------------------------------------------------------------------
# the chunked torch path (no compiler, or float64)
# ---------------------------------------------------------------------------------------------


def _segsum_decay(dlog: torch.Tensor) -> torch.Tensor:
    """dlog (..., T, N) -> W (..., T, T, N) with W[t, s] = exp(sum_{s<k<=t} dlog_k) for s <= t
    and 0 above the diagonal. Summed per entry, never as a difference of two cumsums, so every
    exponent is a sum of non-positive terms when dlog <= 0."""
    T = dlog.shape[-2]
    x = dlog.unsqueeze(-2).expand(*dlog.shape[:-2], T, T, dlog.shape[-1])  # x[k, s] = dlog_k
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=dlog.device), -1)
    x = x.masked_fill(~strict[..., None], 0.0)
    seg = torch.cumsum(x, dim=-3)  # seg[t, s] = sum_{s<k<=t} dlog_k
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=dlog.device))
    return torch.exp(seg.masked_fill(~keep[..., None], float("-inf")))


def _fwd_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, mask_later=None):
    """The chunked scan; ``mask_later``: whether each step's sum masks out later steps instead
    of only weighting them by 0 (needed where a NaN or Inf is about, see below; None: decided
    per chunk from its inputs)."""
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    Bt, E, L = u.shape
    N, G = A.shape[1], B.shape[1]
    uu, dd = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        dd = dd + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dd = softplus(dd)
    Bm = B.to(ct).repeat_interleave(E // G, dim=1)  # (Bt, E, N, L)
    Cm = C.to(ct).repeat_interleave(E // G, dim=1)
    if reverse:
        uu, dd, Bm, Cm = uu.flip(-1), dd.flip(-1), Bm.flip(-1), Cm.flip(-1)
    A_ = A.to(ct)
    h = uu.new_zeros(Bt, E, N)
    ys = []
    for s in range(0, L, CHUNK):
        dc = dd[:, :, s : s + CHUNK]  # (Bt, E, T)
        dlog = dc[..., None] * A_[:, None, :]  # (Bt, E, T, N)
        x = (dc * uu[:, :, s : s + CHUNK])[..., None] * Bm[..., s : s + CHUNK].transpose(-1, -2)
        W = _segsum_decay(dlog)  # (Bt, E, T, T, N)
        hs = W * x.unsqueeze(-3)  # (Bt, E, T, T, N): step s's share of the state at step t
        if mask_later or (mask_later is None and not torch.isfinite(x).all()):
            # later steps masked out, not only weighted by W's zeros: 0 * a NaN or Inf input at
            # a later step would be NaN at earlier ones, where the recurrence has not seen it
            T = W.shape[-2]
            later = torch.ones(T, T, dtype=torch.bool, device=W.device).triu(1)[..., None]
            hs = hs.masked_fill(later, 0.0)
        hs = hs.sum(-2)
        hs = hs + torch.exp(torch.cumsum(dlog, -2)) * h[:, :, None]
        ys.append((hs * Cm[..., s : s + CHUNK].transpose(-1, -2)).sum(-1))
        h = hs[:, :, -1]
    y = torch.cat(ys, -1) if ys else uu.new_zeros(Bt, E, 0)
    if reverse:
        y = y.flip(-1)
        uu = uu.flip(-1)
    out = y if D is None else y + uu * D.to(ct)[:, None]
    if z is not None:
        out = out * torch.nn.functional.silu(z.to(ct))
    return out.to(u.dtype), h.to(torch.float32 if ct == torch.float32 else ct)


@contextlib.contextmanager
def _autograd_inside_kernel():
    """Op kernels run below the Autograd dispatch key; the torch path's backward differentiates
    its own forward, so it lets autograd record again for the duration."""
    keys = (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.ADInplaceOrView)
    was = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in keys]
    try:
        for k in keys:
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
        with torch.enable_grad():
            yield
    finally:
        for k, w in zip(keys, was):
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, w)


def _bwd_torch(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    inputs = [
        t if t is None else t.detach().requires_grad_(True)
        for t in (u, delta, A, B, C, D, z, delta_bias)
    ]
    # a non-finite cotangent or input reaches every step's gradient, the masked sums' too
    finite = all(t is None or bool(torch.isfinite(t).all()) for t in (dout, dlast, *inputs))
    with _autograd_inside_kernel():
        out, last = _fwd_torch(*inputs, delta_softplus, reverse, mask_later=not finite)
        wrt = [t for t in inputs if t is not None]
        grads = torch.autograd.grad((out, last), wrt, (dout, dlast), allow_unused=True)
    it = iter(grads)
    res = [None if t is None else next(it) for t in inputs]
    return tuple(
        g if g is not None or t is None else torch.zeros_like(t) for g, t in zip(res, inputs)
    )


# ---------------------------------------------------------------------------------------------
# entry points used by op.py (B, C already (Bt, G, N, L))
# ---------------------------------------------------------------------------------------------


# Both check their arguments (check_scan_args, as KERNEL): torch.ops.vimc.* reach them without
# the public function's checks, and the C kernel's loops trust the sizes.


def selective_scan_fwd_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    """-> (out in u's dtype, last_state float32 (Bt, E, N); float64 for float64 inputs)."""
    dims = check_scan_args(u, delta, A, B, C, D, z, delta_bias, who=KERNEL, grouped_only=True)
    if u.dtype != torch.float64 and c_kernel_available():
        return _fwd_c(dims, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    # torch's own kernels trust a view's sizes as the C kernel does: the same storage check
    check_storage(KERNEL, zip(_NAMES, (u, delta, A, B, C, D, z, delta_bias)))
    return _fwd_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def selective_scan_bwd_cpu(
    dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
):
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None where the input was None."""
    dims = check_scan_args(
        u, delta, A, B, C, D, z, delta_bias, dout=dout, dlast=dlast, who=KERNEL, grouped_only=True
    )
    if _is_empty(dims):  # no step taken: nothing depends on any input (out is empty, last 0)
        return tuple(
            None if t is None else torch.zeros_like(t)
            for t in (u, delta, A, B, C, D, z, delta_bias)
        )
    if u.dtype != torch.float64 and c_kernel_available():
        return _bwd_c(
            dims, dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse
        )
    check_storage(
        KERNEL, zip(("dout", "dlast", *_NAMES), (dout, dlast, u, delta, A, B, C, D, z, delta_bias))
    )
    if dlast is None:
        dlast = u.new_zeros(
            u.shape[0],
            u.shape[1],
            A.shape[1],
            dtype=torch.float64 if u.dtype == torch.float64 else torch.float32,
        )
    return _bwd_torch(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
