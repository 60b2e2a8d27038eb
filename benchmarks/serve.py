"""`vimc serve` under load: requests/s and p50/p99 latency against concurrent clients and
``--max-batch-size``, on loopback.

    python benchmarks/serve.py            # vim_digits, vim_tiny; batch 1, 8, 32; 1, 4, 16 clients
    python benchmarks/serve.py --quick    # shorter points (what the committed results used)
    python benchmarks/serve.py --models vim_digits --batch-sizes 1,32 --clients 16

For each model, one application per max batch size is deployed side by side on a local Ray
instance (vimc.serve.app, the code `vimc serve` runs: one replica each, eager backend, route
/b<B>). A timed window runs that many client threads, each sending POST /predict with one
image's bytes over a keep-alive connection, one request at a time (a closed loop), for
``--warmup-s`` untimed seconds and then ``--seconds`` timed ones. ``--rounds`` rounds each run
one window of every (clients, max batch) point, the batch sizes in turn, so that a busy spell
on a shared machine slows all of them alike. A point reports the requests completed per
second of its timed windows, p50 and p99 latency (vimc.timing.quantile over those requests)
and the mean batch ``@serve.batch`` formed (the replica's counters, GET /metadata).

The clients run in this process on the same machine as Serve's proxy and the replica, so on a
small machine they take CPU from the server: the figures are what one machine gives end to
end, not the model's speed alone. vim_tiny uses random weights (speed does not depend on
them). Each replica reserves every CPU (``--replica-cpus``, default all) and runs torch on as
many threads; only the one being measured is busy.
Results: benchmarks/results/serve-<machine>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import threading
import time
from pathlib import Path

from vimc.cliargs import nonneg_float, positive_float, positive_int
from vimc.machine import header, machine_tag, save_results
from vimc.timing import quantile

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT_S = 60


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,8,32, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def sample_image(bundle) -> bytes:
    """One request body: a held-out digit (8x8 PNG) for vim_digits, else a 256x256 JPEG of
    noise, the size a photo is resized to before the 224 crop."""
    import numpy as np
    from PIL import Image

    from vimc.data import digit_to_image, load_digits_test

    buf = io.BytesIO()
    if bundle.model_name == "vim_digits":
        digit_to_image(load_digits_test()[0][0]).save(buf, format="PNG")
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _client(port, path, body, t_start, t_stop, latencies: list, errors: list) -> None:
    """One closed-loop client: send, wait for the reply, repeat until ``t_stop``. Records the
    latency of each request that ended in the timed window [``t_start``, ``t_stop``]."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= t_stop:
                return
            conn.request("POST", f"{path}/predict?topk=1", body=body)
            response = conn.getresponse()
            response.read()
            t1 = time.perf_counter()
            if response.status != 200:
                errors.append(response.status)
            elif t_start <= t1 <= t_stop:
                latencies.append(t1 - t0)
    except Exception as exc:  # noqa: BLE001  (counted; the point reports its errors)
        errors.append(repr(exc))
    finally:
        conn.close()


def _counters(port: int, path: str) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", f"{path}/metadata")
        meta = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return meta["requests"], meta["batches"]


def measure(port, path, body, clients: int, seconds: float, warmup_s: float, acc: dict) -> None:
    """One timed window of ``clients`` closed-loop clients against the application at
    ``path``, added to ``acc`` (latencies, errors, seconds, requests and batches served)."""
    latencies: list[float] = []
    errors: list = []
    requests0, batches0 = _counters(port, path)
    t_start = time.perf_counter() + warmup_s
    t_stop = t_start + seconds
    threads = [
        threading.Thread(
            target=_client, args=(port, path, body, t_start, t_stop, latencies, errors)
        )
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=warmup_s + seconds + TIMEOUT_S)
    requests1, batches1 = _counters(port, path)
    acc["latencies"] += latencies
    acc["errors"] += errors
    acc["seconds"] += seconds
    acc["served"] += requests1 - requests0
    acc["batches"] += batches1 - batches0


def summarize(acc: dict) -> dict:
    lat = acc["latencies"]
    if not lat:
        raise RuntimeError(f"no request finished in a timed window; errors: {acc['errors'][:3]}")
    return {
        "requests": len(lat),
        "errors": len(acc["errors"]),
        "rps": len(lat) / acc["seconds"],
        "p50_ms": quantile(lat, 0.5) * 1e3,
        "p99_ms": quantile(lat, 0.99) * 1e3,
        "mean_batch": acc["served"] / max(1, acc["batches"]),
    }


def run(args) -> list[dict]:
    """Per model: one application per max batch size, deployed side by side (route /b<B>),
    then ``--rounds`` rounds that each time every (clients, max batch) point once, the batch
    sizes in turn, so a busy spell on the machine slows all of them alike."""
    import ray

    from vimc.serve import app
    from vimc.serve.predictor import build_bundle, load_served_model

    rows = []
    ray.init(
        num_cpus=args.replica_cpus * len(args.batch_sizes),  # the replicas take turns
        include_dashboard=False,
        logging_level="warning",
        _node_ip_address="127.0.0.1",
    )
    try:
        started = False
        for name in args.models:
            model, weights = load_served_model(name, random_init=name != "vim_digits")
            bundle = build_bundle(model, "eager", weights=weights)
            body = sample_image(bundle)
            t0 = time.perf_counter()
            for b in args.batch_sizes:
                app.start(
                    bundle,
                    start_serve=not started,
                    port=args.port,
                    name=f"b{b}",
                    route_prefix=f"/b{b}",
                    max_batch_size=b,
                    batch_wait_ms=args.batch_wait_ms,
                    replica_cpus=args.replica_cpus,
                )
                started = True
            print(
                f"{name}: {len(args.batch_sizes)} applications in {time.perf_counter() - t0:.0f} s"
            )
            keys = [(c, b) for c in args.clients for b in args.batch_sizes]
            accs = {
                k: {"latencies": [], "errors": [], "seconds": 0.0, "served": 0, "batches": 0}
                for k in keys
            }
            for r in range(args.rounds):
                for c, b in keys:
                    measure(args.port, f"/b{b}", body, c, args.seconds, args.warmup_s, accs[c, b])
                print(f"  round {r + 1}/{args.rounds} done", flush=True)
            for c, b in keys:
                point = {"model": name, "weights": weights, "max_batch_size": b, "clients": c}
                point.update(summarize(accs[c, b]))
                rows.append(point)
                print(
                    f"  max batch {b:>2}, {c:>2} clients: {point['rps']:7.1f} req/s  p50 "
                    f"{point['p50_ms']:7.1f} ms  p99 {point['p99_ms']:7.1f} ms  mean batch "
                    f"{point['mean_batch']:5.1f}  ({point['requests']} requests, "
                    f"{point['errors']} errors)",
                    flush=True,
                )
            for b in args.batch_sizes:
                app.stop(False, name=f"b{b}")  # Serve itself stays for the next model
    finally:
        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    return rows


def batching_gains(rows: list[dict], clients: int) -> list[str]:
    """At ``clients`` clients, each batch size's req/s over batch size 1's, per model."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        at = {
            r["max_batch_size"]: r for r in rows if r["model"] == name and r["clients"] == clients
        }
        if 1 not in at:
            continue
        for b, r in sorted(at.items()):
            if b != 1:
                lines.append(
                    f"{name}, {clients} clients: max batch {b} serves "
                    f"{r['rps'] / at[1]['rps']:.2f}x the requests/s of max batch 1 "
                    f"(p99 {r['p99_ms']:.0f} ms vs {at[1]['p99_ms']:.0f} ms)"
                )
    return lines


def markdown(rows: list[dict], settings: dict, head: str, gains: list[str]) -> str:
    lines = [
        f"# vimc serve on loopback, {machine_tag()}",
        "",
        "```",
        head,
        " | ".join(f"{k} {v}" for k, v in settings.items()),
        "```",
        "",
        "One replica per max batch size (eager), measured in turn; clients in the same "
        "process over keep-alive HTTP, closed loop. "
        "vim_tiny has random weights (speed does not depend on them). mean batch: requests "
        "per forward that `@serve.batch` formed.",
        "",
        "| model | max batch | clients | req/s | p50 ms | p99 ms | mean batch | requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['max_batch_size']} | {r['clients']} | {r['rps']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['requests']} |"
        )
    return "\n".join(lines + [""] + [f"- {g}" for g in gains]) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for col, name in enumerate(models):
        for b in sorted({r["max_batch_size"] for r in rows}):
            pts = [r for r in rows if r["model"] == name and r["max_batch_size"] == b]
            xs = [r["clients"] for r in pts]
            axes[0][col].plot(xs, [r["rps"] for r in pts], marker="o", label=f"max batch {b}")
            axes[1][col].plot(xs, [r["p99_ms"] for r in pts], marker="o", label=f"max batch {b}")
        axes[0][col].set_title(name)
        axes[0][col].set_ylabel("requests/s")
        axes[1][col].set_ylabel("p99 latency (ms)")
        clients = sorted({r["clients"] for r in rows})
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(clients, [str(c) for c in clients])
            ax.set_xlabel("concurrent clients")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("vimc serve on loopback (one replica)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vim_digits,vim_tiny", help="comma-separated")
    ap.add_argument("--batch-sizes", type=int_list, default=[1, 8, 32], help="--max-batch-size")
    ap.add_argument("--clients", type=int_list, default=[1, 4, 16], help="concurrent clients")
    ap.add_argument("--seconds", type=positive_float, default=10.0, help="timed s per window")
    ap.add_argument("--warmup-s", type=nonneg_float, default=2.0, help="untimed s per window")
    ap.add_argument("--rounds", type=positive_int, default=3, help="timed windows per point")
    ap.add_argument("--quick", action="store_true", help="--seconds 5 --warmup-s 1 --rounds 2")
    ap.add_argument("--batch-wait-ms", type=nonneg_float, default=5.0)
    ap.add_argument(
        "--replica-cpus", type=positive_int, default=os.cpu_count(), help="default: all CPUs"
    )
    ap.add_argument("--port", type=positive_int, default=8123, help="loopback port for Serve")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if args.quick:
        args.seconds, args.warmup_s, args.rounds = 5.0, 1.0, 2
    head = header()
    load_start = os.getloadavg()
    print(head)
    rows = run(args)
    settings = {
        "rounds": args.rounds,
        "timed s per window": args.seconds,
        "warm-up s per window": args.warmup_s,
        "batch wait ms": args.batch_wait_ms,
        "replica CPUs": args.replica_cpus,
        "load average at start": tuple(round(v, 2) for v in load_start),
        "at end": tuple(round(v, 2) for v in os.getloadavg()),
    }
    gains = batching_gains(rows, max(args.clients))
    text = markdown(rows, settings, head, gains)
    print("\n" + text)
    if not args.no_save:
        stem = Path(args.out_dir) / f"serve-{machine_tag()}"
        save_results(stem, {"machine": head, "settings": settings, "rows": rows}, text)
        plot(rows, stem.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
