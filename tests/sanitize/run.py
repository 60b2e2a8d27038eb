"""The memory-safety job: vimc's native code built with AddressSanitizer and
UndefinedBehaviorSanitizer, and the op tests, the plugin tests and a bounded fuzz loop run
against that build.

    .venv/bin/python tests/sanitize/run.py --seconds 60

The C kernel and the ONNX Runtime plugin are the same sources built with
``-fsanitize=address,undefined`` into their own cache (``VIMC_SANITIZE=1``, see
ops/selective_scan/_cbuild.py). Python is not built with ASan, so the runtime is preloaded
(``LD_PRELOAD``) into the processes this script starts, and only into them: the normal test
suite never runs under it. libstdc++ is preloaded right after it, so that ASan's interceptor of
C++ throws finds the real one (torch raises Python errors through C++ exceptions; without it
the first error raised inside an op aborts the process). Leak detection is off (CPython keeps
objects alive until exit by design); the first report of either sanitizer ends its process,
and reports go to files (pytest captures the output of a process that dies), printed here.

Exits 0 when the tests pass, the fuzz loop finds nothing and no sanitizer report appears in
any output; prints the number of fuzz cases. Exits 1 otherwise, and 2 where no sanitizer
runtime is to be had (no C compiler, or one without libasan).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the scan's tests, the conv pair's and the plugin's, against the sanitized build (the slow
# long-sequence cases and the Triton kernels, which never reach the C code, are left out)
TESTS = [
    "tests/ops/test_selective_scan.py",
    "tests/ops/test_bidirectional.py",
    "tests/ops/test_delta_proj.py",
    "tests/ops/test_bad_input.py",
    "tests/ops/test_conv.py",
    "tests/ops/test_mixer_core.py",
    "tests/ops/test_ort_plugin.py",
    "tests/export/test_ort_plugin.py",
]
REPORT = re.compile(r"AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer|LeakSanitizer")

# The sanitized builds must be the ones loaded: a fallback to the torch path would pass
# everything while testing nothing.
PROBE = """
from vimc.ops.selective_scan import _cbuild, cpu, ort_plugin
assert _cbuild.sanitizing() and cpu.c_kernel_available(), cpu.c_kernel_error()
assert "/sanitize/" in cpu._lib._name, cpu._lib._name
assert "/sanitize/" in str(ort_plugin.library_path())
"""
# And they must catch what they are there for: the kernel told a longer L than its tensors
# have (skipping the checks that refuse it) writes past `out`, which must end in a report.
CANARY = """
import torch
from vimc.ops.selective_scan import cpu
from vimc.ops.selective_scan._checks import ScanDims
u, delta, z = torch.randn(1, 8, 16), torch.rand(1, 8, 16), None
A, B, C = -torch.rand(8, 4), torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16)
cpu.c_kernel_available()
cpu._fwd_c(ScanDims(1, 8, 64, 4, 1), u, delta, A, B, C, None, z, None, False, False)
print("the canary's overflow went unreported")
"""


def compiler_library(name: str) -> str | None:
    """The path of ``name`` as the C compiler that builds the kernel links it, or None."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    proc = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = proc.stdout.strip()
    return path if proc.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def sanitized_env(preload: list[str], logs: Path) -> dict:
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(p for p in (*preload, env.get("LD_PRELOAD", "")) if p)
    env["ASAN_OPTIONS"] = f"detect_leaks=0:halt_on_error=1:log_path={logs}/asan"
    env["UBSAN_OPTIONS"] = f"halt_on_error=1:print_stacktrace=1:log_path={logs}/ubsan"
    env["VIMC_SANITIZE"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def stream(cmd: list[str], env: dict) -> tuple[int, str]:
    """Runs ``cmd``, echoing its output as it comes -> (exit status, the output)."""
    shown = cmd[:2] + ["<script>"] if cmd[1:2] == ["-c"] else cmd
    print("+", " ".join(shown), flush=True)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    return proc.wait(), "".join(lines)


def run_step(cmd: list[str], env: dict, logs: Path) -> tuple[int, str]:
    """``cmd`` under the sanitizers -> (exit status, its output and any sanitizer reports,
    which go to files: pytest captures the output of a process that dies)."""
    status, output = stream(cmd, env)
    for log in sorted(logs.iterdir()):
        report = log.read_text(errors="replace")
        print(f"--- {log.name}\n{report}", file=sys.stderr)
        output += report
        log.unlink()
    return status, output


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="fuzz time (default 60)")
    ap.add_argument("--seed", type=int, default=None, help="fuzz seed (default: drawn)")
    ap.add_argument("--no-tests", action="store_true", help="the fuzz loop only")
    args = ap.parse_args(argv)
    preload = [compiler_library("libasan.so"), compiler_library("libstdc++.so.6")]
    if None in preload:
        print("sanitize: no ASan runtime (cc -print-file-name=libasan.so)", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="vimc-sanitize-"))
    env = sanitized_env(preload, logs)
    start = time.monotonic()
    status, output = run_step([sys.executable, "-c", CANARY], env, logs)
    if status == 0 or "heap-buffer-overflow" not in output:
        print("sanitize: FAILED: the canary's overflow was not reported", file=sys.stderr)
        return 1
    print("sanitize: the canary's overflow was reported, as it must be", flush=True)
    runs = [[sys.executable, "-c", PROBE]]
    if not args.no_tests:
        runs.append([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                     "-m", "not slow and not triton and not gpu", *TESTS])  # fmt: skip
    fuzz = [sys.executable, "-m", "tests.sanitize.fuzz", "--seconds", str(args.seconds)]
    runs.append(fuzz + ([] if args.seed is None else ["--seed", str(args.seed)]))
    cases = None
    for cmd in runs:
        status, output = run_step(cmd, env, logs)
        found = REPORT.search(output)
        if status != 0 or found:
            why = f"a sanitizer report ({found.group(0)})" if found else f"exit status {status}"
            print(f"sanitize: FAILED: {why} from {' '.join(cmd[:4])} ...", file=sys.stderr)
            return 1
        match = re.search(r"fuzz: (\d+) cases", output)
        cases = int(match.group(1)) if match else cases
    took = time.monotonic() - start
    print(f"sanitize: passed in {took:.0f} s, {cases} fuzz cases, no sanitizer report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
