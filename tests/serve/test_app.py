"""`vimc serve`'s application on 127.0.0.1: health, metadata, batched concurrent requests that
answer as local eager does, and bad requests that get HTTP 400 without harming the replica.

One application serves the whole module (Serve start, one warm replica); every HTTP call has
a timeout and every request loop a fixed count."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.conftest import free_port

pytest.importorskip("ray", reason="Ray is not installed (pip install 'vimc[serve]')")
# Ray's own modules use deprecated pydantic and ray.data options: not this project's to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

TIMEOUT_S = 30


def http(url: str, data: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a GET, or of a POST of ``data``."""
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def server(ray_session, digits_bundle):
    from vimc.serve import app

    port = free_port()
    app.start(
        digits_bundle,
        host="127.0.0.1",
        port=port,
        max_batch_size=8,
        batch_wait_ms=50,  # long enough for concurrent test requests to share a batch
        replica_cpus=1,
    )
    yield f"http://127.0.0.1:{port}"
    app.stop(True)


def test_healthz(server):
    assert http(f"{server}/healthz") == (200, {"status": "ok"})


def test_metadata(server):
    status, meta = http(f"{server}/metadata")
    assert status == 200
    assert meta["model"] == "vim_digits"
    assert meta["input_size"] == [3, 32, 32]
    assert meta["num_classes"] == 10
    assert meta["backend"] == "eager"
    assert meta["weights"] == "built-in weights"
    assert (meta["max_batch_size"], meta["batch_wait_ms"]) == (8, 50)
    assert meta["torch_threads"] == 1
    assert meta["heap"].startswith("kept (glibc")  # the replica keeps freed memory (vimc.heap)
    assert {"torch", "onnxruntime", "python"} <= set(meta["versions"])


def test_concurrent_requests_answer_as_local_eager_in_batches(server, digit_pngs, eager_top5):
    """Six client threads, two rounds over twelve digits: each reply is local eager's top-5
    (same classes in the same order, scores to float32 batch noise), and the replica ran
    fewer batches than it got requests."""
    before = http(f"{server}/metadata")[1]
    jobs = [p for _ in range(2) for p in digit_pngs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda p: http(f"{server}/predict", p.read_bytes()), jobs))
    for path, (status, body) in zip(jobs, replies):
        assert status == 200, body
        got, want = body["predictions"], eager_top5[path.name]
        assert [(t["index"], t["label"]) for t in got] == [(t["index"], t["label"]) for t in want]
        assert [t["score"] for t in got] == pytest.approx([t["score"] for t in want], abs=1e-5)
    after = http(f"{server}/metadata")[1]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == len(jobs)
    assert batches < requests  # @serve.batch put concurrent requests together


def test_topk_query(server, digit_pngs, eager_top5):
    status, body = http(f"{server}/predict?topk=2", digit_pngs[0].read_bytes())
    assert status == 200
    assert [t["index"] for t in body["predictions"]] == [
        t["index"] for t in eager_top5[digit_pngs[0].name][:2]
    ]
    assert (
        len(http(f"{server}/predict?topk=100", digit_pngs[0].read_bytes())[1]["predictions"]) == 10
    )
    status, body = http(f"{server}/predict?topk=zero", digit_pngs[0].read_bytes())
    assert status == 400 and "topk must be a positive integer" in body["error"]


def test_bad_image_gets_400_and_the_replica_stays_up(server, digit_pngs, eager_top5):
    status, body = http(f"{server}/predict", b"this is not an image")
    assert status == 400
    assert "cannot read image" in body["error"]
    assert http(f"{server}/predict", b"")[0] == 400  # and an empty body
    status, body = http(f"{server}/predict", digit_pngs[1].read_bytes())
    assert status == 200
    assert body["predictions"][0]["index"] == eager_top5[digit_pngs[1].name][0]["index"]
