"""`vimc bench` and its DeiT-Ti baseline (vimc.deit)."""

import json
import time

import pytest
import torch

from vimc import bench, bench_report, cli, deit

from ..tolerances import DEIT_ATTENTION_IMPLS


def deit_param_count(D=192, depth=12, patch=16, chans=3, tokens=197, classes=1000, mlp=4):
    """DeiT-Ti's parameters from its architecture, term by term."""
    patch_embed = chans * patch * patch * D + D
    cls_pos = D + tokens * D
    block = (
        2 * D
        + D * 3 * D
        + 3 * D
        + D * D
        + D  # norm1, qkv, proj
        + 2 * D
        + D * mlp * D
        + mlp * D
        + mlp * D * D
        + D
    )  # norm2, fc1, fc2
    return patch_embed + cls_pos + depth * block + 2 * D + D * classes + classes


def test_deit_tiny_matches_timm_parameter_count():
    assert deit_param_count() == 5_717_416  # timm deit_tiny_patch16_224
    model = deit.deit_tiny()
    assert sum(p.numel() for p in model.parameters()) == 5_717_416


@pytest.mark.parametrize("attn", ["explicit", "sdpa"])
def test_deit_attention_impls_agree(attn):
    torch.manual_seed(0)
    ref = deit.DeiT(img_size=32, depth=2, attn_impl="explicit").eval()
    other = deit.DeiT(img_size=32, depth=2, attn_impl=attn).eval()
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), ref(x), **DEIT_ATTENTION_IMPLS)


def test_deit_rejects_other_resolution():
    with pytest.raises(ValueError, match="built for 32px"):
        deit.DeiT(img_size=32, depth=1)(torch.randn(1, 3, 48, 48))


@pytest.mark.slow
def test_bench_cli_small(capsys, tmp_path):
    out = tmp_path / "bench"
    code = cli.main(
        [
            "bench",
            "--resolutions",
            "32",
            "48",
            "--max-seconds",
            "0.3",
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "vim_tiny" in text and "deit_tiny" in text and "img/s" in text
    res = json.loads((out / "bench.json").read_text())
    assert res["environment"]["torch"] == torch.__version__
    assert res["environment"]["header"] in (out / "bench.md").read_text()
    rows = res["results"]
    assert {(r["model"], r["resolution"]) for r in rows} == {
        (m, s) for m in ("vim_tiny", "deit_tiny") for s in (32, 48)
    }
    for r in rows:
        assert r["status"] == "ok" and r["images_per_s"] > 0 and r["iters"] >= 1
        assert r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0
    assert (out / "bench.png").stat().st_size > 10_000
    assert "x the speed of" in (out / "bench.md").read_text()


def test_bench_skips_points_predicted_too_slow():
    # a 0.001 s budget: the first resolution runs, the next is predicted over 3x the budget
    res = bench.run_bench(["deit_tiny"], [32, 64], max_seconds=0.001, log=lambda *_: None)
    assert res[0].status == "ok" and res[1].status == "skipped"
    assert "estimated" in res[1].note
    assert "skipped" in bench_report.format_table(res)


def test_bench_bad_resolution(capsys):
    assert cli.main(["bench", "--resolutions", "100"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_measure_stops_before_overrunning_its_budget():
    """Timed forwards stop when the next one is predicted to end past max_seconds (warm-up
    included), so a point takes at most about its budget; at least one is timed."""

    def forward(x):  # a "model" of fixed speed
        time.sleep(0.05)

    t0 = time.perf_counter()
    m = bench.measure(forward, 16, 1, torch.device("cpu"), max_seconds=1.0)
    spent = time.perf_counter() - t0
    # the budget also pays for the warm-up and for freeing memory before the timed runs
    assert 4 <= m["iters"] <= 19 and spent < 1.0 + 0.05
    assert m["latency_p20_ms"] <= m["latency_ms"] <= m["latency_p80_ms"]
    assert m["images_per_s"] == pytest.approx(1e3 / m["latency_ms"])
    assert m["first_run_s"] >= 0.05
    # a budget already spent by the warm-up still times one forward; max_iters caps the rest
    assert bench.measure(forward, 16, 1, torch.device("cpu"), max_seconds=0.01)["iters"] == 1
    assert bench.measure(forward, 16, 1, torch.device("cpu"), 10.0, max_iters=2)["iters"] == 2


def test_bench_keeps_its_names():
    """vimc.bench still offers what moved to vimc.deit and vimc.bench_report."""
    assert bench.DeiT is deit.DeiT and bench.deit_tiny is deit.deit_tiny
    for name in ("BenchResult", "format_table", "comparisons", "write_json", "plot", "environment"):
        assert getattr(bench, name) is getattr(bench_report, name), name
