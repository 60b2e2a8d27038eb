"""``vimc export``, ``vimc parity`` and ``vimc ort-plugin``: argparse parsers and handlers
for vimc/cli.py.

Wiring (in vimc/cli.py, after ``subparsers = parser.add_subparsers(...)``)::

    from vimc.export.cli import add_export_parser, add_ort_plugin_parser, add_parity_parser
    add_export_parser(subparsers); add_parity_parser(subparsers)
    add_ort_plugin_parser(subparsers)

Each parser sets ``func``: call ``args.func(args)`` and exit with what it returns: 0 success,
1 a failed validation / parity row / export, 2 bad arguments (argparse's own usage errors
exit 2 as well).
"""

from __future__ import annotations

import argparse
import sys
import warnings

from vimc.cliargs import nonneg_float, positive_int

from ._atomic import atomic_path
from ._common import DTYPE_NAMES
from .onnx.names import DEFAULT_SCAN, SCAN_LOWERINGS, resolve_lowering

FORMATS = ("onnx", "aoti", "tensorrt")
_SUFFIX = {"onnx": ".onnx", "aoti": ".pt2", "tensorrt": ".ep"}


def _scan_lowering(text: str) -> str:
    """``--scan``'s value: an old spelling is taken with a warning on stderr; a removed
    lowering is a usage error naming the choices."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FutureWarning)
            name = resolve_lowering(text, arg="--scan")
    except ValueError as exc:
        msg = str(exc).removeprefix("--scan: ").removeprefix("--scan=")
        raise argparse.ArgumentTypeError(msg) from None
    if caught:
        print(
            f"vimc export: warning: --scan {text} is deprecated and will be removed in the "
            f"next release; use --scan {name}",
            file=sys.stderr,
        )
    return name


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a registered model name (vimc.list_models())")
    p.add_argument(
        "--checkpoint",
        metavar="P",
        default=None,
        help="weights: an official .pth checkpoint or vimc safetensors",
    )
    p.add_argument(
        "--img-size",
        metavar="S",
        type=positive_int,
        default=None,
        help="input resolution (default: the model's, 224); the pos_embed of a "
        "checkpoint is resized",
    )
    p.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="float32", help="compute dtype (default float32)"
    )


class _Steps:
    """A tqdm bar over named steps, on stderr."""

    def __init__(self, total: int, desc: str, disable: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="step",
            file=sys.stderr,
            disable=disable,
            bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}] {postfix}",
        )
        self.started = False

    def __call__(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


def _error(cmd: str, msg, code: int) -> int:
    print(f"vimc {cmd}: error: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
# vimc export
# ---------------------------------------------------------------------------------------------


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX, AOTInductor or TensorRT",
        description="Export MODEL to OUT and, unless --no-validate, run the exported file and "
        "compare its logits to float32 eager (max_abs, rel_rms, cos_sim, top1).",
    )
    p.add_argument(
        "format",
        choices=FORMATS,
        help="onnx (.onnx, standard operators only unless --scan plugin), "
        "aoti (.pt2 AOTInductor package), tensorrt (.ep, torch-tensorrt)",
    )
    _add_model_args(p)
    p.add_argument("out", metavar="OUT", help="output file (written atomically)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument(
        "--batch", metavar="N", type=positive_int, default=None, help="a fixed batch size N"
    )
    batch.add_argument(
        "--dynamic-batch", action="store_true", help="a dynamic batch axis (the default)"
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: exporter's)")
    p.add_argument(
        "--scan",
        type=_scan_lowering,
        choices=SCAN_LOWERINGS,
        default=DEFAULT_SCAN,
        help=f"how the ONNX file writes the selective scan (default {DEFAULT_SCAN!r}): "
        "'paired' and 'step' run each step inside a standard Scan loop ('paired' puts a "
        "layer's two directions in one loop, 'step' gives each its own), 'plugin' writes one "
        "vimc.SelectiveScanBidirectional node per layer, which needs vimc's ONNX Runtime "
        "plugin (the validation runs it; its path is printed). The old names 'bidir' and "
        "'custom' still work, with a warning",
    )
    p.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="skip running the exported file against eager",
    )
    p.add_argument(
        "--atol",
        type=nonneg_float,
        default=None,
        help="validation absolute tolerance (default per dtype; 1e-4 for float32)",
    )
    p.add_argument(
        "--rtol",
        type=nonneg_float,
        default=None,
        help="validation relative tolerance (default per dtype; 1e-4 for float32)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``vimc export``; returns the exit status."""
    from ._atomic import check_writable
    from ._common import parse_dtype, resolve_model

    fmt = args.format
    try:
        dtype = parse_dtype(args.dtype, arg="--dtype")
        check_writable(args.out, arg="OUT")
        if fmt == "onnx" and args.opset is not None and args.opset < 18:
            raise ValueError(f"--opset must be >= 18, got {args.opset}")
        if fmt == "onnx" and args.scan == "plugin" and args.dtype != "float32":
            raise ValueError(
                f"--scan plugin: vimc's ONNX Runtime plugin computes in float32, got --dtype "
                f"{args.dtype}; export float32 (or a standard-op --scan)"
            )
        if fmt == "aoti" and not str(args.out).endswith(".pt2"):
            raise ValueError(f"OUT must end with .pt2 for aoti, got {args.out!r}")
        if fmt == "tensorrt":
            from .tensorrt import tensorrt_unavailable_reason

            reason = tensorrt_unavailable_reason()
            if reason:
                return _error("export", f"tensorrt: {reason}", 1)
        model = resolve_model(args.model, checkpoint=args.checkpoint, img_size=args.img_size).to(
            dtype
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _error("export", exc, 2)

    from ._common import example_input

    dynamic = args.batch is None
    steps = _Steps(2 + bool(args.validate), f"vimc export {fmt}", disable=args.quiet)
    report = None
    try:
        example = example_input(model, batch=args.batch or 2)
        # export and validation work on a temporary file beside OUT, moved into place only
        # when both are done: an interrupt leaves OUT as it was, and each of several exports
        # to one OUT validates the bytes it wrote, never another's
        with atomic_path(args.out, arg="OUT") as tmp:
            steps(f"export to {fmt} (torch.export, {'ONNX' if fmt == 'onnx' else fmt})")
            _export(fmt, model, tmp, example, args, dtype, dynamic)
            size = tmp.stat().st_size
            if args.validate:
                steps("validate")
                report = _validate(model, fmt, args, dtype, tmp)
                if not report.passed:
                    raise _ValidationFailed
        steps("done")
        steps.close()
    except KeyboardInterrupt:
        steps.close()
        return _error("export", "interrupted; nothing was written to OUT", 130)
    except _ValidationFailed:
        steps.close()
        print(report.to_text())
        return _error(
            "export",
            "validation failed: the exported model's logits are outside the tolerance (see "
            "the table); nothing was written to OUT (--no-validate writes it unchecked)",
            1,
        )
    except Exception as exc:  # noqa: BLE001  (report, exit 1; the atomic write left no file)
        steps.close()
        return _error("export", f"{type(exc).__name__}: {exc}", 1)
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    if fmt == "onnx" and args.scan == "plugin":
        from .onnx import ort_plugin_path

        try:
            print(f"runs with vimc's ONNX Runtime plugin: {ort_plugin_path()}")
        except RuntimeError as exc:
            print(f"needs vimc's ONNX Runtime plugin, which cannot be built here: {exc}")
    if report is not None:
        print(report.to_text())
    return 0


class _ValidationFailed(Exception):
    """The exported file ran but its logits are outside the tolerance."""


def _export(fmt: str, model, path, example, args, dtype, dynamic: bool) -> None:
    if fmt == "onnx":
        from .onnx import to_onnx

        to_onnx(
            model, path, example=example, opset=args.opset, dynamic_batch=dynamic, scan=args.scan
        )
    elif fmt == "aoti":
        from .aoti import to_aoti

        to_aoti(model, path, example=example, dynamic_batch=dynamic)
    else:
        from .tensorrt import to_tensorrt

        to_tensorrt(model, path, example=example, dtype=dtype, dynamic_batch=dynamic)


def _validate(model, fmt: str, args, dtype, path):
    """Run the written file ``path`` at the export's batch (or at batch 1 and 3 for a dynamic
    batch: the first row and a batch other than the traced one) against float32 eager."""
    from .parity import compare

    backend = {"onnx": "onnxruntime", "aoti": "aoti", "tensorrt": "tensorrt"}[fmt]
    if fmt == "onnx" and args.scan == "plugin":
        backend = "onnxruntime-plugin"
    batch = args.batch or 3
    return compare(
        model,
        [backend],
        dtype=dtype,
        batch=batch,
        atol=args.atol,
        rtol=args.rtol,
        artifacts={backend: str(path)},
    )


# ---------------------------------------------------------------------------------------------
# vimc parity
# ---------------------------------------------------------------------------------------------


def add_parity_parser(subparsers) -> argparse.ArgumentParser:
    from .parity import BACKENDS

    p = subparsers.add_parser(
        "parity",
        help="compare backends against float32 eager",
        description="One row per backend: max_abs, mean_abs, rel_rms, cos_sim, top1_agree "
        "against float32 eager logits; exit status 1 when a row fails "
        "|out - ref| <= atol + rtol * |ref|.",
    )
    _add_model_args(p)
    p.add_argument(
        "--backends",
        default="eager,compiled,aoti,onnxruntime",
        help=f"comma-separated, from {','.join(BACKENDS)} "
        "(default eager,compiled,aoti,onnxruntime)",
    )
    p.add_argument(
        "--batch",
        metavar="N",
        type=positive_int,
        default=2,
        help="batch of random inputs (default 2)",
    )
    p.add_argument(
        "--atol",
        type=nonneg_float,
        default=None,
        help="absolute tolerance (default per dtype; 1e-4 for float32)",
    )
    p.add_argument(
        "--rtol",
        type=nonneg_float,
        default=None,
        help="relative tolerance (default per dtype; 1e-4 for float32)",
    )
    p.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run_parity)
    return p


def run_parity(args: argparse.Namespace) -> int:
    """Handler of ``vimc parity``; returns the exit status."""
    import json

    from ._atomic import atomic_path, check_writable
    from ._common import check_names, parse_dtype, resolve_model
    from .parity import BACKENDS, compare

    try:
        backends = check_names(args.backends, BACKENDS, arg="--backends")
        dtype = parse_dtype(args.dtype, arg="--dtype")
        if args.json:
            check_writable(args.json, arg="--json")
        model = resolve_model(args.model, checkpoint=args.checkpoint, img_size=args.img_size)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        return _error("parity", exc, 2)
    steps = _Steps(len(backends), "vimc parity", disable=args.quiet)
    try:
        report = compare(
            model,
            backends,
            dtype=dtype,
            batch=args.batch,
            atol=args.atol,
            rtol=args.rtol,
            progress=steps,
        )
    finally:
        steps.close()
    report.model = args.model
    print(report.to_text())
    if args.json:
        with atomic_path(args.json, arg="--json") as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2))
    if not report.passed:
        failed = ", ".join(r.backend for r in report.rows if not r.passed)
        return _error("parity", f"outside tolerance or failed: {failed}", 1)
    return 0


# ---------------------------------------------------------------------------------------------
# vimc ort-plugin
# ---------------------------------------------------------------------------------------------


def add_ort_plugin_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ort-plugin",
        help="build vimc's ONNX Runtime plugin (runs `vimc export onnx --scan plugin` files)",
        description="Build the custom-op library that runs the plugin route's vimc nodes in "
        "ONNX Runtime (>= 1.17) and print its path; with OUT, copy it there (atomically), "
        "for SessionOptions.register_custom_ops_library or RegisterCustomOpsLibrary (C/C++).",
    )
    p.add_argument("out", metavar="OUT", nargs="?", default=None, help="copy the library here")
    p.add_argument(
        "--march",
        default="native",
        help="the CPU it is built for: 'native' (this machine; the default), a target the C "
        "compiler knows ('x86-64-v3': any AVX2 x86 machine; 'x86-64'; 'armv8-a'), or "
        "'generic' (the compiler's default target)",
    )
    p.set_defaults(func=run_ort_plugin)
    return p


def run_ort_plugin(args: argparse.Namespace) -> int:
    """Handler of ``vimc ort-plugin``; returns the exit status."""
    import shutil

    from ._atomic import atomic_path, check_writable
    from .onnx import ort_plugin_path

    march = None if args.march == "generic" else args.march
    try:
        if args.out is not None:
            check_writable(args.out, arg="OUT")
        path = ort_plugin_path(march)
    except ValueError as exc:
        return _error("ort-plugin", f"--{exc}" if str(exc).startswith("march") else exc, 2)
    except RuntimeError as exc:
        return _error("ort-plugin", f"cannot build it here: {exc}", 1)
    if args.out is None:
        print(path)
        return 0
    with atomic_path(args.out, arg="OUT") as tmp:
        shutil.copyfile(path, tmp)
    print(f"wrote {args.out} (vimc's ONNX Runtime plugin, -march={args.march}; from {path})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone ``vimc`` parser with just these commands (tests, ``python -m``)."""
    parser = argparse.ArgumentParser(prog="vimc")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_parity_parser(sub)
    add_ort_plugin_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
