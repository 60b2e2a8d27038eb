"""``vimc serve`` and ``vimc predict-folder``: their parsers and handlers.

``add_serve_parser(sub)`` and ``add_predict_folder_parser(sub)`` register each command on
``vimc``'s subparsers (vimc/cli.py); a handler returns the exit code and raises
``ValueError`` for bad usage or input (exit 2). Ray, FastAPI and the model are imported in
the handlers, so ``vimc --help`` stays instant and works without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from vimc.cliargs import Formatter as _Formatter
from vimc.cliargs import nonneg_float, positive_float, positive_int

_BACKENDS = ("eager", "compiled", "aoti", "onnxruntime")  # predictor.BACKENDS, without torch


def _add_model_args(p: argparse.ArgumentParser, *, positional: bool) -> None:
    """MODEL and where its weights come from (one source at most), as ``vimc predict``."""
    help_model = "registered model (default: vim_digits, or the one --checkpoint fits)"
    if positional:
        p.add_argument("model", nargs="?", default=None, metavar="MODEL", help=help_model)
    else:
        p.add_argument("--model", "-m", default=None, help=help_model)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint", "-c", default=None, help="an official .pth checkpoint or vimc safetensors"
    )
    weights.add_argument(
        "--pretrained",
        action="store_true",
        help="the official weights, through the Hugging Face Hub cache",
    )
    weights.add_argument(
        "--random-init",
        action="store_true",
        help="random weights (for speed measurements only). Without any of these three, "
        "a model with built-in weights (vim_digits) uses them",
    )
    p.add_argument(
        "--backend",
        choices=_BACKENDS,
        default="eager",
        help="how each worker runs the model; aoti and onnxruntime export it first, once",
    )
    p.add_argument("--topk", "-k", type=positive_int, default=5, help="classes per image")


def _bundle(args):
    """The model the arguments name, packed for the workers."""
    from vimc.serve.predictor import build_bundle, load_served_model

    model, weights = load_served_model(
        args.model, args.checkpoint, pretrained=args.pretrained, random_init=args.random_init
    )
    print(f"model {model.name} ({weights}), backend {args.backend}", flush=True)
    return build_bundle(model, args.backend, weights=weights)


# ---------------------------------------------------------------------------------------------
# vimc serve
# ---------------------------------------------------------------------------------------------


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        formatter_class=_Formatter,
        help="an HTTP endpoint on Ray Serve: batching, replicas, clusters",
        description="Serve a model over HTTP with Ray Serve.\n\n"
        "  POST /predict?topk=K   body: an image file's bytes -> "
        '{"predictions": [{"label", "index", "score"}, ...]}\n'
        "  GET  /healthz          200 once the replicas are warm\n"
        "  GET  /metadata         model, input size, backend, batching, versions\n\n"
        "Requests are batched per replica (@serve.batch). Without --address a local Ray "
        "instance runs on this machine; --address auto joins the cluster `ray start` runs "
        "here, and replicas spread over its nodes. Ctrl-C stops it.\n\n"
        "  vimc serve vim_digits\n"
        "  curl --data-binary @digit.png localhost:8000/predict",
    )
    _add_model_args(p, positional=True)
    p.add_argument("--replicas", type=positive_int, default=1, help="model replicas")
    p.add_argument(
        "--replica-cpus",
        type=positive_float,
        default=1.0,
        help="Ray CPUs each replica reserves; torch runs that many threads in it",
    )
    p.add_argument(
        "--max-batch-size", type=positive_int, default=8, help="most requests in one forward"
    )
    p.add_argument(
        "--batch-wait-ms",
        type=nonneg_float,
        default=5.0,
        help="how long a batch waits to fill before it runs",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the HTTP proxy binds (0.0.0.0: reachable from other machines)",
    )
    p.add_argument("--port", type=positive_int, default=8000, help="HTTP port")
    p.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster (auto: the one `ray start` runs on this machine) "
        "instead of starting a local one",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="Ray Serve's log level (info shows each request)",
    )
    p.set_defaults(func=cmd_serve)
    return p


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_serve(args) -> int:
    from vimc.serve.cluster import check_cpus, import_ray, ray_connection

    import_ray()  # before the model work: say early that the extra is missing
    bundle = _bundle(args)
    with ray_connection(args.address) as own_ray:
        from vimc.serve import app

        # `kill PID` and a container's stop stop the server as Ctrl-C does (set after
        # ray.init, which installs a SIGTERM handler of its own that skips our cleanup)
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            check_cpus(
                args.replicas * args.replica_cpus,
                f"--replicas {args.replicas} x --replica-cpus {args.replica_cpus:g}",
                strict=own_ray and args.address is None,
            )
            own_serve = not app.serve_running()
            if not own_serve:
                print("Serve already runs on this Ray cluster: its HTTP host and port stay")
            try:
                app.start(
                    bundle,
                    start_serve=own_serve,
                    host=args.host,
                    port=args.port,
                    log_level=args.log_level.upper(),
                    replicas=args.replicas,
                    max_batch_size=args.max_batch_size,
                    batch_wait_ms=args.batch_wait_ms,
                    replica_cpus=args.replica_cpus,
                )
                print(
                    f"serving on http://{args.host}:{args.port} ({args.replicas} replica(s), "
                    f"batches of <= {args.max_batch_size}, wait {args.batch_wait_ms:g} ms): "
                    f"POST /predict, GET /healthz, GET /metadata. Ctrl-C stops.",
                    flush=True,
                )
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:  # also while the replicas were still starting
                print("stopping...", file=sys.stderr, flush=True)
            finally:
                app.stop(own_serve)
        finally:
            signal.signal(signal.SIGTERM, previous)
    print("stopped", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# vimc predict-folder
# ---------------------------------------------------------------------------------------------


def add_predict_folder_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict-folder",
        formatter_class=_Formatter,
        help="classify every image under a folder into a JSON Lines file (resumable)",
        description="Classify every image under DIR (recursively) and write one JSON line per "
        "image to OUT: its path, top-k predictions or the error that kept it from being read. "
        "OUT is replaced atomically; a rerun skips the images already classified. --ray runs "
        "on Ray Data with one model per actor, on this machine or a cluster (--address; "
        "every node must see DIR at the same path).",
    )
    p.add_argument("folder", metavar="DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", "-o", required=True, help="the JSON Lines file to write")
    _add_model_args(p, positional=False)
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (no --ray)")
    p.add_argument("--ray", action="store_true", help="run on Ray Data")
    p.add_argument(
        "--actors", type=positive_int, default=None, help="--ray: model actors (default: CPUs)"
    )
    p.add_argument(
        "--actor-cpus", type=positive_float, default=1.0, help="--ray: CPUs (threads) per actor"
    )
    p.add_argument(
        "--num-cpus",
        type=positive_int,
        default=None,
        help="--ray without --address: CPUs of the local Ray instance (default: all)",
    )
    p.add_argument("--address", default=None, help="--ray: join this Ray cluster (e.g. auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict_folder)
    return p


def cmd_predict_folder(args) -> int:
    from pathlib import Path

    from vimc.serve.folder import predict_folder

    if not Path(args.folder).is_dir():
        raise ValueError(f"not a folder: {args.folder}")
    if not args.ray and (args.address or args.actors or args.num_cpus):
        raise ValueError("--address, --actors and --num-cpus go with --ray")
    if args.ray:
        from vimc.serve.cluster import import_ray

        import_ray()
    bundle = _bundle(args)
    options = {
        "batch_size": args.batch_size,
        "topk": args.topk,
        "threads": args.threads,
        "progress": not args.no_progress,
    }
    if args.ray:
        from vimc.serve.cluster import check_cpus, ray_connection

        with ray_connection(args.address, num_cpus=args.num_cpus) as own_ray:
            import ray

            cpus = ray.cluster_resources().get("CPU", 1)
            actors = args.actors or max(1, int(cpus // args.actor_cpus))
            check_cpus(
                actors * args.actor_cpus,
                f"{actors} actor(s) x --actor-cpus {args.actor_cpus:g}",
                strict=own_ray and args.address is None,
            )
            stats = predict_folder(
                bundle,
                args.folder,
                args.out,
                use_ray=True,
                actors=actors,
                actor_cpus=args.actor_cpus,
                **options,
            )
    else:
        stats = predict_folder(bundle, args.folder, args.out, **options)
    print(
        f"{args.out}: {stats['classified']} classified, {stats['errors']} unreadable, "
        f"{stats['skipped']} already done (of {stats['images']} images)"
    )
    return 0


__all__ = [
    "add_predict_folder_parser",
    "add_serve_parser",
    "cmd_predict_folder",
    "cmd_serve",
]
