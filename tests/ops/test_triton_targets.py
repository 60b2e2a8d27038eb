"""Every Triton kernel compiled for the GPUs vimc is deployed on, with no GPU present: sm_80
(A100), sm_87 (Jetson Orin), sm_89 (L4) and sm_90 (H100/H200).

What is compiled is what the launchers would launch. A worker process (without
TRITON_INTERPRET, so the kernels are real JIT functions) runs the launchers of both kernel
families on CPU tensors of Vim-Ti's shape with the launch intercepted
(``_triton_common.launch``), then compiles each recorded launch with ``triton.compile`` for an
explicit ``GPUTarget``, its arguments specialized as Triton's runtime specializes them
(pointer and integer alignment, integers equal to 1). ptxas, run by Triton's compile, reports
registers, spill bytes and stack; Triton's metadata gives the shared memory.

Cases: Vim's state size N = 16 with float32, bfloat16 and float16 inputs, and N = 64, each with
every option on (D, z, delta_bias, softplus as Vim runs the scan, plus reverse and a last-state
cotangent: the heaviest variant); and N = 16 with every option off, the lightest. A kernel that
does not compile fails, and so does a spill in Vim's N = 16 configurations. The others' spills
are reported, not failed: ptxas picks a register budget per kernel for occupancy and may spill a
few bytes of long-lived values (an offset kept across the time loop) to keep it, which
is not what N = 16 promises Vim. The table of every kernel prints to the terminal, past
pytest's capture, so it shows in CI's log.

This runs on Triton 3.6 (the GPU machines') as on 3.9: the APIs it and the kernels use are
pinned in test_triton_apis_are_there.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("triton")

pytestmark = [pytest.mark.triton, pytest.mark.slow]

TARGETS = {80: "A100", 87: "Jetson Orin", 89: "L4", 90: "H100/H200"}
# config id -> (input dtype, N, every option on); the first three are Vim's: no spills there
CONFIGS = {
    "f32-N16": ("float32", 16, True),
    "bf16-N16": ("bfloat16", 16, True),
    "f16-N16": ("float16", 16, True),
    "f32-N64": ("float32", 64, True),
    "f32-N16-bare": ("float32", 16, False),
}
NO_SPILL = ("f32-N16", "bf16-N16", "f16-N16")  # Vim's state size and options
VIM_TI = dict(Bt=1, E=384, L=197)  # one image of Vim-Ti at 224 px: 197 tokens, 384 channels
# the launches each config records, in order: (kernel family, what the launch computes)
LAUNCHES = [
    (family, role)
    for family in ("sequential", "chunked")
    for role in ("forward", "pre-pass", "backward")
]


# ---------------------------------------------------------------------------------------------
# the worker: records the launches and compiles them (runs in its own process)
# ---------------------------------------------------------------------------------------------


def _specialize(value, specialize: bool):
    """(Triton type, specialization key) of a kernel argument, as the runtime computes it:
    Triton's own function where it has one (3.4 and later), else the same rules written out."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend

        return tuple(native_specialize_impl(BaseBackend, value, False, specialize, True)[:2])
    except ImportError:
        import torch

        if isinstance(value, torch.Tensor):
            ty = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
            return "*" + ty[value.dtype], "D" if value.data_ptr() % 16 == 0 else ""
        if specialize and value == 1:
            return "constexpr", 1
        ty = "i32" if -(2**31) <= value < 2**31 else "i64"
        return ty, ("D" if specialize and value % 16 == 0 else "")


def _ast_source(kernel, args, kwargs):
    """-> (ASTSource of one launch, compile options, block description)."""
    from triton.compiler import ASTSource

    names = kernel.arg_names
    bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    options = {k: v for k, v in kwargs.items() if k not in names}  # num_warps
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(kernel.params):
        value = bound[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
            continue
        ty, key = _specialize(value, not p.do_not_specialize)
        signature[p.name] = ty
        if ty == "constexpr":  # an integer 1
            constexprs[p.name] = value
        elif key and "D" in key:
            attrs[(i,)] = [["tt.divisibility", 16]]
    block = "x".join(str(bound[k]) for k in ("BLOCK_E", "BLOCK_N", "CHUNK"))
    return ASTSource(kernel, signature, constexprs, attrs), options, block


def _record_launches(dtype_name: str, N: int, options_on: bool):
    """Runs both families' launchers on CPU tensors with the launch intercepted -> the
    recorded (kernel, args, kwargs), in LAUNCHES' order."""
    import torch
    from vimc.ops.selective_scan import _triton_common as common
    from vimc.ops.selective_scan import triton as tri

    dtype = getattr(torch, dtype_name)
    Bt, E, L = VIM_TI["Bt"], VIM_TI["E"], VIM_TI["L"]
    act = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
    u, delta, z, dout = act(Bt, E, L), act(Bt, E, L), act(Bt, E, L), act(Bt, E, L)
    B, C = act(Bt, 1, N, L), act(Bt, 1, N, L)
    A, D, bias, dlast = torch.zeros(E, N), torch.zeros(E), torch.zeros(E), torch.zeros(Bt, E, N)
    if not options_on:
        D = z = bias = dlast = None
    flags = (options_on, options_on)  # delta_softplus, reverse
    recorded = []
    saved = common.launch
    common.launch = lambda kernel, grid, *a, **kw: recorded.append((kernel, a, kw))
    try:
        for kernel in ("sequential", "chunked"):
            ins = (u, delta, A, B, C, D, z, bias)
            tri.selective_scan_fwd_triton(*ins, *flags, kernel=kernel)
            tri.selective_scan_bwd_triton(dout, dlast, *ins, *flags, kernel=kernel)
    finally:
        common.launch = saved
    # the forward, then the backward's pre-pass and sweep, for each family
    assert len(recorded) == len(LAUNCHES), [r[0].fn.__name__ for r in recorded]
    return recorded


_PTXAS = {
    "regs": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def _ptxas_report(log: str) -> dict:
    found = {k: rx.search(log) for k, rx in _PTXAS.items()}
    if not all(found.values()):
        raise RuntimeError(f"no ptxas report in the compile's output:\n{log[-2000:]}")
    return {k: int(m.group(1)) for k, m in found.items()}


def _ptxas_rerun(kernel) -> str:
    """ptxas -v on the compiled PTX, for a Triton that does not print its own ptxas log."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    arch = re.search(r"^\.target\s+(\S+)", kernel.asm["ptx"], re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(kernel.asm["ptx"])
        cmd = [str(ptxas), "-v", f"--gpu-name={arch}", str(ptx), "-o", str(ptx.with_suffix(".o"))]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def worker(out_path: str, shard: int, shards: int) -> None:
    """Compiles every ``shards``-th (target, config, launch) from the ``shard``-th on; writes
    one JSON record per compile."""
    import triton
    from triton.backends.compiler import GPUTarget

    records = []
    job = -1
    for config, (dtype_name, N, options_on) in CONFIGS.items():
        launches = _record_launches(dtype_name, N, options_on)
        for (family, role), (kernel, args, kwargs) in zip(LAUNCHES, launches):
            src, options, block = _ast_source(kernel, args, kwargs)
            for arch in TARGETS:
                job += 1
                if job % shards != shard:
                    continue
                rec = dict(
                    order=job // len(TARGETS),
                    arch=arch,
                    config=config,
                    family=family,
                    role=role,
                    kernel=kernel.fn.__name__,
                    block=block,
                    warps=options.get("num_warps"),
                )
                t0 = time.perf_counter()
                log = io.StringIO()
                try:
                    with contextlib.redirect_stdout(log):  # Triton prints ptxas's log here
                        compiled = triton.compile(
                            src, target=GPUTarget("cuda", arch, 32), options=options
                        )
                    text = log.getvalue()
                    if "Used" not in text:
                        text = _ptxas_rerun(compiled)
                    rec |= _ptxas_report(text)
                    rec["shared"] = compiled.metadata.shared
                except Exception as exc:  # noqa: BLE001  (recorded: the test names it)
                    rec["error"] = f"{type(exc).__name__}: {str(exc)[-3000:]}"
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                records.append(rec)
    Path(out_path).write_text(json.dumps(records))


# ---------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every compile's record, from one worker process per CPU core (at most 4), each with a
    fresh Triton cache: ptxas runs, and reports, for every kernel."""
    tmp = tmp_path_factory.mktemp("triton_targets")
    shards = max(1, min(4, os.cpu_count() or 1))
    workers = []
    for i in range(shards):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env |= {"TRITON_CACHE_DIR": str(tmp / f"cache{i}"), "TRITON_DUMP_PTXAS_LOG": "1"}
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
        cmd = [sys.executable, __file__, str(tmp / f"records{i}.json"), str(i), str(shards)]
        log = open(tmp / f"worker{i}.log", "w+")  # noqa: SIM115  (closed below)
        workers.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=log), log))
    records = []
    for i, (proc, log) in enumerate(workers):
        rc = proc.wait(timeout=900)
        log.seek(0)
        assert rc == 0, f"compile worker {i} failed:\n{log.read()[-5000:]}"
        log.close()
        records += json.loads((tmp / f"records{i}.json").read_text())
    return sorted(records, key=lambda r: (r["order"], r["arch"]))


def _table(records) -> str:
    import triton

    head = (
        f"Triton {triton.__version__} kernels for GPU targets: registers per thread, spill "
        f"stores/loads and stack (bytes, ptxas), shared memory (bytes, Triton); Vim-Ti shape "
        f"Bt={VIM_TI['Bt']} E={VIM_TI['E']} L={VIM_TI['L']}"
    )
    cols = (
        "target  config        kernel                  tile(ExNxT) warps regs spill st/ld "
        "stack shared  s"
    )
    lines = [head, cols, "-" * len(cols)]
    for r in records:
        name = f"{r['family']} {r['role']}"
        if "error" in r:
            res = "DOES NOT COMPILE: " + r["error"].splitlines()[0][:60]
        else:
            spill = f"{r['spill_stores']}/{r['spill_loads']}"
            res = f"{r['regs']:4d} {spill:>11} {r['stack']:5d} {r['shared']:6d}"
        lines.append(
            f"sm_{r['arch']:<5d}{r['config']:<14}{name:<24}{r['block']:<12}{r['warps']:5d} "
            f"{res} {r['seconds']:4.1f}"
        )
    return "\n".join(lines)


def test_register_and_spill_table(compiled, capsys):
    """Prints the table of every compiled kernel to the terminal (CI's log); every (target,
    config, launch) is in it."""
    with capsys.disabled():
        print("\n" + _table(compiled), flush=True)
    got = {(r["arch"], r["config"], r["family"], r["role"]) for r in compiled}
    want = {(a, c, f, r) for a in TARGETS for c in CONFIGS for f, r in LAUNCHES}
    assert got == want


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("arch", TARGETS, ids=lambda a: f"sm_{a}")
def test_every_kernel_compiles_and_vims_do_not_spill(compiled, arch, config):
    rows = [r for r in compiled if r["arch"] == arch and r["config"] == config]
    assert len(rows) == len(LAUNCHES)
    failed = [f"{r['family']} {r['role']}: {r['error']}" for r in rows if "error" in r]
    assert not failed, f"sm_{arch} {config}: kernels that do not compile:\n" + "\n".join(failed)
    for r in rows:
        assert r["regs"] > 0 and r["warps"] >= 1
        if config in NO_SPILL:
            spilled = r["spill_stores"] + r["spill_loads"] + r["stack"]
            assert spilled == 0, (
                f"sm_{arch} {config} {r['family']} {r['role']} ({r['kernel']}, tile "
                f"{r['block']}, {r['warps']} warps): {r['regs']} registers, spills "
                f"{r['spill_stores']}/{r['spill_loads']} bytes, stack {r['stack']} bytes"
            )


def test_triton_apis_are_there():
    """What the kernels, their launchers and this test use, as Triton 3.6 (the GPU machines')
    and later spell it: a missing or renamed API fails here, by name, before anything else."""
    import torch
    import triton
    import triton.language as tl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    # the kernels
    for name in (
        "associative_scan",
        "cdiv",
        "debug_barrier",
        "exp",
        "log",
        "sigmoid",
        "minimum",
        "maximum",
        "where",
        "sum",
        "program_id",
        "num_programs",
        "arange",
        "zeros",
        "load",
        "store",
        "constexpr",
        "int64",
        "float32",
    ):
        assert hasattr(tl, name), f"triton.language.{name}"
    assert "reverse" in inspect.signature(tl.associative_scan).parameters
    assert "do_not_specialize" in inspect.signature(triton.jit).parameters
    assert triton.next_power_of_2(17) == 32 and triton.cdiv(17, 16) == 2
    # the launchers and their registration
    assert callable(torch.library.triton_op) and callable(torch.library.wrap_triton)
    # this test: compiling for an explicit target, as Triton's own AOT tools do
    assert {"target", "options"} <= set(inspect.signature(triton.compile).parameters)
    assert list(inspect.signature(ASTSource).parameters)[:3] == ["fn", "signature", "constexprs"]
    assert GPUTarget("cuda", 90, 32).arch == 90
    assert BaseBackend.parse_attr("D") == [["tt.divisibility", 16]]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    assert ptxas.is_file(), (
        "Triton's wheel ships ptxas: CUDA targets compile without a CUDA install"
    )


if __name__ == "__main__":  # the worker process the fixture starts
    worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
