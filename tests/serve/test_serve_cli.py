"""`vimc serve` from its command line to Ctrl-C: it serves, answers, and on SIGINT removes its
application and Serve's HTTP proxy, and returns 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.serve.conftest import check_usage_error, free_port, vimc_main

pytest.importorskip("ray", reason="Ray is not installed (pip install 'vimc[serve]')")
# Ray's own modules use deprecated pydantic and ray.data options: not this project's to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

STARTUP_LIMIT_S = 120


def _ctrl_c_after_checks(base: str, png: bytes, results: dict) -> None:
    """Wait for /healthz, make one prediction, wait for `serve.run` to report the application
    running (`vimc serve` then prints its address), then Ctrl-C the process: always, also when
    a check fails or the server never comes up, so the test cannot hang."""
    from ray import serve

    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
                    results["healthz"] = r.status
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        request = urllib.request.Request(f"{base}/predict?topk=1", data=png, method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            results["predict"] = json.loads(r.read())
        while time.monotonic() < deadline:
            app = serve.status().applications.get("vimc")
            if app is not None and app.status == "RUNNING":
                break
            time.sleep(0.2)
        time.sleep(1.0)  # serve.run polls the same status, then `vimc serve` prints
    except Exception as exc:  # noqa: BLE001  (reported by the test's assertions)
        results["error"] = repr(exc)
    finally:
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_serve_answers_and_ctrl_c_stops_it(ray_session, digit_pngs, eager_top5, capsys):
    from ray import serve

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results: dict = {}
    client = threading.Thread(
        target=_ctrl_c_after_checks, args=(base, digit_pngs[0].read_bytes(), results)
    )
    client.start()
    rc = vimc_main(["serve", "vim_digits", "--port", str(port), "--batch-wait-ms", "1"])
    client.join(timeout=30)
    assert rc == 0
    assert "error" not in results, results
    assert results["healthz"] == 200
    (top,) = results["predict"]["predictions"]
    assert top["index"] == eager_top5[digit_pngs[0].name][0]["index"]
    out, err = capsys.readouterr()
    assert f"serving on {base}" in out
    assert "stopped" in err
    assert not serve.status().proxies  # Serve is gone: it started it, it shut it down
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(f"{base}/healthz", timeout=5)


def test_serve_refuses_a_model_without_weights(capsys):
    check_usage_error(["serve", "vim_tiny"], "no built-in weights: pass --pretrained", capsys)
