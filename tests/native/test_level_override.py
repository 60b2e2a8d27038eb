"""``VIMC_CPU_LEVEL``: the scan kernel for a chosen instruction-set level instead of the best
this CPU runs (to compare the variants on one machine), said by ``kernel_info``; a level
that does not exist, or that this CPU cannot run, is refused in plain words and the torch
path runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from vimc.ops.selective_scan import _cbuild

from ..tolerances import OTHER_DECAY_FORM

PROBE = """
import json, torch
from vimc.ops import selective_scan
from vimc.ops.selective_scan import cpu
torch.manual_seed(0)
u, delta, z = torch.randn(2, 40, 23), torch.randn(2, 40, 23), torch.randn(2, 40, 23)
A, B, C = -torch.rand(40, 4), torch.randn(2, 4, 23), torch.randn(2, 4, 23)
out = selective_scan(u, delta, A, B, C, z=z, delta_softplus=True)
print(json.dumps({"info": cpu.kernel_info(), "lanes": cpu.LANES, "out": out.flatten().tolist()}))
"""


def _run(level: str | None, decay: str | None = None) -> subprocess.CompletedProcess:
    drop = ("VIMC_CPU_LEVEL", "VIMC_CPU_KERNEL", "VIMC_SCAN_DECAY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if level is not None:
        env["VIMC_CPU_LEVEL"] = level
    if decay is not None:
        env["VIMC_SCAN_DECAY"] = decay
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _probe(level: str | None, decay: str | None = None) -> dict:
    proc = _run(level, decay)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


@pytest.mark.slow  # a process per level
def test_each_runnable_level_loads_and_computes_the_same():
    levels = _cbuild.runnable_levels()
    if not levels:
        pytest.skip(f"no instruction-set level listed for {_cbuild.arch()}")
    try:
        _cbuild.compiler()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    import torch

    results = {level: _probe(level) for level in levels}
    for level, r in results.items():
        assert level in r["info"]["scan kernel"], r["info"]
        assert f"{r['lanes']} channels per vector" in r["info"]["scan kernel"]
        assert r["lanes"] == (16 if level == "x86-64-v4" else 8)
    outs = [torch.tensor(r["out"]) for r in results.values()]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "level, message",
    [
        ("x86-64-v9", "is not an instruction-set level of"),
        *([("x86-64-v4", "this CPU lacks")] if "avx512f" not in _cbuild.cpu_flags() else []),
    ],
)
def test_a_level_this_machine_cannot_use_is_refused_in_plain_words(level, message):
    if _cbuild.arch() != "x86_64":
        pytest.skip(f"x86-64 levels; this machine is {_cbuild.arch()}")
    r = _probe(level)
    assert r["info"]["scan kernel"].startswith("torch, because the C kernel is unavailable")
    assert message in r["info"]["scan kernel"] and f"VIMC_CPU_LEVEL='{level}'" in r["stderr"]


def test_scan_decay_variable_picks_a_form_or_is_refused_by_name():
    """``VIMC_SCAN_DECAY`` (read when the kernel loads) sets the bounded decays' form, which
    kernel_info names, with the same results within float32 rounding; a form the build lacks
    stops the first scan with a ValueError naming the variable and the build's forms."""
    try:
        _cbuild.compiler()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    import torch

    plain, exp2 = _probe(None), _probe(None, "exp2")
    assert "exp2 decays" in exp2["info"]["scan kernel"]
    got, want = torch.tensor(exp2["out"]), torch.tensor(plain["out"])
    torch.testing.assert_close(got, want, **OTHER_DECAY_FORM)
    proc = _run(None, "exp3")
    assert proc.returncode != 0
    assert "ValueError: VIMC_SCAN_DECAY" in proc.stderr and "got 'exp3'" in proc.stderr
