"""The selective scan on CPU: a fused C kernel when a C compiler is present, else chunked torch.

The C kernel (``cpu_kernel.c``) is built on first use with the compiler that ``torch.compile``
already needs on a CPU, cached under ``$VIMC_CACHE_DIR`` (default ``~/.cache/vimc``), and
called through ctypes: no build step at install, no torch headers, about a second to build.
``VIMC_CPU_KERNEL=torch`` forces the pure-torch path; it is also what float64 inputs take.

The torch path is chunked: within a chunk of ``CHUNK`` steps the state is a masked sum with
``exp(segsum)`` weights (every exponent <= 0, so it is stable for any L), and one state per
(row, channel) is carried between chunks: memory O(Bt*E*N*CHUNK^2), never O(Bt*E*N*L).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from ._alloc import new_output
from .reference import softplus

CHUNK = 16

# ---------------------------------------------------------------------------------------------
# the C kernel: build, load, call
# ---------------------------------------------------------------------------------------------

_SRC = Path(__file__).with_name("cpu_kernel.c")
_FLAGS = [
    "-O3", "-fPIC", "-shared", "-pthread", "-std=c11",
    # vectorize the sum over the state dimension, keep IEEE inf/NaN semantics
    "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math",
    "-ffp-contract=fast",
]


LANES = 8  # must match cpu_kernel.c


class _ScanArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("Bt", "G", "L", "N", "Egp", "reverse", "nthreads")] + [
        (n, ctypes.c_void_p) for n in
        ("u", "delta", "A", "B", "C", "y", "last_state", "dy", "dlast", "du", "ddelta",
         "dA_part", "dB_part", "dC_part", "h_scratch")]


_lib = None
_lib_error: str | None = None
_lib_lock = threading.Lock()


def _cache_dir() -> Path:
    root = os.environ.get("VIMC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vimc")
    return Path(root)


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    src = _SRC.read_bytes()
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + cc.encode()
                         + _cpu_signature().encode() + platform.machine().encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    so = out_dir / f"vimc_scan_{key}.so"
    if not so.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        try:
            errors = []
            for arch in (["-march=native"], []):  # -march=native is not known to every compiler
                proc = subprocess.run([cc, *_FLAGS, *arch, str(_SRC), "-o", tmp, "-lm"],
                                      capture_output=True, text=True)
                if proc.returncode == 0:
                    break
                errors.append(proc.stderr.strip())
            else:
                raise RuntimeError(f"{cc} failed to build {_SRC.name}:\n" + "\n".join(errors))
            os.replace(tmp, so)  # atomic: a concurrent builder never loads half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(so))
    lib.vimc_scan_abi.restype = ctypes.c_int64
    if lib.vimc_scan_abi() != ctypes.sizeof(_ScanArgs) * 1000 + LANES:
        raise RuntimeError("cpu_kernel.c and cpu.py disagree on the argument struct")
    for fn in (lib.vimc_scan_fwd, lib.vimc_scan_bwd):
        fn.argtypes = [ctypes.POINTER(_ScanArgs)]
        fn.restype = ctypes.c_int
    return lib


def c_kernel_available() -> bool:
    """Whether the fused C kernel can be used (builds it on first call)."""
    global _lib, _lib_error
    if os.environ.get("VIMC_CPU_KERNEL", "").lower() == "torch":
        return False
    with _lib_lock:
        if _lib is None and _lib_error is None:
            try:
                _lib = _build()
            except (RuntimeError, OSError) as exc:
                _lib_error = str(exc)
    return _lib is not None


def c_kernel_error() -> str | None:
    """Why the C kernel is unavailable, if it is."""
    return _lib_error


class _Layout:
    """Moves (Bt, E, L) and (E, N) tensors into the kernel's lane layout and back: channels
    of one group padded to a multiple of 8 (``Egp``) and made the fastest axis."""

    def __init__(self, Bt: int, E: int, L: int, N: int, G: int):
        self.Bt, self.E, self.L, self.N, self.G = Bt, E, L, N, G
        self.Eg = E // G
        self.Egp = -(-self.Eg // LANES) * LANES

    def _pad(self, t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, self.Egp - self.Eg)) if self.Egp != self.Eg else t

    def seq(self, t: torch.Tensor) -> torch.Tensor:  # (Bt, E, L) -> (Bt, G, L, Egp)
        t = t.to(torch.float32).reshape(self.Bt, self.G, self.Eg, self.L).transpose(-1, -2)
        return self._pad(t).contiguous()

    def seq_back(self, t: torch.Tensor) -> torch.Tensor:  # (Bt, G, L, Egp) -> (Bt, E, L)
        return t[..., : self.Eg].transpose(-1, -2).reshape(self.Bt, self.E, self.L)

    def chan(self, A: torch.Tensor) -> torch.Tensor:  # (E, N) -> (G, N, Egp)
        t = A.to(torch.float32).reshape(self.G, self.Eg, self.N).transpose(-1, -2)
        return self._pad(t).contiguous()

    def chan_back(self, t: torch.Tensor) -> torch.Tensor:  # (G, N, Egp) -> (E, N)
        return t[..., : self.Eg].transpose(-1, -2).reshape(self.E, self.N)

    def state(self, h: torch.Tensor) -> torch.Tensor:  # (Bt, E, N) -> (Bt, G, Egp/8, N, 8)
        t = self._pad(h.to(torch.float32).reshape(self.Bt, self.G, self.Eg, self.N).transpose(-1, -2))
        t = t.reshape(self.Bt, self.G, self.N, self.Egp // LANES, LANES).transpose(2, 3)
        return t.contiguous()

    def state_back(self, t: torch.Tensor) -> torch.Tensor:  # inverse of state()
        t = t.transpose(2, 3).reshape(self.Bt, self.G, self.N, self.Egp)[..., : self.Eg]
        return t.transpose(-1, -2).reshape(self.Bt, self.E, self.N)

    def args(self, nthreads: int, reverse: bool, **bufs) -> _ScanArgs:
        a = _ScanArgs(Bt=self.Bt, G=self.G, L=self.L, N=self.N, Egp=self.Egp,
                      reverse=int(reverse), nthreads=nthreads)
        for name, t in bufs.items():
            setattr(a, name, None if t is None else t.data_ptr())
        return a


def _time_major(M: torch.Tensor) -> torch.Tensor:
    """(Bt, G, N, L) -> contiguous float32 (Bt, G, L, N): one state vector per time step."""
    return M.to(torch.float32).transpose(-1, -2).contiguous()


def _final_delta(delta, delta_bias, delta_softplus):
    x = delta.to(torch.float32)
    if delta_bias is not None:
        x = x + delta_bias.to(torch.float32)[:, None]
    return x, (softplus(x) if delta_softplus else x)


def _fwd_c(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    Bt, E, L = u.shape
    lay = _Layout(Bt, E, L, A.shape[1], B.shape[1])
    _, d = _final_delta(delta, delta_bias, delta_softplus)
    y = new_output((Bt, lay.G, L, lay.Egp), torch.float32, u.device)
    last = new_output((Bt, lay.G, lay.Egp // LANES, lay.N, LANES), torch.float32, u.device)
    bufs = dict(u=lay.seq(u), delta=lay.seq(d), A=lay.chan(A), B=_time_major(B),
                C=_time_major(C), y=y, last_state=last)
    _lib.vimc_scan_fwd(ctypes.byref(lay.args(torch.get_num_threads(), reverse, **bufs)))
    out = lay.seq_back(y)
    if D is not None:
        out = out + u.to(torch.float32) * D.to(torch.float32)[:, None]
    if z is not None:
        out = out * torch.nn.functional.silu(z.to(torch.float32))
    return out.to(u.dtype), lay.state_back(last)


def _bwd_c(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    Bt, E, L = u.shape
    lay = _Layout(Bt, E, L, A.shape[1], B.shape[1])
    G, N, Egp = lay.G, lay.N, lay.Egp
    T = max(1, min(torch.get_num_threads(), Bt * G * (Egp // LANES), 64))
    f32, dev = torch.float32, u.device
    x, d = _final_delta(delta, delta_bias, delta_softplus)
    u32, dout32 = u.to(f32), dout.to(f32)
    if z is not None:
        z32 = z.to(f32)
        sg = torch.sigmoid(z32)
        dy = dout32 * z32 * sg
    else:
        dy = dout32
    y = new_output((Bt, G, L, Egp), f32, dev)
    du_scan = new_output((Bt, G, L, Egp), f32, dev)
    dd = new_output((Bt, G, L, Egp), f32, dev)
    # per-thread partial sums, written by one thread each and added up below
    dA_p = torch.zeros(T, G, N, Egp, dtype=f32)
    dB_p = torch.zeros(T, Bt, G, L, N, LANES, dtype=f32)
    dC_p = torch.zeros(T, Bt, G, L, N, LANES, dtype=f32)
    scratch = torch.empty(T, L, N, LANES, dtype=f32)
    bufs = dict(u=lay.seq(u32), delta=lay.seq(d), A=lay.chan(A), B=_time_major(B),
                C=_time_major(C), y=y, dy=lay.seq(dy),
                dlast=None if dlast is None else lay.state(dlast), du=du_scan, ddelta=dd,
                dA_part=dA_p, dB_part=dB_p, dC_part=dC_p, h_scratch=scratch)
    _lib.vimc_scan_bwd(ctypes.byref(lay.args(T, reverse, **bufs)))

    du = lay.seq_back(du_scan)
    gd = lay.seq_back(dd)
    dD = dz = None
    if D is not None:
        du = du + dy * D.to(f32)[:, None]
        dD = (dy * u32).sum((0, 2)).to(D.dtype)
    if z is not None:
        y_full = lay.seq_back(y) if D is None else lay.seq_back(y) + u32 * D.to(f32)[:, None]
        dz = (dout32 * y_full * sg * (1.0 + z32 * (1.0 - sg))).to(z.dtype)
    if delta_softplus:
        gd = torch.where(x <= 20.0, gd * torch.sigmoid(x), gd)
    dbias = None if delta_bias is None else gd.sum((0, 2)).to(delta_bias.dtype)
    dB = dB_p.sum((0, -1)).transpose(-1, -2)
    dC = dC_p.sum((0, -1)).transpose(-1, -2)
    return (du.to(u.dtype), gd.to(delta.dtype), lay.chan_back(dA_p.sum(0)).to(A.dtype),
            dB.to(B.dtype), dC.to(C.dtype), dD, dz, dbias)


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


def _fwd_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
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
        dc = dd[:, :, s:s + CHUNK]                                   # (Bt, E, T)
        dlog = dc[..., None] * A_[:, None, :]                         # (Bt, E, T, N)
        x = (dc * uu[:, :, s:s + CHUNK])[..., None] * Bm[..., s:s + CHUNK].transpose(-1, -2)
        W = _segsum_decay(dlog)                                       # (Bt, E, T, T, N)
        hs = (W * x.unsqueeze(-3)).sum(-2) + torch.exp(torch.cumsum(dlog, -2)) * h[:, :, None]
        ys.append((hs * Cm[..., s:s + CHUNK].transpose(-1, -2)).sum(-1))
        h = hs[:, :, -1]
    y = torch.cat(ys, -1) if ys else uu.new_zeros(Bt, E, 0)
    if reverse:
        y = y.flip(-1)
        uu = uu.flip(-1)
    out = y if D is None else y + uu * D.to(ct)[:, None]
    if z is not None:
        out = out * torch.nn.functional.silu(z.to(ct))
    return out.to(u.dtype), h.to(torch.float32 if ct == torch.float32 else ct)


def _bwd_torch(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    inputs = [t if t is None else t.detach().requires_grad_(True)
              for t in (u, delta, A, B, C, D, z, delta_bias)]
    with torch.enable_grad():
        out, last = _fwd_torch(*inputs, delta_softplus, reverse)
        wrt = [t for t in inputs if t is not None]
        grads = torch.autograd.grad((out, last), wrt, (dout, dlast), allow_unused=True)
    it = iter(grads)
    res = [None if t is None else next(it) for t in inputs]
    return tuple(g if g is not None or t is None else torch.zeros_like(t)
                 for g, t in zip(res, inputs))


# ---------------------------------------------------------------------------------------------
# entry points used by op.py (B, C already (Bt, G, N, L); shapes already checked)
# ---------------------------------------------------------------------------------------------

def selective_scan_fwd_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
    """-> (out in u's dtype, last_state float32 (Bt, E, N); float64 for float64 inputs)."""
    if u.dtype != torch.float64 and c_kernel_available():
        return _fwd_c(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return _fwd_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def selective_scan_bwd_cpu(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                           reverse):
    """-> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None where the input was None."""
    if u.dtype != torch.float64 and c_kernel_available():
        return _bwd_c(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    if dlast is None:
        dlast = u.new_zeros(u.shape[0], u.shape[1], A.shape[1],
                            dtype=torch.float64 if u.dtype == torch.float64 else torch.float32)
    return _bwd_torch(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
