"""``vimc demo``: the main job, end to end on the built-in model.

1. load ``vim_digits`` (built-in weights) and the 360 held-out digits shipped with vimc;
2. compile it with ``torch.compile`` (one graph for every batch size);
3. export it to ONNX twice, run in ONNX Runtime (the scan lowered to standard operators, and
   the plugin route, whose nodes vimc's ONNX Runtime plugin runs) and to AOTInductor (a
   ``.pt2`` package) with ``vimc.export``;
4. held-out accuracy of every backend; the parity table of ``vimc.export.compare`` (every
   backend against float32 eager on all 360 images, atol/rtol 1e-4); a latency table (batch
   1 and ``batch``).

:func:`run` returns the checks that failed: eager accuracy below ``min_accuracy``, a parity
row that fails (a backend that cannot run, e.g. onnxruntime missing, is a failed row with its
reason), a backend that fails while timed. The CLI turns a non-empty list into exit 1.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import vimc
from vimc.data import digits_to_tensor, load_digits_test
from vimc.resolve import load_model
from vimc.timing import time_fn

LATENCY_SECONDS = 1.5  # time budget per (backend, batch) latency measurement
EXPORTED = ("onnxruntime", "onnxruntime-plugin", "aoti")  # backends run from exported files


@dataclass
class Backend:
    name: str
    run: object = None  # callable (B, C, H, W) -> logits
    setup_s: float | None = None  # compile / export + load time
    logits: torch.Tensor | None = None
    error: str | None = None
    note: str = ""  # the exported file


def run(
    *,
    checkpoint=None,
    batch: int = 60,
    min_accuracy: float = 0.97,
    out=None,
    skip_compile: bool = False,
    skip_export: bool = False,
    tracebacks: bool = False,
) -> list[str]:
    """Run the demo, printing its steps and tables; returns the failed checks (empty: passed).

    ``checkpoint``: vim_digits weights to use instead of the built-in ones. ``out``: folder
    for the exported files (default: a temporary one, removed at the end). ``tracebacks``:
    print the stack of a failed export. A model that cannot be loaded raises
    (``vimc.resolve``'s errors) before anything is measured.
    """
    # the ONNX exporter logs one warning per torchvision op it cannot find; noise here
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    _say(f"vimc {vimc.__version__} demo | torch {torch.__version__} | CPU, {threads} threads")

    # 1. model and data ---------------------------------------------------------------------
    model = load_model("vim_digits", checkpoint)
    images, labels = load_digits_test()
    x = digits_to_tensor(images, model.pretrained_cfg)
    y = torch.from_numpy(labels)
    n_params = sum(p.numel() for p in model.parameters())
    src = f"checkpoint {checkpoint}" if checkpoint else "built-in weights"
    _say(
        f"[1/5] vim_digits: {n_params:,} parameters ({src}), input {tuple(x.shape[1:])}; "
        f"held-out digits: {len(x)} images"
    )
    backends = [Backend("eager", run=model, setup_s=0.0)]

    # 2. torch.compile -----------------------------------------------------------------------
    if not skip_compile:
        b = _backend("compiled", lambda: _compile(model, x[:batch]), tracebacks)
        backends.append(b)
        _say(
            "[2/5] torch.compile: "
            + (f"FAILED {b.error}" if b.error else f"compiled in {b.setup_s:.1f}s")
        )

    # 3. exports -------------------------------------------------------------------------------
    tmp, artifacts = None, {}
    if not skip_export:
        if out:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="vimc-demo-")
            folder = Path(tmp.name)
        exports = (
            _backend(
                "onnxruntime",
                lambda: _onnx(model, folder / "vim_digits.onnx", "paired", threads),
                tracebacks,
            ),
            _backend(
                "onnxruntime-plugin",
                lambda: _onnx(model, folder / "vim_digits_plugin.onnx", "plugin", threads),
                tracebacks,
            ),
            _backend("aoti", lambda: _aoti(model, folder / "vim_digits.pt2"), tracebacks),
        )
        for b in exports:
            backends.append(b)
            if not b.error:
                artifacts[b.name] = b.note
            _say(
                f"[3/5] export {b.name}: "
                + (f"FAILED {b.error}" if b.error else f"{b.note} in {b.setup_s:.1f}s")
            )

    # 4. accuracy and parity on every held-out image --------------------------------------------
    failed = _accuracy_step(backends, x, y, batch, min_accuracy)
    report = _parity_report(model, x, backends, artifacts)
    print(report.to_text(), flush=True)
    failed += [
        f"parity {r.backend}: " + (r.error or "outside tolerance")
        for r in report.rows
        if not r.passed
    ]

    # 5. latency -----------------------------------------------------------------------------
    failed += _latency_step(backends, x, batch)
    if out and not skip_export:
        _say(f"exported files: {', '.join(artifacts.values())}")
    if tmp is not None:
        tmp.cleanup()

    total = time.perf_counter() - t_start
    if failed:
        print(f"demo FAILED after {total:.0f}s:", file=sys.stderr)
        for f in failed:
            print(f"  - {f}", file=sys.stderr)
        return failed
    _say(
        f"demo passed in {total:.0f}s: held-out accuracy >= {min_accuracy:.0%}, every "
        f"backend within tolerance of eager"
    )
    return []


# ---------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------


def _accuracy_step(backends, x, y, batch: int, min_accuracy: float) -> list[str]:
    """Runs every backend on all images (keeping the logits for parity) and prints the
    accuracy table; a backend that fails here is marked failed for the later steps."""
    failed = []
    for b in backends:
        if b.error:
            continue
        try:
            b.logits = _run_batched(b.run, x, batch)
        except Exception as exc:  # noqa: BLE001 (reported as a failed backend)
            b.error = _one_line(exc)
    rows = []
    for b in backends:
        if b.error:
            rows.append((b.name, "FAILED", b.error[:70]))
            continue
        correct = int((b.logits.argmax(-1) == y).sum())
        rows.append((b.name, f"{100 * correct / len(y):.2f}%", f"{correct}/{len(y)}"))
        if b.name == "eager" and correct / len(y) < min_accuracy:
            failed.append(
                f"held-out accuracy {correct / len(y):.2%} < --min-accuracy {min_accuracy:.2%}"
            )
    _say("[4/5] held-out accuracy:")
    print(_table(("backend", "accuracy", "correct"), rows))
    return failed


def _latency_step(backends, x, batch: int) -> list[str]:
    """Prints the latency table (batch 1 and ``batch``); returns the backends that failed."""
    _say(f"[5/5] latency (median of repeated runs, ~{LATENCY_SECONDS:g}s each):")
    failed, rows = [], []
    for b in backends:
        if b.error:
            continue
        cells = [b.name]
        for n in (1, batch):
            xb = x[:n] if n <= len(x) else x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]
            try:
                ms, ips = latency(b.run, xb)
                cells += [f"{ms:.2f}", f"{ips:.0f}"]
            except Exception as exc:  # noqa: BLE001
                cells += ["FAILED", type(exc).__name__]
                failed.append(f"{b.name} at batch {n}: {_one_line(exc)}")
        rows.append(tuple(cells))
    head = ("backend", "batch 1 ms", "batch 1 img/s", f"batch {batch} ms", f"batch {batch} img/s")
    print(_table(head, rows))
    return failed


def latency(fn, x: torch.Tensor, budget_s: float = LATENCY_SECONDS, max_iters: int = 200):
    """(median ms, images/s) of ``fn(x)`` after one warm-up call, timed for ``budget_s``."""
    with torch.inference_mode():
        # warm up apart: a compiled backend may compile for this batch size first, which must
        # not eat the time budget of the measurement
        fn(x)
        timing = time_fn(lambda: fn(x), warmup=0, repeats=max_iters, budget_s=budget_s)
    return timing.median_ms, timing.per_second(len(x))


def _parity_report(model, x, backends, artifacts):
    """vimc.export.compare on all held-out images, for eager and the exported files; the
    compiled module (already compiled here, dynamic batch) joins as a row computed with the
    same metrics and tolerance rule."""
    from vimc.export import ParityRow, compare
    from vimc.export.parity import metrics, within_tolerance

    names = ["eager"] + [b.name for b in backends if b.name in EXPORTED]
    report = compare(
        model, names, inputs=x, artifacts={k: v for k, v in artifacts.items() if k in names}
    )
    ref = next(b for b in backends if b.name == "eager").logits
    for b in backends:
        if b.name != "compiled":
            continue
        row = ParityRow("compiled", report.dtype, seconds=b.setup_s or 0.0, error=b.error)
        if b.logits is not None:
            row = ParityRow(
                "compiled", report.dtype, **metrics(ref, b.logits), seconds=b.setup_s or 0.0
            )
            row.passed = within_tolerance(ref, b.logits, report.atol, report.rtol)
        report.rows.insert(1, row)
    # a failed export never reached compare: show it as a failed row with its reason
    for b in backends:
        if b.error and b.name in EXPORTED and b.name not in artifacts:
            report.rows.append(ParityRow(b.name, report.dtype, error=b.error))
    return report


# ---------------------------------------------------------------------------------------------
# the backends
# ---------------------------------------------------------------------------------------------


def _backend(name: str, setup, tracebacks: bool = False) -> Backend:
    """Backend ``name`` from ``setup() -> (run, exported file or "")``, its setup timed; a
    failure becomes the backend's error (a failed row later), with its stack if
    ``tracebacks``."""
    b = Backend(name)
    try:
        t0 = time.perf_counter()
        b.run, b.note = setup()
        b.setup_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 (reported as a failed backend)
        b.error = _one_line(exc)
        if tracebacks:
            traceback.print_exc()
    return b


def _compile(model, x: torch.Tensor):
    compiled = torch.compile(model, dynamic=True)  # batch axis symbolic: one graph
    with torch.inference_mode():
        compiled(x)
    return compiled, ""


def _onnx(model, path: Path, scan: str, threads: int):
    """``scan="paired"``: standard operators; ``"plugin"``: the plugin route, whose session
    registers vimc's ONNX Runtime plugin."""
    from vimc.export import onnxruntime_session, to_onnx
    from vimc.export.onnx import run_onnxruntime

    path = to_onnx(model, path, scan=scan)
    sess = onnxruntime_session(path, threads=threads)
    return (lambda x: run_onnxruntime(sess, x)), str(path)


def _aoti(model, path: Path):
    from vimc.export import load_aoti, to_aoti

    path = to_aoti(model, path)
    return load_aoti(path), str(path)


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, flush=True)


def _run_batched(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(x[i : i + batch]).float() for i in range(0, len(x), batch)])


def _table(head: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join(
        [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__
