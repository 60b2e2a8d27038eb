"""Build a C file of this folder into a shared library, once, cached.

The CPU kernel (cpu.py) and the ONNX Runtime plugin (ort_plugin.py) are built on first use
with the system C compiler (the one torch.compile already needs on a CPU), into
``$VIMC_CACHE_DIR`` (default ``~/.cache/vimc``), under a name that hashes the sources, the
flags, the compiler and this CPU's feature flags: an edit, another compiler or another
machine gets a fresh build. No build step at install, no headers but libc's.

``VIMC_SANITIZE=1`` (read at each build) builds the same sources with AddressSanitizer and
UndefinedBehaviorSanitizer added, into ``<cache>/sanitize``: the memory-safety job
(tests/sanitize/run.py) runs the tests and a fuzz loop against that build. The process must
have the ASan runtime preloaded (``LD_PRELOAD``), since Python itself is not built with it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

FLAGS = [
    "-O3",
    "-fPIC",
    "-shared",
    "-pthread",
    "-std=c11",
    # IEEE semantics kept (no -ffast-math: exp's reduction relies on exact rounding steps)
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=fast",
]

SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",  # the first report ends the process: the job fails on it
    "-fno-omit-frame-pointer",  # readable stacks in the reports
    "-g",
]


def sanitizing() -> bool:
    """Whether builds add the sanitizers (``VIMC_SANITIZE=1``)."""
    return os.environ.get("VIMC_SANITIZE", "") == "1"


def _asan_loaded() -> bool:
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return True  # no /proc to ask: let the loader say


def cache_dir() -> Path:
    root = os.environ.get("VIMC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vimc"
    )
    return Path(root) / "sanitize" if sanitizing() else Path(root)


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    return cc


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build(source: str, stem: str, variants: list[list[str]], includes=()) -> Path:
    """``source`` (a file of this folder, which may ``#include`` the files named in
    ``includes``) built as ``<cache>/<stem>_<hash>.so`` if not there yet -> its path.
    ``variants``: extra flags to try in order (the first that compiles wins: not every
    compiler knows -march=native or -fopenmp)."""
    cc = compiler()
    flags = FLAGS + SANITIZE_FLAGS if sanitizing() else FLAGS
    if sanitizing() and not _asan_loaded():  # loading the library would abort the process
        raise RuntimeError(
            "VIMC_SANITIZE=1 needs the ASan runtime preloaded: "
            "LD_PRELOAD=$(cc -print-file-name=libasan.so) (tests/sanitize/run.py does this)"
        )
    src = HERE / source
    digest = hashlib.sha256()
    for part in (src, *(HERE / i for i in includes)):
        digest.update(part.read_bytes())
    for text in (" ".join(flags), repr(variants), cc, _cpu_signature(), platform.machine()):
        digest.update(text.encode())
    out_dir = cache_dir()
    so = out_dir / f"{stem}_{digest.hexdigest()[:16]}.so"
    if so.exists():
        return so
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        errors = []
        for extra in variants:
            proc = subprocess.run(
                [cc, *flags, *extra, f"-I{HERE}", str(src), "-o", tmp, "-lm"],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                break
            errors.append(proc.stderr.strip())
        else:
            raise RuntimeError(f"{cc} failed to build {src.name}:\n" + "\n".join(errors))
        os.replace(tmp, so)  # atomic: a concurrent builder never loads half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return so
