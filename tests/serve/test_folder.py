"""`vimc predict-folder`: every image under a folder, recursively, into JSON Lines; unreadable
images as error rows; atomic, resumable output; the same rows from Ray Data (--ray)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.serve.conftest import check_usage_error, vimc_main
from vimc.serve.folder import predict_folder, read_results, write_results


@pytest.fixture
def folder(tmp_path, digit_pngs):
    """Twelve digits in two sub-folders, one broken PNG, one text file (not an image)."""
    root = tmp_path / "images"
    for i, path in enumerate(digit_pngs):
        sub = root / ("even" if i % 2 == 0 else "odd/deeper")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, sub / path.name)
    (root / "broken.png").write_bytes(b"\x89PNG truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def rows_of(out) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}


def check_rows(rows, eager_top5):
    """Every digit classified as local eager does it; the broken file an error row."""
    assert len(rows) == len(eager_top5) + 1
    assert "cannot read image" in rows["broken.png"]["error"]
    for path, row in rows.items():
        assert row["model"] == "vim_digits"
        if path == "broken.png":
            continue
        want = eager_top5[path.rsplit("/", 1)[-1]]
        assert [t["index"] for t in row["predictions"]] == [t["index"] for t in want]
        got_scores = [t["score"] for t in row["predictions"]]
        assert got_scores == pytest.approx([t["score"] for t in want], abs=1e-5)


def test_predict_folder_and_resume(folder, tmp_path, eager_top5, capsys):
    out = tmp_path / "preds.jsonl"
    argv = ["predict-folder", str(folder), "--out", str(out), "--batch-size", "5"]
    assert vimc_main(argv + ["--no-progress"]) == 0
    assert "12 classified, 1 unreadable, 0 already done (of 13 images)" in capsys.readouterr().out
    rows = rows_of(out)
    check_rows(rows, eager_top5)
    assert "odd/deeper/digit_01.png" in rows  # recursive, POSIX paths relative to DIR

    # a rerun classifies only what is new, and retries the error row
    shutil.copy(folder / "even" / "digit_00.png", folder / "new.png")
    assert vimc_main(argv) == 0
    assert "1 classified, 1 unreadable, 12 already done (of 14 images)" in capsys.readouterr().out
    rerun = rows_of(out)
    assert {p: r for p, r in rerun.items() if p != "new.png"} == rows
    # classified in another batch than its twin: equal up to the GEMMs' rounding, which
    # depends on the batch's size (MKL on AVX-512 Xeons picks other kernels for 1 row than 5)
    new, twin = rerun["new.png"]["predictions"], rows["even/digit_00.png"]["predictions"]
    assert [t["index"] for t in new] == [t["index"] for t in twin]
    assert [t["score"] for t in new] == pytest.approx([t["score"] for t in twin], abs=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_interrupted_run_keeps_its_finished_rows(folder, tmp_path, digits_bundle, monkeypatch):
    """Ctrl-C after the first batch: OUT holds that batch, complete; the rerun does the rest."""
    from vimc.serve.predictor import Predictor

    out, calls = tmp_path / "preds.jsonl", []
    classify = Predictor.classify

    def interrupted_after_one_batch(self, images, k):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return classify(self, images, k)

    monkeypatch.setattr(Predictor, "classify", interrupted_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(digits_bundle, folder, out, batch_size=4, progress=False)
    done = rows_of(out)  # the first batch: broken.png (sorted first) and three digits
    assert len(done) == 4 and sum("predictions" in r for r in done.values()) == 3
    monkeypatch.setattr(Predictor, "classify", classify)
    stats = predict_folder(digits_bundle, folder, out, batch_size=4, progress=False)
    assert stats == {"images": 13, "skipped": 3, "classified": 9, "errors": 1}
    assert len(rows_of(out)) == 13


def test_output_of_another_model_is_refused(tmp_path):
    out = tmp_path / "preds.jsonl"
    write_results(out, {"a.png": {"path": "a.png", "model": "vim_tiny", "predictions": []}})
    with pytest.raises(ValueError, match="holds predictions of model 'vim_tiny'"):
        read_results(out, "vim_digits")
    out.write_text("not json\n")
    with pytest.raises(ValueError, match="not a predict-folder row"):
        read_results(out, "vim_digits")


def test_bad_usage(tmp_path, capsys):
    out = str(tmp_path / "o")
    check_usage_error(
        ["predict-folder", str(tmp_path / "missing"), "--out", out], "not a folder", capsys
    )
    check_usage_error(
        ["predict-folder", str(tmp_path), "--out", out, "--actors", "2"], "go with --ray", capsys
    )
    check_usage_error(
        ["predict-folder", str(tmp_path), "--out", out, "-m", "vim_tiny"],
        "no built-in weights",
        capsys,
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray's own options
def test_ray_data_resumes_and_matches_local(ray_session, folder, tmp_path, eager_top5, capsys):
    """One Ray Data run (two actors, one model each) over a half-done output file: it
    classifies what is missing, retries the broken file, and leaves the rows local eager
    gives."""
    out = tmp_path / "preds.jsonl"
    half = {f"even/digit_{i:02d}.png" for i in range(0, 12, 2)}
    predict_folder_local = ["predict-folder", str(folder), "--out", str(out), "--no-progress"]
    assert vimc_main(predict_folder_local) == 0
    write_results(out, {p: r for p, r in rows_of(out).items() if p in half or p == "broken.png"})
    capsys.readouterr()
    argv = ["predict-folder", str(folder), "--out", str(out), "--ray", "--actors", "2"]
    assert vimc_main(argv + ["--batch-size", "2", "--no-progress"]) == 0
    assert "6 classified, 1 unreadable, 6 already done (of 13 images)" in capsys.readouterr().out
    check_rows(rows_of(out), eager_top5)
