"""``vimc bench``: Vim-Ti against DeiT-Ti across resolutions, the paper's Figure 1 rerun on the
current device. Per (model, resolution): images/s, latency (median, p20, p80) and peak memory,
printed as a table, written as JSON and drawn as a two-panel PNG (speed and memory vs
resolution).

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the runs, above what
was allocated before the input was made; on CPU the peak resident set size (Linux VmHWM, reset
through /proc/self/clear_refs) above the RSS before the input was made, after freeing cached
heap memory (malloc_trim). So both count the input, activations and workspace, not weights.

DeiT-Ti is a minimal ViT written here (timm has no place in vimc's dependencies): patch 16,
width 192, depth 12, 3 heads, MLP ratio 4, LayerNorm eps 1e-6, class token, learned absolute
pos_embed: 5,717,416 parameters with 1000 classes, timm's ``deit_tiny_patch16_224``. Its
attention is either ``explicit`` (softmax(QK^T)V materialized, as timm 0.4 that the paper's
DeiT baseline used) or ``sdpa`` (torch's fused scaled_dot_product_attention).
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vimc.machine import cpu_name

PAPER_RESOLUTIONS = (512, 640, 738, 1024, 1248)
CUDA_RESOLUTIONS = (224, 512, 640, 738, 1024, 1248)
CPU_RESOLUTIONS = (224, 512, 768, 1248)
BENCH_MODELS = ("vim_tiny", "deit_tiny")


# ---------------------------------------------------------------------------------------------
# the DeiT-Ti baseline
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_impl: str = "explicit"):
        super().__init__()
        if attn_impl not in ("explicit", "sdpa"):
            raise ValueError(f"attn_impl must be 'explicit' or 'sdpa', got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (
            self.qkv(x)
            .reshape(B, L, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )  # each (B, H, L, hd)
        if self.attn_impl == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, L, L)
            x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_impl: str = "explicit"
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DeiT(nn.Module):
    """A plain ViT with a class token (DeiT without distillation token), timm's names."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        attn_impl: str = "explicit",
    ):
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, embed_dim))
        self.blocks = nn.Sequential(
            *[ViTBlock(embed_dim, num_heads, mlp_ratio, attn_impl) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(
                f"DeiT built for {self.grid * self.patch_size}px input, got {x.shape[1]} patches"
            )
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


def deit_tiny(img_size: int = 224, num_classes: int = 1000, attn_impl: str = "explicit") -> DeiT:
    return DeiT(
        img_size=img_size,
        num_classes=num_classes,
        embed_dim=192,
        depth=12,
        num_heads=3,
        attn_impl=attn_impl,
    )


def build_bench_model(name: str, img_size: int, attn_impl: str = "explicit") -> nn.Module:
    if name == "deit_tiny":
        return deit_tiny(img_size, attn_impl=attn_impl)
    import vimc

    return vimc.create_model(name, img_size=img_size)


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_cpu_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above a baseline, in bytes: CUDA allocator peak, or CPU RSS high-water mark
    (Linux). ``supported`` is False where neither can be read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.supported = True

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_cpu_memory()
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
                self.base = _proc_status_kb("VmRSS")
            except OSError:
                self.base = None
            self.supported = self.base is not None
        return self

    def __exit__(self, *exc):
        return False

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if not self.supported:
            return None
        hwm = _proc_status_kb("VmHWM")
        return None if hwm is None else max(0, hwm - self.base) * 1024


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def measure(
    model: nn.Module,
    resolution: int,
    batch: int,
    device: torch.device,
    max_seconds: float,
    *,
    dtype: torch.dtype = torch.float32,
    max_iters: int = 50,
    warmup: int = 1,
) -> dict:
    """Time ``model`` on a random (batch, 3, res, res) input: ``warmup`` untimed forwards, then
    timed ones until ``max_seconds`` (counting the warm-up) or ``max_iters``; at least one."""

    def autocast():
        return (
            torch.autocast(device.type, dtype=dtype)
            if dtype != torch.float32
            else torch.autocast(device.type, enabled=False)
        )

    # warm-up outside the memory window: one-time costs (lazy kernel loading, compilation,
    # thread pools) are neither timed nor counted as the model's memory
    t_begin = time.perf_counter()
    with torch.inference_mode(), autocast():
        x = torch.randn(batch, 3, resolution, resolution, device=device)
        for _ in range(max(1, warmup)):
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            first = time.perf_counter() - t0
        del x
    with PeakMemory(device) as mem, torch.inference_mode(), autocast():
        x = torch.randn(batch, 3, resolution, resolution, device=device)
        times: list[float] = []
        while len(times) < max_iters:
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
            spent = time.perf_counter() - t_begin
            if spent + statistics.median(times) > max_seconds:
                break
        peak = mem.peak_bytes()
        del x
    med = statistics.median(times)
    return {
        "iters": len(times),
        "latency_ms": med * 1e3,
        "latency_p20_ms": _quantile(times, 0.2) * 1e3,
        "latency_p80_ms": _quantile(times, 0.8) * 1e3,
        "images_per_s": batch / med,
        "peak_mem_mb": None if peak is None else peak / 2**20,
        "first_run_s": first,
    }


def _tokens(name: str, res: int) -> int:
    g = (res - 16) // 16 + 1
    return g * g + 1


def run_bench(
    models=BENCH_MODELS,
    resolutions=None,
    *,
    batch: int = 1,
    max_seconds: float = 10.0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compile: bool = False,
    attn_impl: str = "explicit",
    skip_factor: float = 3.0,
    log=print,
) -> list[BenchResult]:
    """Measure every (model, resolution). A point whose forward is predicted (from the previous
    resolution: linear in tokens for Vim, quadratic for DeiT's attention) to take longer than
    ``skip_factor * max_seconds`` is skipped and reported as such."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolutions = sorted(
        resolutions or (CUDA_RESOLUTIONS if device.type == "cuda" else CPU_RESOLUTIONS)
    )
    results: list[BenchResult] = []
    for name in models:
        prev: tuple[int, float] | None = None
        for res in resolutions:
            r = BenchResult(name, res, _tokens(name, res), batch)
            results.append(r)
            if prev is not None:
                power = 2.0 if name.startswith("deit") else 1.0
                est = prev[1] * (r.tokens / prev[0]) ** power
                if est > skip_factor * max_seconds:
                    r.status, r.note = (
                        "skipped",
                        (f"estimated {est:.0f} s per forward > {skip_factor:g} x --max-seconds"),
                    )
                    log(f"  {name} @ {res}: skipped ({r.note})")
                    continue
            try:
                model = build_bench_model(name, res, attn_impl).to(device).eval()
                if compile:
                    model = torch.compile(model)
                m = measure(model, res, batch, device, max_seconds, dtype=dtype)
                for k, v in m.items():
                    setattr(r, k, v)
                prev = (r.tokens, r.latency_ms / 1e3)
                mem = "n/a" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f} MB"
                log(
                    f"  {name} @ {res}: {r.images_per_s:.2f} img/s, {r.latency_ms:.1f} ms, "
                    f"peak {mem} ({r.iters} runs)"
                )
            except torch.OutOfMemoryError as exc:  # pragma: no cover (GPU only)
                r.status, r.note = "oom", str(exc).splitlines()[0]
                log(f"  {name} @ {res}: out of memory")
                prev = (r.tokens, float("inf"))
            finally:
                model = None
                _release_cpu_memory()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def environment(device: torch.device) -> dict:
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
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


def plot(results: list[BenchResult], path, title: str = "") -> Path:
    """Figure 1 style: speed (img/s) and peak memory vs resolution, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
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
    "DeiT",
    "deit_tiny",
    "BenchResult",
    "run_bench",
    "measure",
    "format_table",
    "comparisons",
    "write_json",
    "plot",
    "environment",
    "CPU_RESOLUTIONS",
    "CUDA_RESOLUTIONS",
    "PAPER_RESOLUTIONS",
]
