"""The ``vimc`` command.

    vimc demo                         the main job: built-in model -> compile -> eval -> export
    vimc predict IMAGE... [--model M] [--checkpoint P] [--topk K]
    vimc info MODEL [--img-size N]    config, parameters, FLOPs
    vimc info --kernels               which CPU kernels run, and where they came from
    vimc bench                        Vim-Ti vs DeiT-Ti across resolutions (table, JSON, PNG)
    vimc list                         registered models
    vimc export / parity / ort-plugin from vimc.export

Each command is an ``add_<cmd>_parser(sub)`` beside its ``cmd_<cmd>`` handler, as in
vimc/export/cli.py; :func:`build_parser` adds them all. The handlers parse and report; the
work happens below them: models come from ``vimc.resolve``, ``vimc info``'s facts from
``vimc.info`` (FLOPs: ``vimc.flops``), ``vimc bench``'s measurements and files from
``vimc.bench`` and ``vimc.bench_report``, the demo from ``vimc.demo``.

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

from vimc.bench import add_bench_parser
from vimc.cliargs import Formatter as _Formatter
from vimc.cliargs import add_threads_arg as _add_threads_arg
from vimc.cliargs import positive_int
from vimc.cliargs import set_threads as _set_threads

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _load_model(name: str | None, checkpoint=None, **kwargs):
    """vimc.resolve.load_model, its errors (unknown model, missing or ill-fitting checkpoint,
    no built-in weights, sizes that do not fit) as CLIErrors: exit 2."""
    from vimc.resolve import load_model

    try:
        return load_model(name, checkpoint, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# vimc demo
# ---------------------------------------------------------------------------------------------


def add_demo_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="the main job: built-in model -> compile -> evaluate -> export",
        description="Load the built-in digits model, evaluate it on the held-out digits eagerly "
        "and with torch.compile, export it to ONNX and AOTInductor, and print the parity and "
        "latency tables. Exit 1 if accuracy or parity checks fail.",
    )
    p.add_argument(
        "--out", default=None, help="folder for the exported files (default: a temporary folder)"
    )
    p.add_argument(
        "--batch", type=positive_int, default=60, help="batch for evaluation and the latency table"
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
    _add_threads_arg(p)
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args) -> int:
    from vimc import demo
    from vimc.checkpoint import CheckpointError
    from vimc.resolve import ModelNotFound

    _set_threads(args.threads)
    try:
        failed = demo.run(
            checkpoint=args.checkpoint,
            batch=args.batch,
            min_accuracy=args.min_accuracy,
            out=args.out,
            skip_compile=args.skip_compile,
            skip_export=args.skip_export,
            tracebacks=args.traceback,
        )
    except (ModelNotFound, CheckpointError, FileNotFoundError) as exc:  # the model's input
        raise CLIError(str(exc)) from None
    return EXIT_CHECK_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------------------------
# vimc predict
# ---------------------------------------------------------------------------------------------


def add_predict_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        formatter_class=_Formatter,
        help="classify image files",
        description="Classify images: Pillow preprocessing per the model's pretrained_cfg "
        "(resize shorter side to size/crop_pct, center crop, normalize); ImageNet class names "
        "for 1000-class models, digits for vim_digits.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="registered model name (default: vim_digits, or guessed from --checkpoint)",
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        "-c",
        default=None,
        help="an official .pth checkpoint, vimc safetensors (file or folder), or "
        "hf-hub:OWNER/REPO/FILE",
    )
    weights.add_argument(
        "--pretrained",
        action="store_true",
        help="the model's official weights from the Hugging Face Hub (through the Hub cache; "
        "HF_HUB_OFFLINE=1 uses the cached copy only)",
    )
    p.add_argument("--topk", "-k", type=positive_int, default=5, help="how many classes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_threads_arg(p)
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args) -> int:
    import torch

    from vimc.data import ImageError, load_images
    from vimc.imagenet_classes import class_names

    _set_threads(args.threads)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise CLIError("image not found: " + ", ".join(str(p) for p in missing))
    model = _load_model(args.model, args.checkpoint, pretrained=True if args.pretrained else "ask")
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
    src = args.checkpoint or ("official weights" if args.pretrained else "built-in weights")
    print(f"model {model.name} ({src}), input {tuple(cfg['input_size'])}")
    for r in results:
        print(r["image"])
        for rank, t in enumerate(r["top"], 1):
            print(f"  {rank}. {t['name']:<28} (class {t['class']:>4})  {100 * t['prob']:6.2f}%")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vimc info
# ---------------------------------------------------------------------------------------------


def add_info_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        formatter_class=_Formatter,
        help="a model's config, parameter count and FLOPs",
        description="Print a model's config, parameter count and FLOPs at a resolution "
        "(matmul/conv counted by torch.utils.flop_counter, the selective scan added "
        "analytically).",
    )
    p.add_argument(
        "model", metavar="MODEL", nargs="?", help="registered model name (see `vimc list`)"
    )
    p.add_argument(
        "--kernels",
        action="store_true",
        help="print which CPU scan kernel and ONNX Runtime plugin run, and where they come "
        "from (prebuilt in the package, built at first use, or the torch fallback and why), "
        "and whether a mixer's core runs as one C call",
    )
    p.add_argument(
        "--img-size",
        type=positive_int,
        default=None,
        help="resolution for the FLOPs (default: the model's own)",
    )
    p.add_argument("--checkpoint", default=None, help="load this checkpoint's config")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info, info_parser=p)  # a MODEL is required unless --kernels
    return p


def cmd_info(args) -> int:
    from vimc.info import info_text, model_info
    from vimc.model import create_model, list_models

    if args.kernels:
        from vimc.ops.selective_scan.cpu import kernel_info

        info = kernel_info()
        print(json.dumps(info, indent=2) if args.json else "\n".join(
            f"{k}: {v}" for k, v in info.items()))  # fmt: skip
        if args.model is None:
            return EXIT_OK
    if args.model is None:
        args.info_parser.error("the following arguments are required: MODEL (or --kernels)")
    if args.model not in list_models(include_aliases=True):
        raise CLIError(f"unknown model {args.model!r}; known models: {', '.join(list_models())}")
    overrides = {"img_size": args.img_size} if args.img_size else {}
    if args.checkpoint:
        model = _load_model(args.model, args.checkpoint, **overrides)
    else:  # the architecture alone: on the meta device, nothing allocated, any size instant
        model = create_model(args.model, device="meta", **overrides)
    info = model_info(model)
    print(json.dumps(info, indent=2) if args.json else info_text(model, info))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vimc list
# ---------------------------------------------------------------------------------------------


def add_list_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "list",
        formatter_class=_Formatter,
        help="registered models",
        description="List registered model names (glob pattern).",
    )
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'vim_t*'")
    p.set_defaults(func=cmd_list)
    return p


def cmd_list(args) -> int:
    from vimc.model import get_variant, list_models

    for name in list_models(args.pattern):
        v = get_variant(name)
        c = v.config
        w = (
            "built-in weights"
            if v.weights
            else "--pretrained (Hugging Face Hub)"
            if v.hf_hub_id
            else "random init / --checkpoint"
        )
        print(
            f"{name:<14} D={c.embed_dim:<4} depth={c.depth:<3} img={c.img_hw[0]:<4} "
            f"patch={c.patch_size}/stride={c.stride:<3} classes={c.num_classes:<5} {w}"
        )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vimc export / parity / ort-plugin, and the parser
# ---------------------------------------------------------------------------------------------


def _add_export_parsers(sub) -> None:
    """`vimc export`, `vimc parity` and `vimc ort-plugin` come from vimc.export.cli; if that
    cannot be imported (an export dependency missing), the commands still exist and say why
    they cannot run."""
    try:
        from vimc.export.cli import add_export_parser, add_ort_plugin_parser, add_parity_parser
    except ImportError as exc:
        reason = str(exc)

        def unavailable(args):
            raise CLIError(f"this command is unavailable: {reason}")

        for name in ("export", "parity", "ort-plugin"):
            p = sub.add_parser(
                name, help=f"(unavailable: {reason})", description=f"unavailable: {reason}"
            )
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=unavailable)
        return
    add_export_parser(sub)
    add_parity_parser(sub)
    add_ort_plugin_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    from vimc.version import __version__

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
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show more: vimc's progress log and the library messages vimc otherwise silences "
        "(torch's export warnings and log lines); errors show either way",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_parser(sub)
    add_predict_parser(sub)
    add_info_parser(sub)
    bench_parser = add_bench_parser(sub)
    bench_parser.set_defaults(func=_usage_errors_exit_2(bench_parser.get_default("func")))
    add_list_parser(sub)
    _add_export_parsers(sub)
    _add_serve_parsers(sub)
    return parser


def _add_serve_parsers(sub) -> None:
    """`vimc serve` and `vimc predict-folder` (vimc.serve; Ray is imported when they run). Their
    handlers raise ValueError for bad usage or input: exit 2 here, like every command's."""
    from vimc.serve import add_predict_folder_parser, add_serve_parser

    for p in (add_serve_parser(sub), add_predict_folder_parser(sub)):
        p.set_defaults(func=_usage_errors_exit_2(p.get_default("func")))


def _usage_errors_exit_2(func):
    def run(args):
        try:
            return func(args)
        except (ValueError, FileNotFoundError) as exc:
            raise CLIError(str(exc)) from exc

    return run


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(format="%(name)s: %(message)s")
        logging.getLogger("vimc").setLevel(logging.INFO)
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
