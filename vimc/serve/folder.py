"""``vimc predict-folder``: classify every image under a folder into a JSON Lines file.

One line per image, keyed by its path relative to the folder (POSIX separators)::

    {"path": "cats/1.jpg", "model": "vim_tiny", "predictions": [{"label", "index", "score"}, ...]}
    {"path": "broken.png", "model": "vim_tiny", "error": "cannot read image: ..."}

An image is any file with one of ``vimc.data.IMAGE_SUFFIXES``; one that cannot be decoded
is an error row, not a crash. The output file is only ever replaced whole (a temporary
file beside it, then ``os.replace``): at the end, every ``COMMIT_EVERY_S`` seconds, and when
the run stops on an error or Ctrl-C. So ``OUT`` is always a complete file, and a rerun
skips the images it already classified (it retries the error rows: a file may have been
fixed). Rows of another model in ``OUT`` are refused rather than mixed.

Two engines: this process, in batches (:func:`classify_files`); or with ``ray=True`` Ray
Data, ``map_batches`` over the paths with a pool of actors that each load the model once
(:class:`FolderActor`). On a cluster every node must see the folder at the same path (a
shared filesystem): actors read the files themselves, so images never pass through here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from vimc.data import IMAGE_SUFFIXES, ImageError
from vimc.serve.predictor import DEFAULT_TOPK, Bundle, Predictor

COMMIT_EVERY_S = 30.0


# ---------------------------------------------------------------------------------------------
# the folder and the output file
# ---------------------------------------------------------------------------------------------


def list_images(root) -> list[str]:
    """Every image file under ``root`` (recursively), relative POSIX paths, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"not a folder: {root}")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def read_results(out, model_name: str) -> dict[str, dict]:
    """The rows of an earlier run's ``out`` by path ({} if there is none). A ``ValueError``
    if they come from another model."""
    out = Path(out)
    if not out.exists():
        return {}
    rows = {}
    for n, line in enumerate(out.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path = row["path"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{out}:{n}: not a predict-folder row; use another --out") from None
        if row.get("model") != model_name:
            raise ValueError(
                f"{out} holds predictions of model {row.get('model')!r}, not {model_name!r}; "
                f"use another --out"
            )
        rows[path] = row
    return rows


def write_results(out, rows: dict[str, dict]) -> None:
    """Replace ``out`` with ``rows`` (sorted by path) in one step: a temporary file in the
    same folder, flushed to disk, then ``os.replace``, so no reader or crash sees half."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            for path in sorted(rows):
                f.write(json.dumps(rows[path]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# classification, shared by both engines
# ---------------------------------------------------------------------------------------------


def classify_files(predictor: Predictor, root, paths: list[str], topk: int) -> list[dict]:
    """Rows for ``paths`` (relative to ``root``): the readable images as one batch, an error
    row for each unreadable one."""
    model = predictor.bundle.model_name
    rows, images, ok = [], [], []
    for rel in paths:
        try:
            images.append(predictor.decode(Path(root, rel).read_bytes()))
            ok.append(rel)
        except (ImageError, OSError) as exc:
            rows.append({"path": rel, "model": model, "error": str(exc)})
    if images:
        for rel, top in zip(ok, predictor.classify(images, topk)):
            rows.append({"path": rel, "model": model, "predictions": top})
    return rows


def _local_batches(bundle, root, todo, batch_size, topk, threads) -> Iterator[list[dict]]:
    predictor = Predictor(bundle, threads=threads)
    for i in range(0, len(todo), batch_size):
        yield classify_files(predictor, root, todo[i : i + batch_size], topk)


class FolderActor:
    """Ray Data's callable class: one model per actor, built once, then one call per batch of
    paths. Rows travel back as JSON strings, one column of any shape of row."""

    def __init__(self, bundle: Bundle, root: str, topk: int, threads: int):
        self.predictor = Predictor(bundle, threads=threads)
        self.root, self.topk = root, topk

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows = classify_files(self.predictor, self.root, [str(p) for p in batch["path"]], self.topk)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object)}


def _ray_batches(bundle, root, todo, batch_size, topk, actors, actor_cpus) -> Iterator[list]:
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts images; Ray's would interleave with it
    ctx.print_on_execution_start = False
    # ... and not a warning that says they are off, every run
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ds = ray.data.from_items([{"path": p} for p in todo])
    ds = ds.map_batches(
        FolderActor,
        fn_constructor_kwargs={
            "bundle": bundle,  # Ray Data keeps constructor arguments in the object store
            "root": str(Path(root).resolve()),
            "topk": topk,
            "threads": max(1, int(actor_cpus)),
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),  # a fixed pool: one model each
        num_cpus=actor_cpus,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield [json.loads(r) for r in batch["row"]]


# ---------------------------------------------------------------------------------------------
# the command's work
# ---------------------------------------------------------------------------------------------


def predict_folder(
    bundle: Bundle,
    root,
    out,
    *,
    batch_size: int = 32,
    topk: int = DEFAULT_TOPK,
    use_ray: bool = False,
    actors: int = 1,
    actor_cpus: float = 1.0,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Classify the images under ``root`` not yet in ``out`` and write ``out``. With
    ``use_ray``, on the connected Ray cluster: ``actors`` actors of ``actor_cpus`` CPUs each.
    Returns counts: ``images`` found, ``skipped`` (already in ``out``), ``classified``,
    ``errors``."""
    from tqdm import tqdm

    paths = list_images(root)
    rows = read_results(out, bundle.model_name)
    todo = [p for p in paths if "predictions" not in rows.get(p, {})]
    stats = {"images": len(paths), "skipped": len(paths) - len(todo), "classified": 0}
    stats["errors"] = 0
    if todo:
        batches: Iterable[list[dict]] = (
            _ray_batches(bundle, root, todo, batch_size, topk, actors, actor_cpus)
            if use_ray
            else _local_batches(bundle, root, todo, batch_size, topk, threads)
        )
        bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="predict-folder")
        last_commit = time.monotonic()
        try:
            for batch_rows in batches:
                for row in batch_rows:
                    rows[row["path"]] = row
                    stats["errors" if "error" in row else "classified"] += 1
                bar.update(len(batch_rows))
                if time.monotonic() - last_commit > COMMIT_EVERY_S:
                    write_results(out, rows)
                    last_commit = time.monotonic()
        finally:  # Ctrl-C or an error keeps every finished row: the rerun resumes from there
            bar.close()
            write_results(out, rows)
    elif not Path(out).exists():
        write_results(out, rows)  # an empty folder still leaves its (empty) result file
    return stats


__all__ = [
    "COMMIT_EVERY_S",
    "FolderActor",
    "classify_files",
    "list_images",
    "predict_folder",
    "read_results",
    "write_results",
]
