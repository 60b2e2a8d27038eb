"""``vimc serve``'s Ray Serve application: one deployment, its HTTP routes and its batching.

Each replica is a Ray actor that builds a :class:`~vimc.serve.predictor.Predictor` from the
driver's bundle once, warms it up at the batch sizes it will see, and only then finishes its
constructor: Serve routes traffic to a replica after that, so the first users never pay for
compilation or lazy loading. Serve's HTTP proxy takes the requests (FastAPI routes below):

- ``POST /predict?topk=K``: the body is an image file's bytes. The replica decodes it on
  its own (so a bad image is that request's HTTP 400, never its batch's failure), then
  awaits :meth:`VimClassifier.predict_batch`, where ``@serve.batch`` gathers up to
  ``max_batch_size`` decoded images, waiting at most ``batch_wait_ms`` for the batch to fill,
  and runs them as one forward.
- ``GET /healthz``: ``{"status": "ok"}`` from a replica that took traffic.
- ``GET /metadata``: model, input size, backend, weights, batching settings, versions, and
  this replica's request and batch counts (their ratio is the mean batch size).

The forward and the decoding run in worker threads (``asyncio.to_thread``), so the replica's
event loop keeps accepting and decoding requests while a batch computes; those requests wait
for the forward to end and then enter ``@serve.batch`` together, as the next batch
(:meth:`VimClassifier._idle` says why).
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime,
# and as strings they did not resolve through Serve's ingress (`request: Request` became a
# required query parameter)
import asyncio
import logging
import os

import ray
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from vimc.data import ImageError
from vimc.heap import heap_policy
from vimc.machine import versions
from vimc.serve.predictor import DEFAULT_TOPK, Bundle, Predictor
from vimc.version import __version__

APP_NAME = "vimc"
api = FastAPI(title="vimc", description="Vision Mamba image classification")


def _topk(request: Request, num_classes: int) -> int:
    text = request.query_params.get("topk", str(DEFAULT_TOPK))
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"topk must be a positive integer, got {text!r}") from None
    if k < 1:
        raise ValueError(f"topk must be a positive integer, got {k}")
    return min(k, num_classes)


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


@serve.deployment(name="VimClassifier", health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(api)
class VimClassifier:
    """One replica. ``bundle_ref``: ``[ObjectRef of a Bundle]`` (a list, so that Ray passes
    the reference through rather than the bundle; the replica fetches it itself)."""

    def __init__(self, bundle_ref: list, max_batch_size: int, batch_wait_ms: float, threads):
        bundle: Bundle = ray.get(bundle_ref[0])
        self.settings = {"max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms}
        self.predictor = Predictor(bundle, threads=threads)
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        self.predictor.warm_up(max_batch_size)
        self.requests = 0
        self.batches = 0
        self._idle_event = None

    def check_health(self) -> None:
        """Serve's periodic health check. A replica is healthy once its constructor (load and
        warm-up) has finished; Serve itself replaces one whose process died."""
        if self.predictor is None:
            raise RuntimeError("no model loaded")

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/metadata")
    def metadata(self) -> dict:
        return {
            **self.predictor.bundle.describe(),
            **self.settings,
            "replica_pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "heap": heap_policy(),
            "requests": self.requests,
            "batches": self.batches,
            "vimc": __version__,
            "versions": versions(),
        }

    @api.post("/predict")
    async def predict(self, request: Request):
        try:
            k = _topk(request, len(self.predictor.labels))
        except ValueError as exc:
            return _bad_request(str(exc))
        body = await request.body()
        try:
            x = await asyncio.to_thread(self.predictor.decode, body)
        except ImageError as exc:
            return _bad_request(str(exc))
        await self._idle().wait()
        probs = await self.predict_batch(x)
        return {"predictions": self.predictor.top_k(probs, k)}

    def _idle(self) -> asyncio.Event:
        """Set while no forward runs. Serve's batcher (Ray 2.60, since max_concurrent_batches
        exists) forms the next batch as soon as the previous one starts, from what arrived
        within ``batch_wait_ms``, and queues it behind the running one: under load, many
        small batches. Requests that wait for this event instead enter the batcher together
        when the forward ends, and fill the next batch. Made on first use, on the loop that
        runs the handlers."""
        if self._idle_event is None:
            self._idle_event = asyncio.Event()
            self._idle_event.set()
        return self._idle_event

    # the real size and wait are set per deployment in __init__ (set_max_batch_size, ...)
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def predict_batch(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        self.requests += len(images)
        self.batches += 1
        self._idle().clear()
        try:
            probs = await asyncio.to_thread(self.predictor.probabilities, torch.stack(images))
        finally:
            self._idle().set()
        return list(probs)


def build_app(
    bundle: Bundle,
    *,
    replicas: int = 1,
    max_batch_size: int = 8,
    batch_wait_ms: float = 5.0,
    replica_cpus: float = 1.0,
):
    """The Serve application for ``bundle``. Each replica reserves ``replica_cpus`` Ray CPUs and
    runs torch on that many threads (at least one). A replica accepts twice a batch of
    requests at once (at least 16), so one batch can fill while the previous one computes;
    beyond that, requests wait in Serve's proxy for a free replica."""
    bundle_ref = ray.put(bundle)  # once in the object store, fetched by every replica
    deployment = VimClassifier.options(
        num_replicas=replicas,
        max_ongoing_requests=max(16, 2 * max_batch_size),
        ray_actor_options={"num_cpus": replica_cpus},
    )
    threads = max(1, int(replica_cpus))
    return deployment.bind([bundle_ref], max_batch_size, batch_wait_ms, threads)


def serve_running() -> bool:
    """Whether Serve already runs on the connected Ray cluster (its proxies are up)."""
    return bool(serve.status().proxies)


def start(
    bundle: Bundle,
    *,
    start_serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "WARNING",
    name: str = APP_NAME,
    route_prefix: str = "/",
    **app_options,
) -> None:
    """Deploy the application ``name`` at ``route_prefix`` on the connected Ray cluster and
    wait until every replica is warm. ``start_serve``: start Serve with its HTTP proxy on
    ``host:port`` first (when Serve already runs on the cluster, it keeps its own host and
    port: pass False). ``app_options``: :func:`build_app`'s."""
    # the driver's own Serve logger ("Started Serve", "Application is ready", ...)
    logging.getLogger("ray.serve").setLevel(log_level)
    if start_serve:
        serve.start(
            http_options={"host": host, "port": port},
            logging_config={"log_level": log_level},
        )
    app = build_app(bundle, **app_options)
    serve.run(app, name=name, route_prefix=route_prefix, logging_config={"log_level": log_level})


def stop(started_serve: bool, name: str = APP_NAME) -> None:
    """Undo :func:`start`: shut Serve down if :func:`start` started it, else delete only the
    application ``name`` (other applications on a shared cluster keep running)."""
    if started_serve:
        serve.shutdown()
    else:
        serve.delete(name)


__all__ = ["APP_NAME", "VimClassifier", "build_app", "serve_running", "start", "stop"]
