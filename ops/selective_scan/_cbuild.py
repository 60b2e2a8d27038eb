"""Build a C file of this folder into a shared library, once, cached.

The CPU kernel (cpu.py) and the ONNX Runtime plugin (ort_plugin.py) are built on first use
with the system C compiler (the one torch.compile already needs on a CPU), into
``$VIMC_CACHE_DIR`` (default ``~/.cache/vimc``), under a name that hashes the sources, the
flags, the compiler and this CPU's feature flags: an edit, another compiler or another
machine gets a fresh build. No headers but libc's. An installed wheel also carries them
prebuilt, one file per instruction-set level (``build_prebuilt``, called by setup.py), and the
loaders try the best one this CPU runs first (``prebuilt``).

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

# the same, for a program rather than a shared library (tests/native's harness, the benchmarks)
PROGRAM_FLAGS = [f for f in FLAGS if f not in ("-shared", "-fPIC")]

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


def build_program(source: Path, exe: Path, variants: list[list[str]], includes=()) -> list[str]:
    """A C program (the benchmarks' drivers, which ``#include`` the kernel) built with
    PROGRAM_FLAGS plus the first of ``variants`` that compiles, each folder of ``includes``
    searched for its includes before this one -> that variant. RuntimeError with the
    compiler's last words when none does."""
    cc, err = compiler(), ""
    for extra in variants:
        cmd = [cc, *PROGRAM_FLAGS, *extra, "-Wno-psabi", *(f"-I{d}" for d in includes)]
        cmd += [f"-I{HERE}", str(source), "-o", str(exe), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return extra
        err = proc.stderr.strip()[-2000:]
    raise RuntimeError(f"could not build {Path(source).name} with {cc}: {err}")


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


# ---------------------------------------------------------------------------------------------
# kernels built ahead of time: setup.py builds them into the package, the loaders pick one
# ---------------------------------------------------------------------------------------------

PREBUILT_DIR = "_prebuilt"  # under this folder, in an installed package

# -march levels of each architecture, best first, with the /proc/cpuinfo flags a CPU must
# report to run code built for that level (the flags the level's definition adds, as the
# kernel and the compiler may use them; "abm" is how Linux names LZCNT)
_V3 = {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm", "sse4_2", "popcnt"}
LEVELS = {
    "x86_64": [
        ("x86-64-v4", _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
        ("x86-64-v3", _V3),
        ("x86-64", set()),
    ],
    "aarch64": [("armv8-a", set())],  # NEON is part of the armv8-a baseline
}

# the prebuilt libraries: stem -> (source, extra flags). The scan comes twice: with OpenMP,
# which shares torch's thread pool but needs a "libgomp.so.1" at load, and with pthreads,
# which loads anywhere.
PREBUILT = {
    "vimc_scan_omp": ("cpu_kernel.c", ["-fopenmp"]),
    "vimc_scan": ("cpu_kernel.c", []),
    "vimc_ort_plugin": ("ort_plugin.c", ["-fvisibility=hidden"]),
}


def arch() -> str:
    """This machine's architecture as LEVELS names it."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def cpu_flags() -> set[str]:
    """This CPU's feature flags as /proc/cpuinfo names them (empty where it cannot tell)."""
    line = _cpu_signature()
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def build_prebuilt(out_dir: Path) -> dict[str, str | None]:
    """setup.py's build step: every library of PREBUILT at every level of this machine's
    architecture, into ``out_dir/<stem>-<level>.so`` -> {file name: None, or why it failed}.
    Never -march=native: the files run on any CPU of their level."""
    cc = compiler()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, str | None] = {}
    for level, _ in LEVELS.get(arch(), []):
        for stem, (source, extra) in PREBUILT.items():
            name = f"{stem}-{level}.so"
            cmd = [cc, *FLAGS, f"-march={level}", *extra, f"-I{HERE}", str(HERE / source)]
            proc = subprocess.run([*cmd, "-o", str(out_dir / name), "-lm"], capture_output=True,
                                  text=True)  # fmt: skip
            result[name] = None if proc.returncode == 0 else proc.stderr.strip()[-500:]
    return result


def runnable_levels() -> list[str]:
    """The LEVELS of this architecture whose code this CPU runs, best first."""
    cpu = cpu_flags()
    return [lvl for lvl, needs in LEVELS.get(arch(), []) if needs <= cpu]


def cpu_level() -> str | None:
    """The best LEVELS entry this CPU runs (None: an architecture LEVELS does not list)."""
    return next(iter(runnable_levels()), None)


def prebuilt(stem: str, only: str | None = None) -> tuple[Path, str] | None:
    """(path, level) of the best prebuilt ``stem`` library this CPU runs (of level ``only``,
    if given), or None: none was installed (a source checkout), or none of its levels matches
    this CPU. A sanitizing run never takes one (they are built without the sanitizers)."""
    if sanitizing():
        return None
    cpu = cpu_flags()
    for level, needs in LEVELS.get(arch(), []):
        path = HERE / PREBUILT_DIR / f"{stem}-{level}.so"
        if needs <= cpu and path.exists() and only in (None, level):
            return path, level
    return None


def check_level(level: str) -> None:
    """RuntimeError unless ``level`` is one of LEVELS for this architecture and this CPU runs
    code built for it (VIMC_CPU_LEVEL asks for one)."""
    levels = dict(LEVELS.get(arch(), []))
    if level not in levels:
        raise RuntimeError(
            f"VIMC_CPU_LEVEL={level!r} is not an instruction-set level of {arch()}: "
            f"expected one of {sorted(levels)}"
        )
    missing = levels[level] - cpu_flags()
    if missing:
        raise RuntimeError(f"VIMC_CPU_LEVEL={level!r}: this CPU lacks {', '.join(sorted(missing))}")
