"""Vim's two scan directions: two ``selective_scan`` calls and their mean vs one
``selective_scan_bidirectional`` call, and what one op dispatch costs, on this CPU.

    python benchmarks/bidirectional.py              # Vim-Ti layer shapes, batch 1 and 8
    python benchmarks/bidirectional.py --repeats 50 --no-save

Rows, timed round-robin in one process (load from other processes hits all alike), order
rotated each round, under ``torch.no_grad()``:
- ``dispatch``: on a one-step, 8-channel scan, each op (``op`` rows) against the Python
  function behind it (``fn`` rows): the difference is the cost of going through the
  torch.library op (argument conversion, the autograd and backend layers). The
  ``@custom_op`` row registers the same function the way vimc no longer does (custom_op adds
  per-call wrappers; _library.py). The ``_nograd``
  twin of the bidirectional op has no autograd formula: the gap between the two op rows is
  what the Python autograd kernel costs with grad mode off. The ``_proj`` op is the call
  compiled Vim-Ti makes per layer in inference (dt_proj applied in the kernel). ``full path``
  rows take the op's checks and packing on every call (``cpu_plans.bypassed()``, whose
  context manager adds about a microsecond), the others the plan made on their first call.
- ``layer``: one Vim-Ti layer's scans, inputs token-major as the mixer passes them (views of
  (Bt, L, E) memory), D, z, delta_bias and softplus on.
Results: benchmarks/results/bidirectional-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
from vimc.ops import selective_scan, selective_scan_bidirectional
from vimc.ops.selective_scan import bidirectional, cpu, cpu_plans

from vimc.cliargs import positive_int
from vimc.machine import header, machine_tag, save_results
from vimc.timing import time_round_robin

RESULTS = Path(__file__).resolve().parent / "results"
DIRECTION = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def direction(Bt: int, E: int, L: int, N: int, g: torch.Generator) -> dict:
    """One direction's inputs, token-major views as Vim's linears produce them."""

    def tm(*shape):  # (Bt, ..., L) view of (Bt, L, ...) memory
        return torch.randn(shape[0], shape[-1], *shape[1:-1], generator=g).movedim(1, -1)

    return dict(
        u=tm(Bt, E, L),
        delta=tm(Bt, E, L) * 0.5 - 2.0,
        A=-torch.exp(torch.log(torch.arange(1.0, N + 1)).repeat(E, 1)),
        B=tm(Bt, 1, N, L),
        C=tm(Bt, 1, N, L),
        D=torch.randn(E, generator=g),
        delta_bias=torch.randn(E, generator=g) * 0.3,
    )


def layer_cases(Bt: int, E: int = 384, L: int = 197, N: int = 16) -> dict:
    g = torch.Generator().manual_seed(Bt)
    f, b = direction(Bt, E, L, N, g), direction(Bt, E, L, N, g)
    z = torch.randn(Bt, L, E, generator=g).mT

    def two_calls():
        y = selective_scan(*(f[k] for k in DIRECTION[:6]), z, f["delta_bias"], True)
        y_b = selective_scan(*(b[k] for k in DIRECTION[:6]), z, b["delta_bias"], True, reverse=True)
        return (y + y_b) / 2

    def one_call():
        pair = [f[k] for k in DIRECTION] + [b[k] for k in DIRECTION]
        return selective_scan_bidirectional(*pair, z=z, delta_softplus=True)

    return {"two selective_scan + mean": two_calls, "selective_scan_bidirectional": one_call}


@functools.cache
def _custom_op_twin():
    """The same forward function registered with ``@torch.library.custom_op`` (a throwaway
    namespace): what vimc's ops would cost per call if registered that way."""
    from vimc.ops.selective_scan import op
    from vimc.ops.selective_scan._autograd import backward_with, setup_context

    twin = torch.library.custom_op("vimc_bench::selective_scan_fwd", mutates_args=())(
        op.selective_scan_fwd
    )
    twin.register_fake(lambda u, delta, A, *rest: (torch.empty_like(u), op._fake_state(u, A)))
    twin.register_autograd(
        backward_with(torch.ops.vimc.selective_scan_bwd), setup_context=setup_context
    )
    return torch.ops.vimc_bench.selective_scan_fwd.default


def dispatch_cases() -> dict:
    g = torch.Generator().manual_seed(0)
    Bt, E, L, N = 1, 8, 1, 16
    f, b = direction(Bt, E, L, N, g), direction(Bt, E, L, N, g)  # B, C (Bt, 1, N, L)
    z = torch.randn(Bt, E, L, generator=g)
    one = (*(f[k] for k in DIRECTION[:6]), z, f["delta_bias"], True, False)
    pair = (*(f[k] for k in DIRECTION), *(b[k] for k in DIRECTION), z, True)
    R = 2  # dt_proj: (E, R) weights on (Bt, R, L) inputs, token-major as x_proj gives them
    proj = [(f[k] if k != "delta" else torch.randn(Bt, L, R, generator=g).mT) for k in DIRECTION]
    proj_b = [(b[k] if k != "delta" else torch.randn(Bt, L, R, generator=g).mT) for k in DIRECTION]
    weights = [torch.randn(E, R, generator=g) for _ in range(2)]
    proj_pair = (*proj, weights[0], *proj_b, weights[1], z, True)
    ops = torch.ops.vimc

    def full_path(fn):
        def run():
            with cpu_plans.bypassed():
                return fn()

        return run

    return {
        "op selective_scan_fwd": lambda: ops.selective_scan_fwd.default(*one),
        "op selective_scan_fwd as @custom_op": lambda: _custom_op_twin()(*one),
        "fn cpu.selective_scan_fwd_cpu": lambda: cpu.selective_scan_fwd_cpu(*one),
        "op selective_scan_bidirectional_fwd": lambda: ops.selective_scan_bidirectional_fwd(*pair),
        "op selective_scan_bidirectional_fwd_nograd": (
            lambda: ops.selective_scan_bidirectional_fwd_nograd(*pair)
        ),
        "op selective_scan_bidirectional_fwd_nograd, full path": full_path(
            lambda: ops.selective_scan_bidirectional_fwd_nograd(*pair)
        ),
        "fn bidirectional.selective_scan_bidirectional_fwd": (
            lambda: bidirectional.selective_scan_bidirectional_fwd(*pair)
        ),
        "op selective_scan_bidirectional_proj_fwd": (
            lambda: ops.selective_scan_bidirectional_proj_fwd(*proj_pair)
        ),
        "op selective_scan_bidirectional_proj_fwd, full path": full_path(
            lambda: ops.selective_scan_bidirectional_proj_fwd(*proj_pair)
        ),
    }


def repeated(fn, inner: int):
    """``fn`` called ``inner`` times: one timed sample of calls too short to time alone."""

    def run():
        for _ in range(inner):
            fn()

    return run


def interleaved(fns: dict, repeats: int, inner: int) -> dict:
    """name -> (p20, median, p80) microseconds per call, ``inner`` calls per sample."""
    for fn in fns.values():  # warm-up: builds / loads what the first call needs
        fn()
    sampled = {k: repeated(fn, inner) for k, fn in fns.items()}
    timings = time_round_robin(sampled, rounds=repeats, warmup=0, rotate=True)
    per_call_us = 1e3 / inner
    return {
        k: (t.p20_ms * per_call_us, t.median_ms * per_call_us, t.p80_ms * per_call_us)
        for k, t in timings.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=positive_int, default=30)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    if not cpu.c_kernel_available():
        raise SystemExit(f"no C kernel here: {cpu.c_kernel_error()}")
    head = header()
    rows = []
    with torch.no_grad():
        groups = [("dispatch", "Bt=1 E=8 L=1 N=16", dispatch_cases(), 200)]
        for Bt in (int(b) for b in args.batches.split(",")):
            groups.append(("layer", f"Bt={Bt} E=384 L=197 N=16", layer_cases(Bt), 5))
        for kind, shape, fns, inner in groups:
            res = interleaved(fns, args.repeats, inner)
            base = res[next(iter(fns))][1]
            for name, (p20, med, p80) in res.items():
                rows.append(dict(kind=kind, shape=shape, name=name, p20_us=p20, median_us=med,
                                 p80_us=p80, x_first=med / base))  # fmt: skip
    lines = [
        "# Two scan directions: two calls vs one bidirectional call, and op dispatch\n",
        head,
        "",
        f"Round-robin in one process, {args.repeats} samples per row; `x first`: median over "
        "the group's first row. Dispatch cost = an `op` row minus the `fn` row of its function.",
        "",
        "| kind | shape | what | median us | p20 us | p80 us | x first |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['shape']} | {r['name']} | {r['median_us']:.1f} | "
            f"{r['p20_us']:.1f} | {r['p80_us']:.1f} | {r['x_first']:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        save_results(
            RESULTS / f"bidirectional-{machine_tag()}", {"machine": head, "rows": rows}, text
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
