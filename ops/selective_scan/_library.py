"""Registration of vimc's ops in the ``vimc`` torch.library namespace.

A plain ``torch.library.Library`` definition instead of ``@torch.library.custom_op``: custom_op
runs every call through a dynamo-disable wrapper and an output-aliasing check, a per-call cost
a Vim forward pays once or twice per layer (benchmarks/bidirectional.py times both
registrations: its ``dispatch`` rows, results in benchmarks/results/bidirectional-*.md). The kernels
here always return fresh tensors, so the aliasing check has nothing to find. The schema is
inferred from the Python signature, as custom_op does; fake kernels and autograd are
registered with the same ``torch.library`` functions.
"""

from __future__ import annotations

import torch

LIB = torch.library.Library("vimc", "FRAGMENT")


def define(fn, name: str | None = None):
    """``vimc::<name>`` (default ``fn.__name__``) with ``fn`` as its kernel on every device
    (``fn`` picks the device's kernel itself) -> the op's default overload."""
    name = name or fn.__name__
    LIB.define(name + torch.library.infer_schema(fn, mutates_args=()))
    LIB.impl(name, fn, "CompositeExplicitAutograd")
    return getattr(torch.ops.vimc, name).default


def register_fake(*ops: torch._ops.OpOverload):
    """Decorator: the fake (meta) kernel of each of ``ops``."""

    def register(fn):
        for op in ops:
            torch.library.register_fake(op, fn, lib=LIB)
        return fn

    return register


def register_autograd(op: torch._ops.OpOverload, backward, setup_context) -> None:
    torch.library.register_autograd(op, backward, setup_context=setup_context, lib=LIB)
