"""Shared helpers of the export routes: argument checking, model and example resolution,
machine and version information."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from vimc.machine import cpu_name, device_name, versions  # noqa: F401  (re-exported for export/)
from vimc.resolve import load_model

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def parse_dtype(dtype, *, arg: str = "dtype") -> torch.dtype:
    """A torch floating dtype from a torch.dtype or a name (float32, bfloat16, float16, ...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"{arg} must be one of {', '.join(DTYPE_NAMES)}, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        try:
            return DTYPES[dtype.lower().removeprefix("torch.")]
        except KeyError:
            raise ValueError(
                f"{arg} must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}"
            ) from None
    raise TypeError(
        f"{arg} must be a torch.dtype or a string such as 'float32', got {type(dtype).__name__}"
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_batch(batch, *, arg: str = "batch") -> int:
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"{arg} must be an int, got {type(batch).__name__}")
    if batch < 1:
        raise ValueError(f"{arg} must be >= 1, got {batch}")
    return batch


def resolve_model(model, *, checkpoint=None, img_size=None, dtype=None, **overrides) -> nn.Module:
    """An nn.Module in eval mode: ``model`` itself, or for a registered name (``list_models()``)
    the model ``vimc.resolve.load_model`` gives: ``checkpoint``'s weights, else the built-in
    ones where the variant ships them (``vim_digits``: exporting it exports what ``vimc
    predict`` runs), else random initialization (never a download)."""
    if isinstance(model, str):
        kw = dict(overrides)
        if img_size is not None:
            kw["img_size"] = img_size
        # overrides that change shapes (depth, embed_dim, ...) cannot take built-in weights
        m = load_model(model, checkpoint, pretrained="auto" if not overrides else False, **kw)
    elif isinstance(model, nn.Module):
        if checkpoint is not None or img_size is not None or overrides:
            raise ValueError(
                "checkpoint/img_size/overrides apply to a model name only; got an nn.Module"
            )
        m = model
    else:
        raise TypeError(
            f"model must be an nn.Module or a model name (vimc.list_models()), "
            f"got {type(model).__name__}"
        )
    m = m.eval()
    if dtype is not None:
        m = m.to(parse_dtype(dtype))
    return m


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects, from ``pretrained_cfg`` (timm convention)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    if size is None:
        raise ValueError(
            "cannot tell the model's input size (no pretrained_cfg['input_size']); "
            "pass example= (a (B, C, H, W) tensor)"
        )
    return tuple(int(s) for s in size)


def model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def example_input(model: nn.Module, example=None, *, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """``example`` checked, or a seeded normal (batch, C, H, W) tensor in the model's dtype and
    device."""
    if example is not None:
        if not isinstance(example, torch.Tensor):
            raise TypeError(f"example must be a torch.Tensor, got {type(example).__name__}")
        if example.dim() != 4:
            raise ValueError(
                f"example must be a (B, C, H, W) tensor, got shape {tuple(example.shape)}"
            )
        return example
    check_batch(batch)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *input_size(model), generator=g)
    return x.to(device=model_device(model), dtype=model_dtype(model))


def batch_dim(example: torch.Tensor, dynamic_batch: bool, max_batch: int = 4096):
    """dynamic_shapes for a single positional image input."""
    if not dynamic_batch:
        return None
    return ({0: torch.export.Dim("batch", min=1, max=max_batch)},)


def export_example(example: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    """torch.export specializes a size-1 dimension; trace a dynamic batch with 2 rows."""
    if dynamic_batch and example.shape[0] == 1:
        return example.expand(2, *example.shape[1:]).contiguous()
    return example


def check_names(values: Sequence[str], known: Sequence[str], *, arg: str) -> list[str]:
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    values = list(values)
    bad = [v for v in values if v not in known]
    if bad:
        raise ValueError(
            f"{arg}: unknown {', '.join(map(repr, bad))}; choose from {', '.join(known)}"
        )
    if not values:
        raise ValueError(f"{arg} must name at least one of {', '.join(known)}")
    return values


# torch's export machinery is process-global: two threads inside torch.export, the ONNX
# exporter's decompositions or the AOTInductor packager at once fail in it ("ProxyTorchDispatchMode
# slot already occupied", symbols "not tracked with proxy": tests/export). vimc's routes run
# those steps under this lock, one export at a time per process.
TORCH_EXPORT_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet_torch_export():
    """Silence two messages torch prints on every export that say nothing about the user's
    model: a FutureWarning from torch's own pytree code (``isinstance(treespec, LeafSpec)``,
    raised while torch copies a program) and the ONNX exporter's log lines about torchvision
    ops it skips when torchvision is absent. Everything else still shows. With the ``vimc``
    logger at INFO or below (``vimc -v``), nothing is silenced."""
    if logging.getLogger("vimc").isEnabledFor(logging.INFO):
        yield
        return
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            log.setLevel(level)
