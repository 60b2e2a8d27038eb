"""The whole GPU proof in one run: kernels, compile, export and speed on a CUDA machine.

    python benchmarks/gpu.py                  # on a CUDA machine; at most about 8 minutes
    python benchmarks/gpu.py --steps kernels,speed
    python benchmarks/gpu.py --dry-run        # every step on the CPU, tiny sizes, Triton's
                                              # interpreter; results in a temporary folder

Steps, each printed as it runs; a failing step is recorded with its error and the run goes on:
- kernels: both Triton kernel families (sequential, chunked), forward and backward, against the
  float64 reference: every option, float32/bfloat16/float16, L = 1, 197, 1025, 6085, held to
  tests/tolerances.py's TRITON_REL_ERR;
- speed: both families at (Bt, E, L, N) = (1|8|128, 384, 197, 16) and (1, 384, 6085, 16),
  forward and forward+backward: ms, GB/s moved (each input read once, each output written
  once) and that as a fraction of the copy bandwidth measured in the same run;
- compile: torch.compile(fullgraph=True) of Vim-Ti forward and backward: graph breaks, and
  parity with eager (tests/tolerances.py's COMPILED_VS_EAGER);
- aoti: Vim-Ti as an AOTInductor package, loaded and run in a fresh process that never
  imports vimc (on CUDA: the Triton kernels are inside the package), against eager;
- throughput: Vim-Ti and Vim-S images/s at batch 1, 8, 128, float32 and bfloat16 autocast;
- vim_vs_deit: Vim-Ti against DeiT-Ti (SDPA attention) at 224..1248 px, batch 1: latency and
  peak memory, and the paper's Figure 1 as a plot.
Results: benchmarks/results/gpu-<device>.{json,md} (and -vim_vs_deit.png) with the device,
driver, torch and Triton versions and the date. Runs on torch 2.11 / Triton 3.6 and later.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--dry-run" in sys.argv[1:]:
    # read when triton is first imported: the kernels then run on CPU tensors
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from vimc.ops.selective_scan import triton as tri  # noqa: E402
from vimc.ops.selective_scan.reference import selective_scan_reference  # noqa: E402

from vimc.bench import measure  # noqa: E402
from vimc.bench_report import BenchResult, format_table, plot  # noqa: E402
from vimc.deit import DeiT  # noqa: E402
from vimc.machine import header, machine_tag, save_results, versions  # noqa: E402
from vimc.model import create_model  # noqa: E402
from vimc.timing import time_fn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEPS = ("kernels", "speed", "compile", "aoti", "throughput", "vim_vs_deit")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# option sets of the kernel checks: Vim's (both directions, one with a last-state cotangent)
# and none at all
OPTIONS = {
    "vim": dict(D=True, z=True, bias=True, softplus=True, reverse=False, dlast=False),
    "vim-reverse-dlast": dict(D=True, z=True, bias=True, softplus=True, reverse=True, dlast=True),
    "bare": dict(D=False, z=False, bias=False, softplus=False, reverse=False, dlast=False),
}


def _tolerances():
    """tests/tolerances.py, the one table of bounds, loaded by path (a script has no tests
    package on its path)."""
    spec = importlib.util.spec_from_file_location("vimc_tolerances", ROOT / "tests/tolerances.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Plan:
    """The sizes one run uses: a GPU's, or the dry run's tiny ones."""

    device: str
    dry: bool
    ref_Ls: tuple = (1, 197, 1025, 6085)
    ref_shape: tuple = (2, 32, 16, 2)  # Bt, E, N, G of the kernel checks
    speed_shapes: tuple = (
        (1, 384, 197, 16),
        (8, 384, 197, 16),
        (128, 384, 197, 16),
        (1, 384, 6085, 16),
    )
    copy_mb: int = 1024
    repeats: int = 30
    vim: dict = field(default_factory=dict)  # create_model overrides (the dry run's tiny Vims)
    deit: dict = field(default_factory=dict)  # DeiT overrides
    img_size: int = 224
    compile_batch: int = 8
    batches: tuple = (1, 8, 128)
    resolutions: tuple = (224, 512, 768, 1024, 1248)
    point_seconds: float = 3.0
    out_dir: Path | None = None  # set by run(): where results and the plot go
    tag: str = ""  # the machine's name in result files (vimc.machine.machine_tag)


def gpu_plan() -> Plan:
    return Plan(device="cuda", dry=False)


def dry_plan() -> Plan:
    tiny = dict(embed_dim=16, depth=1, d_state=4, num_classes=10)
    return Plan(
        device="cpu",
        dry=True,
        ref_Ls=(1, 9),
        ref_shape=(1, 4, 4, 2),
        speed_shapes=((1, 4, 9, 4), (2, 4, 9, 4)),
        copy_mb=1,
        repeats=1,
        vim=tiny,
        deit=dict(embed_dim=16, depth=1, num_heads=2, num_classes=10),
        img_size=32,
        compile_batch=2,
        batches=(1, 2),
        resolutions=(32, 48),
        point_seconds=0.05,
    )


# ---------------------------------------------------------------------------------------------
# kernels against the float64 reference
# ---------------------------------------------------------------------------------------------


def scan_inputs(Bt, E, L, N, G, opts: dict, dtype, device, seed=0) -> dict:
    """Inputs in the ranges Vim sees (tests/ops/_scan_cases.make_inputs' ranges); A, D and
    delta_bias float32 as Vim's parameters are."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sp = opts["softplus"]
    A = -torch.exp(torch.log(torch.arange(1.0, N + 1)).repeat(E, 1) + 0.1 * rn(E, N))
    t = dict(
        u=rn(Bt, E, L).to(dtype),
        delta=(rn(Bt, E, L) * 0.5 - 2 if sp else torch.rand(Bt, E, L, generator=g) * 0.2).to(dtype),
        A=A,
        B=rn(Bt, G, N, L).to(dtype),
        C=rn(Bt, G, N, L).to(dtype),
        D=rn(E) if opts["D"] else None,
        z=rn(Bt, E, L).to(dtype) if opts["z"] else None,
        delta_bias=(rn(E) * 0.3 if sp else rn(E).abs() * 0.05) if opts["bias"] else None,
    )
    return {k: None if v is None else v.to(device) for k, v in t.items()}


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rel_err(got, ref) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).norm() / ref.norm().clamp_min(1e-300)).item()


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _reference(ins: dict, opts: dict, dout, dlast):
    x = {k: None if v is None else v.double().requires_grad_(True) for k, v in ins.items()}
    flags = dict(delta_softplus=opts["softplus"], reverse=opts["reverse"])
    out, last = selective_scan_reference(**x, **flags, return_last_state=True)
    outs, cots = [out], [dout.double()]
    if dlast is not None:
        outs, cots = outs + [last], cots + [dlast.double()]
    wrt = [v for v in x.values() if v is not None]
    grads = iter(torch.autograd.grad(outs, wrt, cots))
    return out, last, {k: next(grads) for k, v in x.items() if v is not None}


def step_kernels(plan: Plan) -> dict:
    tol = _tolerances().TRITON_REL_ERR
    Bt, E, N, G = plan.ref_shape
    rows = []
    for L in plan.ref_Ls:
        for opt_name, opts in OPTIONS.items():
            for dtype in DTYPES:
                ins = scan_inputs(Bt, E, L, N, G, opts, dtype, plan.device)
                g = torch.Generator().manual_seed(1)
                dout = torch.randn(Bt, E, L, generator=g).to(dtype).to(plan.device)
                dlast = (
                    torch.randn(Bt, E, N, generator=g).to(plan.device) if opts["dlast"] else None
                )
                ref_out, ref_last, ref_grads = _reference(ins, opts, dout, dlast)
                flags = (opts["softplus"], opts["reverse"])
                for kernel in tri.KERNELS:
                    args = [ins[k] for k in NAMES]
                    out, last = tri.selective_scan_fwd_triton(*args, *flags, kernel=kernel)
                    grads = tri.selective_scan_bwd_triton(dout, dlast, *args, *flags, kernel=kernel)
                    fwd = max(rel_err(out, ref_out), rel_err(last, ref_last))
                    errs = {
                        k: rel_err(gr, ref_grads[k])
                        for k, gr in zip(NAMES, grads)
                        if k in ref_grads
                    }
                    worst = max(errs, key=errs.get)
                    fwd_tol, grad_tol = tol[dtype]
                    ok = fwd <= fwd_tol and errs[worst] <= grad_tol
                    row = dict(L=L, options=opt_name, dtype=_name(dtype), kernel=kernel)
                    row |= dict(fwd_err=fwd, fwd_tol=fwd_tol, grad_err=errs[worst])
                    rows.append(row | dict(worst_grad="d" + worst, grad_tol=grad_tol, ok=ok))
                    print(
                        f"  L={L} {opt_name} {rows[-1]['dtype']} {kernel}: fwd {fwd:.1e}, "
                        f"d{worst} {errs[worst]:.1e} {'ok' if ok else 'FAIL'}"
                    )
    return dict(rows=rows, ok=all(r["ok"] for r in rows))


# ---------------------------------------------------------------------------------------------
# kernel speed against the device's copy bandwidth
# ---------------------------------------------------------------------------------------------


def copy_bandwidth(plan: Plan) -> float:
    """GB/s of a device-to-device copy (bytes read + written), the yardstick of the scan's."""
    src = torch.empty(plan.copy_mb * 2**20 // 4, device=plan.device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), warmup=2, repeats=max(3, plan.repeats), device=plan.device)
    return 2 * src.numel() * 4 / (t.median_ms / 1e3) / 1e9


def _in_turn(*fns):
    for fn in fns:
        fn()


def step_speed(plan: Plan) -> dict:
    copy = copy_bandwidth(plan)
    print(f"  copy bandwidth {copy:.0f} GB/s")
    opts = OPTIONS["vim"]
    rows = []
    for Bt, E, L, N in plan.speed_shapes:
        ins = scan_inputs(Bt, E, L, N, 1, opts, torch.float32, plan.device)
        args = [ins[k] for k in NAMES]
        dout = torch.randn_like(ins["u"])
        act, bc = Bt * E * L * 4, Bt * N * L * 4  # one (Bt, E, L) and one (Bt, G, N, L) tensor
        moved = {"fwd": 4 * act + 2 * bc, "fwd+bwd": 4 * act + 2 * bc + 7 * act + 4 * bc}
        for kernel in tri.KERNELS:
            fwd = partial(tri.selective_scan_fwd_triton, *args, True, False, kernel=kernel)
            bwd = partial(
                tri.selective_scan_bwd_triton, dout, None, *args, True, False, kernel=kernel
            )
            both = partial(_in_turn, fwd, bwd)
            for mode, fn in (("fwd", fwd), ("fwd+bwd", both)):
                t = time_fn(fn, warmup=2, repeats=plan.repeats, device=plan.device)
                gbps = moved[mode] / (t.median_ms / 1e3) / 1e9
                row = dict(shape=[Bt, E, L, N], kernel=kernel, mode=mode, ms=t.median_ms)
                row |= dict(p20_ms=t.p20_ms, p80_ms=t.p80_ms, gb_moved=moved[mode] / 1e9)
                rows.append(row | dict(gbps=gbps, copy_fraction=gbps / copy))
                print(
                    f"  {(Bt, E, L, N)} {kernel} {mode}: {t.median_ms:.3f} ms, {gbps:.0f} GB/s "
                    f"= {gbps / copy:.0%} of copy"
                )
    return dict(copy_gbps=copy, rows=rows, ok=True)


# ---------------------------------------------------------------------------------------------
# torch.compile, AOTInductor
# ---------------------------------------------------------------------------------------------


def _vim(plan: Plan, name="vim_tiny", **kw):
    torch.manual_seed(0)
    return create_model(name, **(plan.vim | kw)).to(plan.device)


def step_compile(plan: Plan) -> dict:
    tol = _tolerances()
    model = _vim(plan, img_size=plan.img_size)
    x = torch.randn(plan.compile_batch, 3, plan.img_size, plan.img_size, device=plan.device)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    g = torch.randn(plan.compile_batch, model.num_classes, device=plan.device)
    results = {}
    for name, fn in (("eager", model), ("compiled", compiled)):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = fn(x)
        (out * g).sum().backward()
        results[name] = (out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
        print(f"  {name} forward+backward {time.perf_counter() - t0:.1f} s (first call)")
    (out_e, grads_e), (out_c, grads_c) = results["eager"], results["compiled"]
    fwd_ok = torch.allclose(out_c, out_e, **tol.COMPILED_VS_EAGER)
    grad_tol = tol.COMPILED_VS_EAGER_GRAD
    bad = [k for k in grads_e if not torch.allclose(grads_c[k], grads_e[k], **grad_tol)]
    rec = dict(graph_breaks=explained.graph_break_count, graphs=explained.graph_count)
    rec |= dict(max_abs_logits=(out_c - out_e).abs().max().item(), grads_checked=len(grads_e))
    rec |= dict(grads_outside_tolerance=bad, tol_fwd=tol.COMPILED_VS_EAGER, tol_grad=grad_tol)
    print(
        f"  graph breaks {rec['graph_breaks']}, logits max abs {rec['max_abs_logits']:.1e}, "
        f"{len(bad)} of {len(grads_e)} gradients outside tolerance"
    )
    return rec | dict(ok=rec["graph_breaks"] == 0 and fwd_ok and not bad)


# The fresh process: plain torch, no vimc (a CUDA package embeds the scan's Triton kernels; a CPU
# package calls back into vimc's C kernel, so the dry run's imports vimc.ops first).
_AOTI_RUNNER = """
import json, sys, torch
if sys.argv[4] == "cpu":
    import vimc.ops  # noqa: F401
runner = torch._inductor.aoti_load_package(sys.argv[1])
x = torch.load(sys.argv[2]).to(sys.argv[4])
torch.save(runner(x).cpu(), sys.argv[3])
print(json.dumps({"vimc_imported": any(m.split(".")[0] == "vimc" for m in sys.modules)}))
"""


def step_aoti(plan: Plan) -> dict:
    from vimc.export.aoti import to_aoti

    model = _vim(plan, img_size=plan.img_size).eval()
    x = torch.randn(2, 3, plan.img_size, plan.img_size, device=plan.device)
    with torch.no_grad():
        want = model(x).cpu()
    with tempfile.TemporaryDirectory(dir=plan.out_dir) as tmp:
        pkg, xin, xout = Path(tmp, "vim_tiny.pt2"), Path(tmp, "x.pt"), Path(tmp, "out.pt")
        t0 = time.perf_counter()
        to_aoti(model, pkg, example=x, dynamic_batch=False)
        build_s = time.perf_counter() - t0
        torch.save(x.cpu(), xin)
        r = subprocess.run(
            [sys.executable, "-c", _AOTI_RUNNER, str(pkg), str(xin), str(xout), plan.device],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp,
        )
        if r.returncode != 0:
            raise RuntimeError(f"the fresh process failed:\n{r.stderr[-3000:]}")
        got = torch.load(xout)
        imported = json.loads(r.stdout.strip().splitlines()[-1])["vimc_imported"]
    max_abs = (got - want).abs().max().item()
    close = torch.allclose(got, want, atol=1e-4, rtol=1e-4)  # vimc parity's float32 default
    print(
        f"  package built in {build_s:.0f} s; fresh process imported vimc: {imported}; "
        f"max abs vs eager {max_abs:.1e}"
    )
    ok = close and (plan.device == "cpu" or not imported)
    return dict(build_s=build_s, vimc_imported=imported, max_abs=max_abs, ok=ok)


# ---------------------------------------------------------------------------------------------
# whole-model speed
# ---------------------------------------------------------------------------------------------


def step_throughput(plan: Plan) -> dict:
    rows, dev = [], torch.device(plan.device)
    for name in ("vim_tiny", "vim_small"):
        model = _vim(plan, name, img_size=plan.img_size).eval()
        for dtype in (torch.float32, torch.bfloat16):
            for batch in plan.batches:
                try:
                    m = measure(model, plan.img_size, batch, dev, plan.point_seconds, dtype=dtype)
                except torch.OutOfMemoryError as exc:
                    m = dict(error=f"out of memory: {str(exc).splitlines()[0]}")
                rows.append(dict(model=name, dtype=_name(dtype), batch=batch) | m)
                ips = m.get("images_per_s")
                print(
                    f"  {name} {rows[-1]['dtype']} batch {batch}: "
                    + (f"{ips:.1f} img/s" if ips else m["error"])
                )
        del model
    return dict(rows=rows, ok=all("error" not in r for r in rows))


def step_vim_vs_deit(plan: Plan) -> dict:
    results, dev = [], torch.device(plan.device)
    for name in ("vim_tiny", "deit_tiny"):
        for res in plan.resolutions:
            tokens = (res // 16) ** 2 + 1
            r = BenchResult(name, res, tokens, 1)
            try:
                torch.manual_seed(0)
                model = (
                    _vim(plan, img_size=res)
                    if name == "vim_tiny"
                    else DeiT(img_size=res, attn_impl="sdpa", **plan.deit).to(dev)
                ).eval()
                for k, v in measure(model, res, 1, dev, plan.point_seconds).items():
                    setattr(r, k, v)
            except torch.OutOfMemoryError as exc:
                r.status, r.note = "oom", str(exc).splitlines()[0]
            finally:
                model = None
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(r)
            print(
                f"  {name} @ {res}: {r.status}, {r.latency_ms or 0:.2f} ms, "
                f"peak {r.peak_mem_mb or 0:.0f} MB"
            )
    png = plan.out_dir / f"gpu-{plan.tag}-vim_vs_deit.png"
    try:
        plot(results, png, title=f"Vim-Ti vs DeiT-Ti (SDPA), batch 1, {plan.tag}")
    except ImportError as exc:  # matplotlib is an extra
        png = f"not drawn: {exc}"
    ok = all(r.status == "ok" for r in results)
    return dict(rows=[vars(r) for r in results], table=format_table(results), plot=str(png), ok=ok)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def driver_version() -> str:
    cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return "none (no NVIDIA driver)"
    return out[0] if out else "unknown"


STEP_FUNCTIONS = {
    "kernels": step_kernels,
    "speed": step_speed,
    "compile": step_compile,
    "aoti": step_aoti,
    "throughput": step_throughput,
    "vim_vs_deit": step_vim_vs_deit,
}
assert tuple(STEP_FUNCTIONS) == STEPS


def run(plan: Plan, out_dir: Path, steps=STEPS) -> dict:
    """Every step in ``steps``, each recorded: its result, or its error; -> the payload."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan.out_dir, plan.tag = out_dir, machine_tag(plan.device)
    tag = plan.tag
    payload = dict(
        device=torch.cuda.get_device_name() if plan.device == "cuda" else tag,
        driver=driver_version(),
        cuda=torch.version.cuda,
        versions=versions(),
        header=header(plan.device),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        dry_run=plan.dry,
        triton_interpret=os.environ.get("TRITON_INTERPRET", ""),
        chunked_max_rows=tri.CHUNKED_MAX_ROWS,
        steps={},
    )
    print(payload["header"], f"| driver {payload['driver']}", flush=True)
    t_run = time.perf_counter()
    for name in steps:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            rec = STEP_FUNCTIONS[name](plan)
            rec["status"] = "ok" if rec.pop("ok") else "failed"
        except Exception as exc:  # noqa: BLE001  (recorded, and the run goes on)
            rec = dict(
                status="error",
                error=f"{type(exc).__name__}: {exc}"[:2000],
                traceback=traceback.format_exc()[-4000:],
            )
            print(f"  ERROR {rec['error'][:500]}", flush=True)
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        payload["steps"][name] = rec
        print(f"== {name}: {rec['status']} in {rec['seconds']} s", flush=True)
    payload["seconds"] = round(time.perf_counter() - t_run, 1)
    save_results(out_dir / f"gpu-{tag}", payload, markdown(payload))
    return payload


def markdown(p: dict) -> str:
    cmd = "python benchmarks/gpu.py" + (" --dry-run" if p["dry_run"] else "")
    lines = [f"# GPU proof: {p['device']}", "", p["header"], ""]
    lines += [
        f"driver {p['driver']}, CUDA {p['cuda']}, date {p['date']}, {p['seconds']} s: `{cmd}`"
    ]
    lines += ["", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in p["steps"].items()]
    for name, rec in p["steps"].items():
        lines += ["", f"## {name}", ""]
        if "error" in rec:
            lines += ["```", rec["error"], "```"]
            continue
        if name == "vim_vs_deit":
            lines += [rec["table"], "", f"plot: {rec['plot']}"]
            continue
        extra = {k: v for k, v in rec.items() if k not in ("rows", "status", "seconds")}
        if extra:
            lines += [f"- {k}: {v}" for k, v in extra.items()] + [""]
        rows = rec.get("rows", [])
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dry = "every step on the CPU at tiny sizes (Triton's interpreter)"
    ap.add_argument("--dry-run", action="store_true", help=dry)
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {STEPS}")
    out = "results folder (default benchmarks/results; a temporary one for --dry-run)"
    ap.add_argument("--out", type=Path, default=None, help=out)
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        ap.error(f"unknown steps {unknown}; choose from {STEPS}")
    if args.dry_run:
        plan = dry_plan()
        out = args.out or Path(tempfile.mkdtemp(prefix="vimc-gpu-dry-"))
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: run on a GPU machine, or use --dry-run")
        plan, out = gpu_plan(), args.out or RESULTS
    payload = run(plan, out, steps)
    bad = [k for k, v in payload["steps"].items() if v["status"] != "ok"]
    print(f"results in {out}; " + (f"not ok: {', '.join(bad)}" if bad else "every step ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
