"""The memory-safety job's parts, in the normal suite and without the sanitizers (which
tests/sanitize/run.py preloads only into its own processes): the fuzz loop runs and counts its
cases, and the sanitizer build is selected and guarded as _cbuild.py says."""

from __future__ import annotations

import pytest

from . import fuzz, run


def test_fuzz_loop_runs_every_action():
    counts = fuzz.run(seconds=120, seed=0, max_cases=60)
    assert sum(counts.values()) == 60
    assert set(counts) == set(fuzz.ACTIONS), (
        f"actions never drawn: {set(fuzz.ACTIONS) - set(counts)}"
    )


def test_fuzz_main_prints_its_case_count(capsys):
    assert fuzz.main(["--seconds", "60", "--cases", "3", "--seed", "1"]) == 0
    assert "fuzz: 3 cases in " in capsys.readouterr().out


def test_sanitizer_build_is_separate_and_needs_the_runtime(monkeypatch, tmp_path):
    from vimc.ops.selective_scan import _cbuild

    monkeypatch.setenv("VIMC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("VIMC_SANITIZE", raising=False)
    assert _cbuild.cache_dir() == tmp_path
    monkeypatch.setenv("VIMC_SANITIZE", "1")
    assert _cbuild.sanitizing() and _cbuild.cache_dir() == tmp_path / "sanitize"
    monkeypatch.setattr(_cbuild, "_asan_loaded", lambda: False)
    with pytest.raises(RuntimeError, match="needs the ASan runtime preloaded: LD_PRELOAD="):
        _cbuild.build("cpu_kernel.c", "vimc_scan", [[]])
    assert not any(tmp_path.rglob("*.so"))


def test_runner_finds_the_sanitizer_runtime():
    if run.compiler_library("libasan.so") is None:
        pytest.skip("this compiler has no ASan runtime")
    env = run.sanitized_env(["/lib/libasan.so", "/lib/libstdc++.so.6"], run.ROOT)
    assert env["LD_PRELOAD"].startswith("/lib/libasan.so /lib/libstdc++.so.6")
    assert "detect_leaks=0" in env["ASAN_OPTIONS"] and env["VIMC_SANITIZE"] == "1"
    assert "halt_on_error=1" in env["UBSAN_OPTIONS"]
