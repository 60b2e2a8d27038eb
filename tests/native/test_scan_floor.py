"""benchmarks/scan_floor.py builds and runs the scan's state-loop benchmark for every level this
CPU runs, and reports a time per update for each decay form of each (a short run: the numbers
are not checked)."""

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
        [cell.strip() for cell in ln.split("|")[1:-1]]
        for ln in capsys.readouterr().out.splitlines()
        if ln.startswith("| x86") or ln.startswith("| armv8")
    ]
    assert list(dict.fromkeys(r[0] for r in rows)) == levels
    for level in levels:
        forms = [r[3] for r in rows if r[0] == level]
        want = ["exp2-clamp", "exp2"] + {
            "x86-64-v4": ["exp2-scalef", "exp2-table"],
            "x86-64-v3": ["exp2-table"],
        }.get(level, [])
        assert forms == want, level
    assert all(float(r[4]) > 0 for r in rows)
    assert all(r[6] == ("10" if r[3] == "exp2" else "9") for r in rows)
