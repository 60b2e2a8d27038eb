"""What ``vimc bench`` measured and the files it writes: one :class:`BenchResult` per (model,
resolution), the machine record, the table, the "Vim is N x the speed of DeiT" lines, and
bench.json, bench.md and bench.png (the paper's Figure 1: speed and memory vs resolution)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vimc.machine import device_name, header, versions


@dataclass
class BenchResult:
    model: str
    resolution: int
    tokens: int
    batch: int
    status: str = "ok"  # ok | skipped | oom | error
    note: str = ""
    iters: int = 0
    latency_ms: float | None = None  # median of timed forwards (whole batch)
    latency_p20_ms: float | None = None
    latency_p80_ms: float | None = None
    images_per_s: float | None = None
    peak_mem_mb: float | None = None
    first_run_s: float | None = None  # warm-up forward (includes compilation with --compile)
    extra: dict = field(default_factory=dict)


def environment(device: torch.device) -> dict:
    """The machine and versions a run was measured on, as bench.json records them."""
    v = versions()
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": v["torch"],
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": v["python"],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": v,
        "header": header(device),
    }


def format_table(results: list[BenchResult]) -> str:
    head = ("model", "res", "tokens", "batch", "img/s", "latency ms (p20-p80)", "peak MB", "runs")
    rows = []
    for r in results:
        if r.status != "ok":
            rows.append(
                (r.model, str(r.resolution), str(r.tokens), str(r.batch), r.status, r.note, "", "")
            )
            continue
        rows.append(
            (
                r.model,
                str(r.resolution),
                str(r.tokens),
                str(r.batch),
                f"{r.images_per_s:.2f}",
                f"{r.latency_ms:.1f} ({r.latency_p20_ms:.1f}-{r.latency_p80_ms:.1f})",
                "n/a" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}",
                str(r.iters),
            )
        )
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


def comparisons(results: list[BenchResult], a: str = "vim_tiny", b: str = "deit_tiny") -> list[str]:
    """'At R: Vim-Ti is 2.8x faster and uses 86.8% less memory than DeiT-Ti' lines."""
    by = {(r.model, r.resolution): r for r in results if r.status == "ok"}
    lines = []
    for res in sorted({r.resolution for r in results}):
        ra, rb = by.get((a, res)), by.get((b, res))
        if not (ra and rb):
            continue
        speed = ra.images_per_s / rb.images_per_s
        s = f"{res}px: {a} {speed:.2f}x the speed of {b}"
        if ra.peak_mem_mb and rb.peak_mem_mb:
            pct = 100 * (1 - ra.peak_mem_mb / rb.peak_mem_mb)
            s += f", {pct:.1f}% less memory" if pct >= 0 else f", {-pct:.1f}% more memory"
        lines.append(s)
    return lines


def write_json(results: list[BenchResult], path, env: dict, settings: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"environment": env, "settings": settings, "results": [asdict(r) for r in results]},
            indent=2,
        )
        + "\n"
    )
    return path


def write_markdown(results: list[BenchResult], path, env: dict, settings: dict) -> Path:
    """The machine header, the settings, the table and the comparison lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = comparisons(results)
    path.write_text(
        f"{env['header']}\nsettings: {json.dumps(settings)}\n\n{format_table(results)}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return path


def write_report(
    results: list[BenchResult], folder, env: dict, settings: dict, *, with_plot: bool = True
) -> tuple[list[Path], str]:
    """bench.json, bench.md and (``with_plot``) bench.png in ``folder``: the paths written and
    a note on what was not (empty, or why there is no plot)."""
    folder = Path(folder)
    paths = [
        write_json(results, folder / "bench.json", env, settings),
        write_markdown(results, folder / "bench.md", env, settings),
    ]
    if not with_plot:
        return paths, ""
    title = f"{env['device']}, batch {settings['batch']}, {settings['dtype']}"
    try:
        paths.append(plot(results, folder / "bench.png", title=title))
    except ImportError:
        return paths, "no plot: matplotlib is not installed; pip install 'vimc[bench]'"
    return paths, ""


def plot(results: list[BenchResult], path, title: str = "") -> Path:
    """Figure 1 style: speed (img/s) and peak memory vs resolution, one line per model.
    Needs matplotlib (``pip install 'vimc[bench]'``): ImportError without it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    styles = {"vim_tiny": ("Vim-Ti", "tab:red", "o"), "deit_tiny": ("DeiT-Ti", "tab:blue", "s")}
    fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r.model for r in results):
        pts = [r for r in results if r.model == name and r.status == "ok"]
        label, color, marker = styles.get(name, (name, None, "^"))
        xs = [r.resolution for r in pts]
        ax_s.plot(xs, [r.images_per_s for r in pts], marker=marker, color=color, label=label)
        mem = [(r.resolution, r.peak_mem_mb) for r in pts if r.peak_mem_mb is not None]
        if mem:
            ax_m.plot(*zip(*mem), marker=marker, color=color, label=label)
        for r in results:  # skipped / failed points: marked at the bottom of both panels
            if r.model == name and r.status != "ok":
                for ax in (ax_s, ax_m):
                    ax.annotate(
                        f"{label}: {r.status}",
                        xy=(r.resolution, 0.03),
                        xycoords=("data", "axes fraction"),
                        color=color,
                        fontsize=8,
                        ha="center",
                        rotation=90,
                        va="bottom",
                    )
    ax_s.set(title="Speed", xlabel="resolution (px)", ylabel="images / s (log)")
    ax_s.set_yscale("log")
    ax_m.set(title="Peak memory", xlabel="resolution (px)", ylabel="MB")
    ticks = sorted({r.resolution for r in results})
    for ax in (ax_s, ax_m):
        ax.set_xticks(ticks)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "BenchResult",
    "comparisons",
    "environment",
    "format_table",
    "plot",
    "write_json",
    "write_markdown",
    "write_report",
]
