"""benchmarks/scan_floor.py builds and runs the scan's state-loop benchmark for every level this
CPU runs, and reports a time per update for each (a short run: the numbers are not checked)."""

from __future__ import annotations

import pytest
from vimc.ops.selective_scan import _cbuild

from benchmarks import scan_floor


def test_floor_benchmark_runs_each_level(capsys):
    try:
        _cbuild.compiler()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    levels = _cbuild.runnable_levels()
    if not levels:
        pytest.skip(f"no instruction-set level listed for {_cbuild.arch()}")
    assert scan_floor.main(["--reps", "20", "--no-save"]) == 0
    rows = [
        ln
        for ln in capsys.readouterr().out.splitlines()
        if ln.startswith("| x86") or ln.startswith("| armv8")
    ]
    assert [r.split("|")[1].strip() for r in rows] == levels
    assert all(float(r.split("|")[4]) > 0 for r in rows)
