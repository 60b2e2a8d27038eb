"""Vim-Ti's linears against DeiT-Ti's on this CPU, and what padding x_proj's output does.

    python benchmarks/linears.py                 # batch 1 and 8
    python benchmarks/linears.py --batches 8 --rounds 20 --no-save

Two tables, each timed round robin in one process (``--threads``, default 2; grad off):
- ``gemm``: every linear shape of the two models' blocks as compiled Vim-Ti and DeiT-Ti call
  it (M = batch x 197 tokens; DeiT's with their bias), distinct weights per layer as in the
  model, so a weight is not warm in cache from the call before. Median per call, GFLOP/s, and
  ms per forward (calls per forward x per call). Vim-Ti's x_proj appears twice: its 44 output
  columns as stored, and padded with zero rows to the width the mixer multiplies by
  (``BiMambaMixer.x_proj_align``).
- ``model``: compiled Vim-Ti as shipped against the same weights with the padding off
  (``x_proj_align = 1``), and the largest difference of their logits.
Vim-Ti's dt_proj is absent: compiled inference applies it inside the scan kernel.
Results: benchmarks/results/linears-<machine>.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F

import vimc
from vimc.cliargs import positive_int
from vimc.deit import deit_tiny
from vimc.machine import header, machine_tag, save_results
from vimc.timing import time_round_robin

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = 197  # 224 px, 16 px patches, one class token


def gemm_shapes(vim, deit) -> list[tuple[str, str, int, int, int, bool]]:
    """(model, name, K, N, calls per forward, bias) of each block linear."""
    mixer, depth = vim.layers[0].mixer, len(vim.layers)
    E, D = mixer.d_inner, mixer.d_model
    x_cols = mixer.x_proj.weight.shape[0]
    padded = mixer.x_proj_width
    rows = [
        ("Vim-Ti", "in_proj", D, 2 * E, depth, False),
        ("Vim-Ti", f"x_proj, {x_cols} columns", E, x_cols, 2 * depth, False),
        ("Vim-Ti", f"x_proj, padded to {padded}", E, padded, 2 * depth, False),
        ("Vim-Ti", "out_proj", E, D, depth, False),
    ]
    blk, ddepth = deit.blocks[0], len(deit.blocks)
    for name, lin in (("qkv", blk.attn.qkv), ("attn proj", blk.attn.proj),
                      ("fc1", blk.mlp.fc1), ("fc2", blk.mlp.fc2)):  # fmt: skip
        rows.append(("DeiT-Ti", name, lin.in_features, lin.out_features, ddepth, True))
    return rows


def gemm_rows(shapes, batch: int, rounds: int) -> list[dict]:
    g = torch.Generator().manual_seed(batch)
    M = batch * TOKENS
    fns = {}
    for model, name, K, N, calls, bias in shapes:
        x = torch.randn(M, K, generator=g)
        ws = [torch.randn(N, K, generator=g) for _ in range(calls)]
        b = torch.randn(N, generator=g) if bias else None

        def run(x=x, ws=ws, b=b):  # one forward's calls of this shape
            for w in ws:
                F.linear(x, w, b)

        fns[(model, name, K, N, calls)] = run
    t = time_round_robin(fns, rounds=rounds, warmup=2, rotate=True)
    rows = []
    for (model, name, K, N, calls), tm in t.items():
        per_call_us = tm.median_ms * 1e3 / calls
        rows.append(dict(batch=batch, model=model, name=name, M=M, K=K, N=N, calls=calls,
                         per_call_us=per_call_us, gflops=2 * M * K * N / per_call_us / 1e3,
                         ms_per_forward=tm.median_ms))  # fmt: skip
    return rows


def model_row(batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    padded = vimc.create_model("vim_tiny").eval()
    for layer in padded.layers:  # x_proj as a linear of its own (the "core" form has it inside)
        layer.mixer.scan_form = "bidirectional"
    plain = copy.deepcopy(padded)
    for layer in plain.layers:
        layer.mixer.x_proj_align = 1
    fa, fb = torch.compile(padded, fullgraph=True), torch.compile(plain, fullgraph=True)
    y_a, y_b = fa(x), fb(x)
    t = time_round_robin({"padded": lambda: fa(x), "plain": lambda: fb(x)},
                         rounds=rounds, warmup=1, rotate=True)  # fmt: skip
    return dict(batch=batch, padded_ms=t["padded"].median_ms, plain_ms=t["plain"].median_ms,
                ratio=t["padded"].median_ms / t["plain"].median_ms,
                max_abs_diff=(y_a - y_b).abs().max().item())  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=positive_int, default=40, help="timed rounds per table")
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = header()
    shapes = gemm_shapes(vimc.create_model("vim_tiny"), deit_tiny())
    with torch.no_grad():
        gemms = [r for b in args.batches for r in gemm_rows(shapes, b, args.rounds)]
        models = [model_row(b, args.rounds) for b in args.batches]
    lines = [
        "# Vim-Ti's linears against DeiT-Ti's, and x_proj padded\n",
        head,
        "",
        f"Round robin in one process, {args.rounds} rounds, {args.threads} threads, grad off.",
        "",
        "| batch | model | linear | M x K x N | calls / forward | us per call | GFLOP/s | "
        "ms per forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in gemms:
        lines.append(
            f"| {r['batch']} | {r['model']} | {r['name']} | {r['M']} x {r['K']} x {r['N']} | "
            f"{r['calls']} | {r['per_call_us']:.1f} | {r['gflops']:.0f} | "
            f"{r['ms_per_forward']:.2f} |"
        )
    lines += [
        "",
        "Compiled Vim-Ti, x_proj padded (as shipped) against unpadded (`x_proj_align = 1`):",
        "",
        "| batch | padded ms | unpadded ms | padded / unpadded | max abs diff of logits |",
        "|---|---|---|---|---|",
    ]
    for r in models:
        lines.append(
            f"| {r['batch']} | {r['padded_ms']:.1f} | {r['plain_ms']:.1f} | {r['ratio']:.3f} | "
            f"{r['max_abs_diff']:.2g} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        payload = {"machine": head, "args": vars(args), "gemm": gemms, "model": models}
        save_results(RESULTS / f"linears-{machine_tag()}", payload, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
