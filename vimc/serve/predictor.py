"""Image bytes -> tensor -> top-k JSON: the one inference path behind ``vimc serve`` and
``vimc predict-folder``.

The process that starts the job (the *driver*) resolves the user's model once
(:func:`load_served_model`) and packs it into a :class:`Bundle`: the model itself for the
``eager`` and ``compiled`` backends, or the bytes of an exported file for ``aoti`` (a ``.pt2``
package) and ``onnxruntime`` (an ``.onnx`` file). Ray ships the bundle to every replica or
actor, on this machine or another, so no worker needs the checkpoint path, the Hub or the
export tools' time: each one builds a :class:`Predictor` from it and only runs it.

Preprocessing is ``vimc predict``'s: a Pillow image through ``vimc.data.preprocess`` per the
model's ``pretrained_cfg``; labels come from ``vimc.imagenet_classes.class_names``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vimc.data import decode_image, preprocess
from vimc.heap import keep_freed_memory
from vimc.imagenet_classes import class_names
from vimc.model import get_variant
from vimc.resolve import DEFAULT_MODEL, check_model_name, load_model

BACKENDS = ("eager", "compiled", "aoti", "onnxruntime")
DEFAULT_TOPK = 5


# ---------------------------------------------------------------------------------------------
# the driver side: which model, and what travels to the workers
# ---------------------------------------------------------------------------------------------


def load_served_model(
    name: str | None = None,
    checkpoint=None,
    *,
    pretrained: bool = False,
    random_init: bool = False,
):
    """The model a user named, in eval mode, and a phrase saying where its weights came from.

    One weight source at most: ``checkpoint`` (an official .pth, vimc safetensors or
    ``hf-hub:OWNER/REPO/FILE``), ``pretrained`` (the official weights through the Hugging Face
    Hub cache, or the built-in ones) or ``random_init`` (for speed measurements only). With
    none, a model that ships built-in weights (``vim_digits``) uses them and any other is a
    ``ValueError`` (``load_model``'s ``pretrained="ask"``): serving random weights by accident
    would answer every request confidently and wrongly."""
    if sum(map(bool, (checkpoint, pretrained, random_init))) > 1:
        raise ValueError("pass at most one of --checkpoint, --pretrained and --random-init")
    if checkpoint is not None:
        return load_model(name, checkpoint), f"checkpoint {checkpoint}"
    name = check_model_name(name or DEFAULT_MODEL)
    if random_init:
        return load_model(name, pretrained=False), "random initialization"
    model = load_model(name, pretrained=True if pretrained else "ask")
    variant = get_variant(name)
    if variant.weights is not None:
        return model, "built-in weights"
    return model, f"hf-hub:{variant.hf_hub_id}/{variant.hf_hub_filename}"


@dataclass
class Bundle:
    """Everything a worker needs to classify images, picklable. ``module`` is set for the
    eager and compiled backends, ``artifact`` (the exported file's bytes) for the others."""

    model_name: str
    pretrained_cfg: dict
    labels: list[str]
    weights: str
    backend: str
    module: torch.nn.Module | None = None
    artifact: bytes | None = field(default=None, repr=False)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.pretrained_cfg["input_size"])

    def describe(self) -> dict:
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "num_classes": len(self.labels),
            "backend": self.backend,
            "weights": self.weights,
        }


def build_bundle(model, backend: str = "eager", *, weights: str = "") -> Bundle:
    """Pack ``model`` for ``backend``; ``aoti`` and ``onnxruntime`` export it here, once,
    with a dynamic batch axis so that any batch ``@serve.batch`` forms runs."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    model = model.eval()
    cfg = dict(model.pretrained_cfg)
    labels = class_names(model.name, model.num_classes)
    bundle = Bundle(model.name, cfg, labels, weights, backend)
    if backend in ("eager", "compiled"):
        bundle.module = model
        return bundle
    example = torch.zeros(2, *bundle.input_size)
    with tempfile.TemporaryDirectory(prefix="vimc-serve-") as tmp:
        if backend == "aoti":
            from vimc.export import to_aoti

            path = to_aoti(model, Path(tmp) / "model.pt2", example=example)
        else:
            from vimc.export import to_onnx

            path = to_onnx(model, Path(tmp) / "model.onnx", example=example)
        bundle.artifact = Path(path).read_bytes()
    return bundle


# ---------------------------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------------------------


class Predictor:
    """One worker's model: :meth:`decode` bytes to an input, :meth:`probabilities` of a batch,
    :meth:`top_k` as JSON-ready dicts. ``threads``: torch's (or ONNX Runtime's) thread count
    in this process."""

    def __init__(self, bundle: Bundle, *, threads: int | None = None):
        self.bundle = bundle
        self.cfg = bundle.pretrained_cfg
        self.labels = bundle.labels
        self._tmp = None  # the exported file's folder, alive as long as the runtime reading it
        keep_freed_memory()  # a worker of vimc's own: freed memory stays for the next batch
        if threads:
            torch.set_num_threads(threads)
        self._run = self._make_runner(bundle, threads)

    def _make_runner(self, bundle: Bundle, threads: int | None):
        if bundle.backend == "eager":
            return bundle.module
        if bundle.backend == "compiled":
            return torch.compile(bundle.module)
        self._tmp = tempfile.TemporaryDirectory(prefix="vimc-serve-")
        if bundle.backend == "aoti":
            from vimc.export import load_aoti

            path = Path(self._tmp.name) / "model.pt2"
            path.write_bytes(bundle.artifact)
            return load_aoti(path)
        from vimc.export.onnx import onnxruntime_session, run_onnxruntime

        path = Path(self._tmp.name) / "model.onnx"
        path.write_bytes(bundle.artifact)
        # idle ONNX Runtime threads would otherwise spin between requests, taking the cores
        # the HTTP side and the next batch's decoding need
        session = onnxruntime_session(path, threads=threads, spinning=False)
        return lambda x: run_onnxruntime(session, x)

    def decode(self, data: bytes) -> torch.Tensor:
        """Image bytes -> a preprocessed input (C, H, W); :class:`ImageError` if unreadable."""
        return preprocess(decode_image(data), self.cfg)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """A batch (B, C, H, W) -> class probabilities (B, num_classes), float32."""
        with torch.inference_mode():
            return self._run(x).float().softmax(-1)

    def warm_up(self, max_batch: int = 1) -> None:
        """Run the batch sizes a server sees before it takes traffic: one-time costs
        (compilation, lazy loading, thread pools) are paid here, not by the first users.
        ``compiled`` sees 1, 2 and ``max_batch``: the second size makes torch.compile trace a
        graph with a symbolic batch, which then serves every size."""
        for b in sorted({1, min(2, max_batch), max_batch}):
            self.probabilities(torch.zeros(b, *self.bundle.input_size))

    def top_k(self, probs: torch.Tensor, k: int = DEFAULT_TOPK) -> list[dict]:
        """One image's probabilities -> ``[{"label", "index", "score"}]``, best first."""
        k = max(1, min(int(k), probs.shape[-1]))
        scores, idx = probs.topk(k)
        return [
            {"label": self.labels[i], "index": i, "score": s}
            for s, i in zip(scores.tolist(), idx.tolist())
        ]

    def classify(self, images: list[torch.Tensor], k: int = DEFAULT_TOPK) -> list[list[dict]]:
        """Preprocessed inputs -> their top-k lists, in one batch."""
        probs = self.probabilities(torch.stack(images))
        return [self.top_k(p, k) for p in probs]


__all__ = [
    "BACKENDS",
    "DEFAULT_TOPK",
    "Bundle",
    "Predictor",
    "build_bundle",
    "decode_image",
    "load_served_model",
]
