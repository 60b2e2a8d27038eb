"""Exports under bad targets, interruption and concurrency, one table plus the two races:
``vimc export`` exits 2 naming OUT for a target it cannot write, leaves OUT as it was when
interrupted at any step, and several exports to one OUT each validate the bytes they wrote."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import onnx
import pytest
from vimc.export import cli as export_cli

from vimc import cli

# where OUT points, and the fragment of the one-line error (exit 2, before any slow work)
ROWS = [
    ("missing-parent", lambda d: d / "no" / "such" / "m.onnx", "does not exist"),
    ("parent-is-a-file", lambda d: d / "file.txt" / "m.onnx", "is not a directory"),
    ("out-is-a-directory", lambda d: d, "must name a file, got a directory"),
    ("read-only-filesystem", lambda d: "/sys/vimc-test.onnx", "is not writable"),
]


def _leftovers(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp" in p.name or ".probe" in p.name)


@pytest.mark.parametrize("kind, out, fragment", ROWS, ids=[r[0] for r in ROWS])
def test_unwritable_targets_exit_2(kind, out, fragment, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    code = cli.main(["export", "onnx", "vim_digits", str(out(tmp_path)), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vimc export: error: OUT") and fragment in err, err
    assert "Traceback" not in err and _leftovers(tmp_path) == []


@pytest.mark.parametrize("step", ["export", "validate"])
def test_interrupt_at_any_step_leaves_out_as_it_was(step, tmp_path, capsys, monkeypatch):
    """Ctrl-C during the export or during validation: exit 130, 'nothing was written' is true
    (an existing OUT keeps its bytes), and no temporary file is left behind."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous export")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_cli, "_export" if step == "export" else "_validate", interrupt)
    code = cli.main(["export", "onnx", "vim_digits", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130 and "nothing was written to OUT" in err
    assert out.read_bytes() == b"the previous export"
    assert _leftovers(tmp_path) == []


def test_failed_validation_writes_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.onnx"
    real = export_cli._validate

    def failing(*args, **kwargs):
        report = real(*args, **kwargs)
        for row in report.rows:
            row.passed = False
        return report

    monkeypatch.setattr(export_cli, "_validate", failing)
    code = cli.main(["export", "onnx", "vim_digits", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "validation failed" in err and "nothing was written" in err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.slow  # three exports
def test_concurrent_exports_to_one_path_each_validate_their_own_bytes(tmp_path, monkeypatch):
    """Three exports to one OUT at once (the paired, step and plugin lowerings, so their files
    differ): each validates the file it wrote (never the path another may have replaced), all
    succeed, and OUT ends as one complete, valid file."""
    out = tmp_path / "m.onnx"
    seen = []
    real = export_cli._validate

    def recording(model, fmt, args, dtype, path):
        seen.append((args.scan, os.path.basename(path)))
        return real(model, fmt, args, dtype, path)

    monkeypatch.setattr(export_cli, "_validate", recording)
    scans = ["paired", "step", "plugin"]
    argv = [["export", "onnx", "vim_digits", str(out), "--quiet", "--scan", s] for s in scans]
    with ThreadPoolExecutor(max_workers=3) as pool:
        codes = list(pool.map(cli.main, argv))
    assert codes == [0, 0, 0]
    assert sorted(s for s, _ in seen) == sorted(scans)
    assert all(name != out.name and ".tmp" in name for _, name in seen)  # their own files
    assert len({name for _, name in seen}) == 3
    onnx.checker.check_model(onnx.load(str(out)))
    assert _leftovers(tmp_path) == []
