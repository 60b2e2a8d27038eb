"""A Vim mixer's two convolutions with silu: the fused C kernel against the shifted form.

    python benchmarks/conv.py                    # batch 1 and 8
    python benchmarks/conv.py --batches 8 --rounds 20 --no-save

Two tables, each timed round robin in one process (``--threads``, default 2; grad off):
- ``layer``: one Vim-Ti layer's pair (x a (B, 197, 384) view of in_proj's (B, 197, 768) output,
  K = 4) three ways: ``vimc.ops.conv1d_silu_pair`` (the C kernel through its op), the shifted
  form eager, and the shifted form compiled by Inductor (one fused loop), with each one's
  largest difference from the op's output.
- ``model``: Vim-Ti (scan_form "bidirectional") with ``conv_form="fused"`` (the default) against
  ``"shifted"``, same weights, eager and both compiled (the fused op in the graph against
  Inductor's fused loop), and the largest difference of their logits.
Results: benchmarks/results/conv-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from vimc.ops import anticausal_conv1d, causal_conv1d, conv1d_silu_pair

import vimc
from vimc.cliargs import positive_int
from vimc.machine import header, machine_tag, save_results
from vimc.timing import round_ratios, time_round_robin

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS, E, K = 197, 384, 4  # Vim-Ti at 224 px


def shifted(x, w, b, wb, bb):
    return causal_conv1d(x, w, b, silu=True), anticausal_conv1d(x, wb, bb, silu=True)


def layer_rows(batch: int, rounds: int) -> list[dict]:
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, TOKENS, 2 * E, generator=g)[..., :E]
    args = (x, *(torch.randn(s, generator=g) for s in ((E, 1, K), (E,), (E, 1, K), (E,))))
    fns = {
        "fused op (C)": lambda: conv1d_silu_pair(*args),
        "shifted, eager": lambda: shifted(*args),
        "shifted, compiled": torch.compile(lambda: shifted(*args), fullgraph=True),
    }
    outs = {name: fn() for name, fn in fns.items()}  # also compiles
    t = time_round_robin(fns, rounds=rounds, warmup=3, rotate=True)
    ref = outs["fused op (C)"]
    return [
        {
            "batch": batch,
            "form": name,
            "median_ms": t[name].median_ms,
            "vs_fused": t[name].median_ms / t["fused op (C)"].median_ms,
            "max_abs_diff": max((o - r).abs().max().item() for o, r in zip(outs[name], ref)),
        }
        for name in fns
    ]


def model_row(batch: int, rounds: int, compiled: bool = False) -> dict:
    """Vim-Ti with conv_form "fused" against "shifted", round robin, eager or both compiled
    (fullgraph: the fused op in the graph against Inductor's fused loop). Both with
    scan_form "bidirectional", whose conv is its own op (the default "core" runs it inside
    the mixer's one kernel call)."""
    torch.manual_seed(0)
    fused = vimc.create_model("vim_tiny").eval()
    for layer in fused.layers:
        layer.mixer.scan_form = "bidirectional"
    plain = copy.deepcopy(fused)
    for layer in plain.layers:
        layer.mixer.conv_form = "shifted"
    x = torch.randn(batch, 3, 224, 224)
    fns = {"fused": fused, "shifted": plain}
    if compiled:
        fns = {name: torch.compile(m, fullgraph=True) for name, m in fns.items()}
    outs = {name: fn(x) for name, fn in fns.items()}  # also compiles
    t = time_round_robin({name: (lambda fn=fn: fn(x)) for name, fn in fns.items()},
                         rounds=rounds, warmup=2, rotate=True)  # fmt: skip
    return {
        "batch": batch,
        "mode": "compiled" if compiled else "eager",
        "fused_ms": t["fused"].median_ms,
        "shifted_ms": t["shifted"].median_ms,
        "ratio": t["fused"].median_ms / t["shifted"].median_ms,
        "round_ratio": round_ratios(t["fused"], t["shifted"]),
        "max_abs_diff": (outs["fused"] - outs["shifted"]).abs().max().item(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=positive_int, default=40, help="timed rounds per row")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = header()
    with torch.no_grad():
        layers = [r for b in args.batches for r in layer_rows(b, args.rounds)]
        models = [
            model_row(b, max(4, args.rounds // 4), compiled)
            for compiled in (False, True)
            for b in args.batches
        ]
    lines = [
        "# A Vim mixer's convolutions with silu: fused C kernel against the shifted form\n",
        head,
        "",
        f"Round robin in one process, {args.threads} threads, grad off.",
        "",
        "| batch | one layer's pair | median ms | vs the fused op | max abs diff from it |",
        "|---|---|---|---|---|",
        *(
            f"| {r['batch']} | {r['form']} | {r['median_ms']:.3f} | {r['vs_fused']:.2f}x | "
            f"{r['max_abs_diff']:.2g} |"
            for r in layers
        ),
        "",
        "Vim-Ti, conv_form fused (default) against shifted, eager and compiled (fullgraph: the",
        "fused op in the graph against Inductor's fused loop):",
        "",
        "| batch | mode | fused ms | shifted ms | fused / shifted | per round (p20-p80) | "
        "max abs diff of logits |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['batch']} | {r['mode']} | {r['fused_ms']:.1f} | {r['shifted_ms']:.1f} | "
            f"{r['ratio']:.3f} | {r['round_ratio']['median']:.3f} "
            f"({r['round_ratio']['p20']:.3f}-{r['round_ratio']['p80']:.3f}) | "
            f"{r['max_abs_diff']:.2g} |"
            for r in models
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        payload = {"header": head, "args": vars(args), "layer": layers, "model": models}
        save_results(RESULTS / f"conv-{machine_tag()}", payload, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
