"""The ``vimc`` command.

    vimc demo                         the main job: built-in model -> compile -> eval -> export
    vimc predict IMAGE... [--model M] [--checkpoint P] [--topk K]
    vimc info MODEL [--img-size N]    config, parameters, FLOPs
    vimc bench                        Vim-Ti vs DeiT-Ti across resolutions (table, JSON, PNG)
    vimc list                         registered models
    vimc export / vimc parity         from vimc.export

Exit codes: 0 success, 1 a check failed (accuracy, parity), 2 bad usage or input (unknown
model, missing or unreadable image, a checkpoint that does not fit). Errors are one line on
stderr, ``vimc <command>: error: ...``; ``--traceback`` (before the command) shows the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def _guess_model(checkpoint) -> str:
    """The registered variant that fits a checkpoint's shapes (for --checkpoint without
    --model): the architecture recorded in vimc files, else width and stride from official
    files."""
    from vimc.checkpoint import read_checkpoint

    sd, record = read_checkpoint(checkpoint)
    if record and record.get("architecture"):
        return record["architecture"]
    cls, pe = sd.get("cls_token"), sd.get("pos_embed")
    if cls is None or pe is None:
        raise CLIError(f"{checkpoint}: not a Vim checkpoint (no cls_token/pos_embed); pass --model")
    width = {192: "vim_tiny", 384: "vim_small", 768: "vim_base"}.get(cls.shape[-1])
    if width is None:
        raise CLIError(
            f"{checkpoint}: embedding width {cls.shape[-1]} matches no registered "
            f"model; pass --model"
        )
    return width + ("_s8" if pe.shape[1] == 27 * 27 + 1 and width != "vim_base" else "")


def load_model(name: str | None, checkpoint=None, *, pretrained: bool = True, **overrides):
    """create_model with the CLI's error handling: unknown models, missing/ill-fitting
    checkpoints and missing built-in weights become CLIErrors (exit 2)."""
    import vimc
    from vimc.checkpoint import CheckpointError

    if checkpoint is not None and not Path(checkpoint).exists():
        raise CLIError(f"checkpoint not found: {checkpoint}")
    if name is None:
        name = _guess_model(checkpoint) if checkpoint is not None else "vim_digits"
    if name not in vimc.list_models(include_aliases=True):
        raise CLIError(
            f"unknown model {name!r}; known models: {', '.join(vimc.list_models())} "
            f"(see `vimc list`)"
        )
    try:
        if checkpoint is not None:
            model = vimc.create_model(name, checkpoint_path=checkpoint, **overrides)
        else:
            model = vimc.create_model(name, pretrained=pretrained, **overrides)
    except CheckpointError as exc:
        raise CLIError(f"{exc}") from None
    except ValueError as exc:  # no built-in weights, bad sizes
        raise CLIError(str(exc)) from None
    return model.eval()


# ---------------------------------------------------------------------------------------------
# vimc list
# ---------------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    import vimc
    from vimc.model import get_variant

    for name in vimc.list_models(args.pattern):
        v = get_variant(name)
        c = v.config
        w = "built-in weights" if v.weights else "random init / --checkpoint"
        print(
            f"{name:<14} D={c.embed_dim:<4} depth={c.depth:<3} img={c.img_hw[0]:<4} "
            f"patch={c.patch_size}/stride={c.stride:<3} classes={c.num_classes:<5} {w}"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vimc predict
# ---------------------------------------------------------------------------------------------


def cmd_predict(args) -> int:
    import torch

    from vimc.data import ImageError, load_images
    from vimc.imagenet_classes import class_names

    _set_threads(args.threads)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise CLIError("image not found: " + ", ".join(str(p) for p in missing))
    model = load_model(args.model, args.checkpoint)
    cfg = model.pretrained_cfg
    try:
        x = load_images(args.images, cfg)
    except ImageError as exc:
        raise CLIError(str(exc)) from None
    with torch.inference_mode():
        probs = model(x).float().softmax(-1)
    names = class_names(model.name, probs.shape[-1])
    k = min(args.topk, probs.shape[-1])
    top_p, top_i = probs.topk(k, dim=-1)
    results = []
    for path, ps, idx in zip(args.images, top_p.tolist(), top_i.tolist()):
        results.append(
            {
                "image": str(path),
                "top": [{"class": i, "name": names[i], "prob": p} for p, i in zip(ps, idx)],
            }
        )
    if args.json:
        print(json.dumps({"model": model.name, "results": results}, indent=2))
        return EXIT_OK
    src = args.checkpoint or "built-in weights"
    print(f"model {model.name} ({src}), input {tuple(cfg['input_size'])}")
    for r in results:
        print(r["image"])
        for rank, t in enumerate(r["top"], 1):
            print(f"  {rank}. {t['name']:<28} (class {t['class']:>4})  {100 * t['prob']:6.2f}%")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vimc info
# ---------------------------------------------------------------------------------------------


def scan_flops(model, batch: int, img_hw: tuple[int, int]) -> int:
    """FLOPs of the selective scans, which the FLOP counter cannot see into: per layer and
    direction, per (batch, channel, step): 7 per state element (delta*A, exp, *h, delta*u*B,
    +, *C, +) plus 10 (bias, softplus, delta*u, D skip, z gate)."""
    gh, gw = model.patch_embed.grid_for(img_hw)
    L = gh * gw + 1
    c = model.config
    E, N = c.expand * c.embed_dim, c.d_state
    return 2 * c.depth * batch * E * L * (7 * N + 10)


def count_flops(model, img_hw: tuple[int, int], batch: int = 1) -> dict:
    """Matmul/conv FLOPs from torch.utils.flop_counter (2 per multiply-add) plus the scan's
    analytic FLOPs. A model on the meta device runs on fake tensors: nothing is allocated."""
    import contextlib

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    on_meta = any(p.is_meta for p in model.parameters())
    mode = FakeTensorMode(allow_non_fake_inputs=True) if on_meta else contextlib.nullcontext()
    with mode:
        m = model.to_empty(device="cpu") if on_meta else model
        x = torch.zeros(batch, model.config.in_chans, *img_hw)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x)
    counted = int(counter.get_total_flops())
    scan = scan_flops(model, batch, img_hw)
    return {"counted": counted, "scan": scan, "total": counted + scan}


def cmd_info(args) -> int:
    import dataclasses

    import vimc
    from vimc.model import get_variant

    if args.model not in vimc.list_models(include_aliases=True):
        raise CLIError(
            f"unknown model {args.model!r}; known models: {', '.join(vimc.list_models())}"
        )
    variant = get_variant(args.model)
    overrides = {}
    if args.img_size:
        overrides.update(img_size=args.img_size)
    if args.checkpoint:
        model = load_model(args.model, args.checkpoint, **overrides)
    else:  # the architecture alone: on the meta device, nothing allocated, any size instant
        model = vimc.create_model(args.model, device="meta", **overrides)
    c = model.config
    hw = c.img_hw
    n_params = sum(p.numel() for p in model.parameters())
    gh, gw = model.patch_embed.grid_size
    flops = count_flops(model, hw)
    info = {
        "model": model.name,
        "config": c.to_dict(),
        "pretrained_cfg": {
            k: list(v) if isinstance(v, tuple) else v for k, v in model.pretrained_cfg.items()
        },
        "built_in_weights": str(variant.weights_path) if variant.weights else None,
        "parameters": n_params,
        "resolution": list(hw),
        "tokens": gh * gw + 1,
        "flops": flops,
        "gmacs": flops["total"] / 2e9,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"{model.name}")
    if variant.description:
        print(f"  {variant.description}")
    for f in dataclasses.fields(c):
        print(f"  {f.name:<16} {getattr(c, f.name)}")
    print(f"  {'built-in weights':<16} {variant.weights or 'none'}")
    print(f"parameters         {n_params:,} ({n_params / 1e6:.2f}M)")
    print(f"at {hw[0]}x{hw[1]}: {gh}x{gw} patches + 1 class token = {gh * gw + 1} tokens")
    print(
        f"FLOPs (batch 1)    {flops['total'] / 1e9:.3f} G total = {flops['counted'] / 1e9:.3f} G "
        f"matmul/conv (torch.utils.flop_counter) + {flops['scan'] / 1e9:.3f} G selective scan "
        f"(analytic: the counter cannot see inside the op)"
    )
    print(
        f"                   = {flops['total'] / 2e9:.3f} GMACs (papers' 'FLOPs' usually count "
        f"multiply-adds)"
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vimc bench
# ---------------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    import torch

    from vimc import bench

    _set_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device available")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    resolutions = args.resolutions or (
        bench.CUDA_RESOLUTIONS if device.type == "cuda" else bench.CPU_RESOLUTIONS
    )
    bad = [r for r in resolutions if r < 16 or r % 16]
    if bad:
        raise CLIError(f"resolutions must be multiples of 16 (patch 16), got {bad}")
    env = bench.environment(device)
    settings = {
        "models": args.models,
        "resolutions": list(resolutions),
        "batch": args.batch,
        "max_seconds": args.max_seconds,
        "dtype": args.dtype,
        "compile": args.compile,
        "deit_attention": args.deit_attn,
    }
    print(
        f"vimc bench on {env['device']} ({device.type}, {env['threads']} threads), torch "
        f"{env['torch']}: batch {args.batch}, {args.dtype}, "
        f"{'torch.compile' if args.compile else 'eager'}, DeiT attention {args.deit_attn}, "
        f"<= {args.max_seconds:g} s per point"
    )
    results = bench.run_bench(
        args.models,
        resolutions,
        batch=args.batch,
        max_seconds=args.max_seconds,
        device=device,
        dtype=dtype,
        compile=args.compile,
        attn_impl=args.deit_attn,
    )
    table = bench.format_table(results)
    lines = bench.comparisons(results)
    print()
    print(table)
    for line in lines:
        print(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = bench.write_json(results, out / "bench.json", env, settings)
    (out / "bench.md").write_text(
        f"device: {env['device']} ({device.type}, {env['threads']} threads), torch "
        f"{env['torch']}, {env['date']}\nsettings: {json.dumps(settings)}\n\n{table}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(f"\nwrote {json_path}, {out / 'bench.md'}", end="")
    if not args.no_plot:
        try:
            png = bench.plot(
                results,
                out / "bench.png",
                title=f"{env['device']} ({device.type}), batch {args.batch}, {args.dtype}",
            )
            print(f", {png}", end="")
        except ImportError:
            print(" (no plot: matplotlib is not installed; pip install 'vimc[bench]')", end="")
    print()
    return EXIT_OK if all(r.status in ("ok", "skipped") for r in results) else EXIT_CHECK_FAILED


# ---------------------------------------------------------------------------------------------
# vimc demo
# ---------------------------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from vimc import demo

    _set_threads(args.threads)
    return demo.run(args)


# ---------------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _add_export_commands(sub) -> None:
    """`vimc export`, `vimc parity` and `vimc ort-plugin` come from vimc.export.cli; if that
    cannot be imported (an export dependency missing), the commands still exist and say why
    they cannot run."""
    try:
        from vimc.export.cli import add_export_parser, add_ort_plugin_parser, add_parity_parser
    except ImportError as exc:
        reason = str(exc)
        for name in ("export", "parity", "ort-plugin"):
            p = sub.add_parser(
                name, help=f"(unavailable: {reason})", description=f"unavailable: {reason}"
            )
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(
                func=lambda a, r=reason: (_ for _ in ()).throw(
                    CLIError(f"this command is unavailable: {r}")
                )
            )
        return
    add_export_parser(sub)
    add_parity_parser(sub)
    add_ort_plugin_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    from vimc import __version__

    parser = argparse.ArgumentParser(
        prog="vimc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Vision Mamba (Vim), compiler-first: run, inspect, benchmark and export.",
        epilog="exit codes: 0 ok, 1 a check failed, 2 bad usage or input. "
        "`vimc COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"vimc {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full Python traceback on errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="the main job: built-in model -> compile -> evaluate -> export",
        description="Load the built-in digits model, evaluate it on the held-out "
        "digits eagerly and with torch.compile, export it to ONNX and "
        "AOTInductor, and print the parity and latency tables. Exit 1 "
        "if accuracy or parity checks fail.",
    )
    p.add_argument(
        "--out", default=None, help="folder for the exported files (default: a temporary folder)"
    )
    p.add_argument(
        "--batch", type=_positive_int, default=60, help="batch for evaluation and the latency table"
    )
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=0.97,
        help="held-out accuracy below this fails the demo (exit 1)",
    )
    p.add_argument("--skip-compile", action="store_true", help="no torch.compile step")
    p.add_argument("--skip-export", action="store_true", help="no ONNX / AOTInductor steps")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a vim_digits checkpoint to use instead of the built-in weights",
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "predict",
        formatter_class=_Formatter,
        help="classify image files",
        description="Classify images: Pillow preprocessing per the model's "
        "pretrained_cfg (resize shorter side to size/crop_pct, "
        "center crop, normalize); ImageNet class names for 1000-class "
        "models, digits for vim_digits.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="registered model name (default: vim_digits, or guessed from --checkpoint)",
    )
    p.add_argument(
        "--checkpoint",
        "-c",
        default=None,
        help="an official .pth checkpoint or vimc safetensors (file or folder)",
    )
    p.add_argument("--topk", "-k", type=_positive_int, default=5, help="how many classes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "info",
        formatter_class=_Formatter,
        help="a model's config, parameter count and FLOPs",
        description="Print a model's config, parameter count and FLOPs at a "
        "resolution (matmul/conv counted by torch.utils.flop_counter, "
        "the selective scan added analytically).",
    )
    p.add_argument("model", metavar="MODEL", help="registered model name (see `vimc list`)")
    p.add_argument(
        "--img-size",
        type=_positive_int,
        default=None,
        help="resolution for the FLOPs (default: the model's own)",
    )
    p.add_argument("--checkpoint", default=None, help="load this checkpoint's config")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "bench",
        formatter_class=_Formatter,
        help="Vim-Ti vs DeiT-Ti speed and memory across resolutions",
        description="Vim-Ti vs DeiT-Ti across resolutions on this device (the "
        "paper's Figure 1): images/s, latency, peak memory, as a "
        "table, JSON and a PNG plot. Models are randomly initialized "
        "(speed does not depend on weights). CPU default resolutions "
        "are 224 512 768 1248; CUDA: 224 512 640 738 1024 1248.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(("vim_tiny", "deit_tiny")),
        help="models to compare (deit_tiny or any registered Vim)",
    )
    p.add_argument(
        "--resolutions",
        nargs="+",
        type=_positive_int,
        default=None,
        help="square input sizes, multiples of 16 (default: per device)",
    )
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size")
    p.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=10.0,
        help="time budget per (model, resolution); points predicted to need more than "
        "3x this per forward are skipped",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="autocast dtype",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile both models first")
    p.add_argument(
        "--deit-attn",
        choices=("explicit", "sdpa"),
        default="explicit",
        help="DeiT attention: materialized softmax(QK^T)V as in the paper's baseline, "
        "or torch's fused SDPA",
    )
    p.add_argument(
        "--out", default="bench_results", help="folder for bench.json, bench.md, bench.png"
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "list",
        formatter_class=_Formatter,
        help="registered models",
        description="List registered model names (glob pattern).",
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'vim_t*'")
    p.set_defaults(func=cmd_list)

    _add_export_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        if args.traceback:
            raise
        print(f"vimc {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"vimc {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, or an error the command did not anticipate
        from vimc.data import ImageError, MissingDependencyError

        if args.traceback:
            raise
        if isinstance(exc, (ImageError, MissingDependencyError, FileNotFoundError)):
            print(f"vimc {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(
            f"vimc {args.command}: error: {type(exc).__name__}: {exc} "
            f"(rerun with `vimc --traceback {args.command} ...` for details)",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
