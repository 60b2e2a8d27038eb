"""Deployment benchmark: eager, torch.compile, AOTInductor and ONNX Runtime side by side.

    python benchmarks/export.py                      # Vim-Ti 224, batch 1 and 8
    python benchmarks/export.py --batches 1 --repeats 5 --backends eager,onnxruntime
    python benchmarks/export.py --backends compiled,onnxruntime --onnx-scan paired,step,step:2
    python benchmarks/export.py --backends compiled,onnxruntime --ort-threads 2,1
    python benchmarks/export.py --backends compiled,onnxruntime-plugin --ort-spinning off,on
    python benchmarks/export.py --backends aoti,aoti-bidirectional   # the AOTI export forms

Backends: ``aoti`` runs an AOTInductor package in its default export form ("core": one mixer
core op per layer on CPU), ``aoti-bidirectional`` one in the "bidirectional" form (not run
unless named); ``onnxruntime`` runs the standard-op file (``--onnx-scan``: "paired", "step", with
":k" steps per Scan iteration), ``onnxruntime-plugin`` the plugin route (``scan="plugin"``)
with vimc's ONNX Runtime plugin. One run: export/compile time and file size per backend,
then latency per batch (``vimc.timing``) with the backends interleaved round-robin (so load
from other processes hits all of them alike), p50 with p20/p80, and the ratio to the
compiled model. ONNX Runtime's idle threads busy-wait after a run when spinning
is on (its default, "+spin" rows): then every timed call, of every backend, is followed by an
untimed pause (``--settle-ms``) so that no backend is timed while another's threads spin.
Results go to benchmarks/results/export-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from vimc.export import load_aoti, onnxruntime_session, to_aoti, to_onnx
from vimc.export.onnx import run_onnxruntime
from vimc.export.onnx.names import DEFAULT_SCAN, STANDARD_LOWERINGS, resolve_lowering

import vimc
from vimc.cliargs import nonneg_float, positive_int
from vimc.machine import cpu_name, header, machine_tag, save_results, versions
from vimc.timing import time_round_robin

BACKENDS = ("eager", "compiled", "aoti", "onnxruntime", "onnxruntime-plugin")
# by name only: the AOTInductor package in its "bidirectional" export form (a scan op, a conv
# op and two x_proj GEMMs per layer) beside "aoti"'s default "core" form (one mixer core op)
EXTRA_BACKENDS = ("aoti-bidirectional",)
ORT = ("onnxruntime", "onnxruntime-plugin")


def machine_info() -> dict:
    """The machine header line and its parts, with the load average at the start."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "header": header(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        **versions(),
    }


def parse_onnx_scans(spec: str) -> list[tuple[str, int | None]]:
    """--onnx-scan "paired,step:2" -> [("paired", None), ("step", 2)]: standard-op lowerings
    only (the plugin route is its own backend); old spellings ("bidir") warn and give their
    new names."""
    scans = []
    for item in (s.strip() for s in spec.split(",")):
        name, _, k = item.partition(":")
        name = resolve_lowering(name, arg="--onnx-scan", choices=STANDARD_LOWERINGS)
        if k and not (k.isdigit() and int(k) >= 1):
            raise ValueError(f"--onnx-scan: bad steps per iteration in {item!r}")
        scans.append((name, int(k) if k else None))
    return scans


def expand_backends(
    backends: list[str],
    scans: list[tuple[str, int | None]],
    ort_threads: list[int] = (),
    spinning: list[bool] = (False,),
) -> list[str]:
    """One "onnxruntime:<lowering>" backend per --onnx-scan entry when there are several,
    one "...@<n>t" per --ort-threads entry when there are several, and "...+spin" for
    --ort-spinning on, for each ONNX Runtime backend."""
    out = []
    for b in backends:
        if b not in ORT:
            out.append(b)
            continue
        forms = [b]
        if b == "onnxruntime" and len(scans) > 1:
            forms = [f"onnxruntime:{f}" + (f":{k}" if k else "") for f, k in scans]
        if len(ort_threads) > 1:
            forms = [f"{f}@{t}t" for f in forms for t in ort_threads]
        out += [f + ("+spin" if spin else "") for f in forms for spin in spinning]
    return out


def parse_spinning(spec: str) -> list[bool]:
    """--ort-spinning "off,on" -> [False, True]."""
    values = {"off": False, "on": True}
    out = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in out if s not in values]
    if bad or not out:
        raise ValueError(f"--ort-spinning: expected off and/or on, got {spec!r}")
    return [values[s] for s in out]


_EXPORT_S: dict[Path, float] = {}  # ONNX file -> seconds its export took


def prepare(name, model, example, workdir, scan=(DEFAULT_SCAN, None), ort_threads=None):
    """-> (run callable, seconds to export/compile, file size in bytes or None). ``name``
    "onnxruntime:<lowering>[:k]" picks the ONNX scan lowering, else ``scan``
    ("onnxruntime-plugin" always the plugin route); a suffix "@<n>t" ONNX Runtime's intra-op
    threads, else ``ort_threads`` (default torch's); "+spin" leaves ONNX Runtime's spinning
    on."""
    name, spin = name.removesuffix("+spin"), name.endswith("+spin")
    name, _, threads = name.partition("@")
    if threads:
        ort_threads = int(threads.removesuffix("t"))
    if name.startswith("onnxruntime:"):
        f, _, k = name.removeprefix("onnxruntime:").partition(":")
        name, scan = "onnxruntime", (f, int(k) if k else None)
    if name == "onnxruntime-plugin":
        scan = ("plugin", None)
    t0 = time.perf_counter()
    size = None
    if name == "eager":
        run = model
    elif name == "compiled":
        run = torch.compile(model)
    elif name in ("aoti", "aoti-bidirectional"):
        form = "core" if name == "aoti" else "bidirectional"
        path = to_aoti(model, Path(workdir) / f"m_{form}.pt2", example=example, scan_form=form)
        size, run = path.stat().st_size, load_aoti(path)
    elif name in ORT:
        f, k = scan
        path = Path(workdir) / f"m_{f}_{k or 0}.onnx"
        if path.exists():  # another variant of the same file: export once, report its time
            t0 -= _EXPORT_S[path]
        else:
            path = to_onnx(model, path, example=example, scan=f, unroll=k)
            _EXPORT_S[path] = time.perf_counter() - t0
        size = path.stat().st_size
        threads = ort_threads or torch.get_num_threads()
        sess = onnxruntime_session(path, threads=threads, spinning=spin)
        run = lambda x: run_onnxruntime(sess, x)  # noqa: E731
    else:
        known = ", ".join(BACKENDS + EXTRA_BACKENDS)
        raise ValueError(f"--backends: unknown {name!r}; choose from {known}")
    return run, time.perf_counter() - t0, size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vim_tiny")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument(
        "--onnx-scan",
        default=DEFAULT_SCAN,
        help="ONNX scan lowering(s) of standard operators, comma-separated, 'name' or 'name:k' "
        f"(k steps per Scan iteration), name one of {', '.join(STANDARD_LOWERINGS)}; several "
        "give one onnxruntime backend each",
    )
    ap.add_argument(
        "--ort-threads",
        default="",
        help="ONNX Runtime intra-op threads, comma-separated (default: torch's thread count); "
        "several give one onnxruntime backend each",
    )
    ap.add_argument(
        "--ort-spinning",
        default="off",
        help="ONNX Runtime's idle-thread spinning, 'off', 'on' (its default) or 'off,on' "
        "(default off); 'on' adds '+spin' rows and a pause after every timed call",
    )
    ap.add_argument(
        "--settle-ms",
        type=nonneg_float,
        default=50.0,
        help="untimed pause after each timed call when a backend spins (default 50)",
    )
    ap.add_argument("--repeats", type=positive_int, default=10)
    ap.add_argument(
        "--warmup", type=positive_int, default=2, help="untimed calls, the first one reported"
    )
    ap.add_argument("--out-dir", default=str(Path(__file__).with_name("results")))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    scans = parse_onnx_scans(args.onnx_scan)
    scan_spec = ",".join(f + (f":{k}" if k else "") for f, k in scans)  # old spellings renamed
    ort_threads = [int(t) for t in args.ort_threads.split(",") if t]
    spinning = parse_spinning(args.ort_spinning)
    backends = expand_backends(
        [b for b in args.backends.split(",") if b], scans, ort_threads, spinning
    )
    settle = args.settle_ms / 1e3 if any(spinning) else 0.0
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    model = vimc.create_model(args.model, img_size=args.img_size).eval()
    machine = machine_info()
    print(machine["header"])
    print(f"# {args.model} {args.img_size}px, load {machine['loadavg_at_start']}", flush=True)
    runs, setup = {}, {}
    results = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        example = torch.randn(2, 3, args.img_size, args.img_size)
        for b in backends:
            runs[b], secs, size = prepare(
                b, model, example, tmp, scans[0], ort_threads[0] if ort_threads else None
            )
            setup[b] = {"export_s": secs, "file_mb": None if size is None else size / 1e6}
            print(
                f"prepared {b}: {secs:.1f} s" + (f", {size / 1e6:.1f} MB" if size else ""),
                flush=True,
            )
        for batch in batches:
            x = torch.randn(batch, 3, args.img_size, args.img_size)
            ref = model(x)
            # warm-up first (compiled: compiles for this batch size), then round-robin; when a
            # backend spins, a pause after every timed call lets its threads go idle first
            timings = time_round_robin(
                {b: (lambda run=runs[b], x=x: run(x)) for b in backends},
                rounds=args.repeats,
                warmup=args.warmup,
                pause_s=settle,
            )
            for b in backends:
                setup[b][f"first_call_s_b{batch}"] = timings[b].first_s
                setup[b][f"max_abs_b{batch}"] = (runs[b](x).float() - ref).abs().max().item()
            base = timings["compiled"].median_ms if "compiled" in timings else None
            for b, t in timings.items():
                results.append(
                    {
                        "backend": b,
                        "batch": batch,
                        "p50_ms": t.median_ms,
                        "p20_ms": t.p20_ms,
                        "p80_ms": t.p80_ms,
                        "img_per_s": t.per_second(batch),
                        "vs_compiled": t.median_ms / base if base else None,
                    }
                )
    machine["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    md = [
        f"# Export benchmark: {args.model} {args.img_size}px",
        "",
        "```",
        machine["header"],
        "```",
        "",
        f"Load average {machine['loadavg_at_start']} at start, {machine['loadavg_at_end']} at "
        f"end; onnx {machine['onnx']}; ONNX scan lowering {scan_spec}; ONNX Runtime "
        "intra-op threads "
        + (args.ort_threads or f"{machine['torch_threads']} (torch's)")
        + (
            f", spinning off unless '+spin' (then {args.settle_ms:g} ms untimed pause after "
            "every timed call)"
            if any(spinning)
            else ", spinning off"
        ),
        "",
        "| backend | batch | p50 ms | p20 ms | p80 ms | img/s | x compiled |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r['vs_compiled']:.2f}" if r["vs_compiled"] else "-"
        md.append(
            f"| {r['backend']} | {r['batch']} | {r['p50_ms']:.1f} | {r['p20_ms']:.1f} | "
            f"{r['p80_ms']:.1f} | {r['img_per_s']:.1f} | {ratio} |"
        )
    md += [
        "",
        "| backend | export/compile s | file MB | first call s (per batch) | max abs vs eager |",
        "|---|---|---|---|---|",
    ]
    for b, s in setup.items():
        first = ", ".join(
            f"b{k.rsplit('b', 1)[1]}: {v:.1f}" for k, v in s.items() if k.startswith("first_call")
        )
        err = ", ".join(f"{v:.1e}" for k, v in s.items() if k.startswith("max_abs"))
        size = f"{s['file_mb']:.1f}" if s["file_mb"] else "-"
        md.append(f"| {b} | {s['export_s']:.1f} | {size} | {first} | {err} |")
    text = "\n".join(md)
    print(text)
    if not args.no_save:
        payload = {
            "model": args.model,
            "onnx_scan": scan_spec,
            "ort_spinning": args.ort_spinning,
            "settle_ms": args.settle_ms if any(spinning) else 0,
            "img_size": args.img_size,
            "machine": machine,
            "setup": setup,
            "latency": results,
        }
        save_results(Path(args.out_dir) / f"export-{machine_tag()}", payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
