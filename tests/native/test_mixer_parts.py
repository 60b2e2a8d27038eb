"""benchmarks/mixer_parts.py cuts each part out of the mixer kernel and times the builds (a short
run: the times are not checked): every cut applies to the kernel as it is, changes what the
kernel computes, and a cut whose text the kernel no longer has is refused by name."""

from __future__ import annotations

import pytest
from vimc.ops.selective_scan import _cbuild

from benchmarks import mixer_parts


def test_every_part_cuts_once_and_a_stale_cut_is_refused():
    source = (_cbuild.HERE / "cpu_kernel.c").read_text()
    for part in mixer_parts.PARTS:
        assert mixer_parts.cut(source, part) != source
    stale = source.replace("mixer_xproj(us, xpt, xd, nt, E, W);", "mixer_xproj(us, xd);")
    with pytest.raises(ValueError, match="'x_proj' edit matches 0 places"):
        mixer_parts.cut(stale, "x_proj")


@pytest.mark.slow
def test_parts_benchmark_runs_and_each_cut_changes_the_output(capsys):
    try:
        _cbuild.compiler()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    # two threads: batch 1 takes the kernel's split by direction and its gate pass, batch 2 a
    # batch row per task
    args = ["--batches", "1", "2", "--threads", "2", "--rounds", "1", "--calls", "1", "--no-save"]
    assert mixer_parts.main(args) == 0  # raises where a cut left the output as it was
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    parts = [ln.split("|")[3].strip() for ln in rows if ln.startswith("| 1 |")]
    assert parts == [*mixer_parts.PARTS, "whole less the parts", "**whole call**"]
    assert any(ln.startswith("| 2 | 2 | **whole call**") for ln in rows)
