"""torch.compile of the whole model: one graph (fullgraph, no breaks) forward and backward,
one compile for every batch size with dynamic shapes, compiled == eager."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import vimc

from ..tolerances import (
    MODEL_COMPILED_VS_EAGER,
    MODEL_COMPILED_VS_EAGER_GRAD,
    VIM_TINY_COMPILED_VS_EAGER,
)
from ._helpers import randomize_


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow  # an Inductor/AOT compile: tens of seconds with a cold cache
def test_compile_fullgraph_forward_backward(small_model):
    m = randomize_(small_model(), seed=4).train()
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 10, (2,))
    cnt = CompileCounterWithBackend("inductor")
    cm = torch.compile(m, backend=cnt, fullgraph=True)
    loss_c = torch.nn.functional.cross_entropy(cm(x), target)
    loss_c.backward()
    grads_c = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    loss_e = torch.nn.functional.cross_entropy(m(x), target)
    loss_e.backward()
    assert cnt.frame_count == 1 and not counters["graph_break"]
    torch.testing.assert_close(loss_c, loss_e, **MODEL_COMPILED_VS_EAGER)
    for n, p in m.named_parameters():
        torch.testing.assert_close(grads_c[n], p.grad, **MODEL_COMPILED_VS_EAGER_GRAD, msg=n)


@pytest.mark.slow  # an Inductor/AOT compile: tens of seconds with a cold cache
def test_compile_dynamic_batch_1_to_n_without_recompiling(small_model):
    """One graph for every batch size, batch 1 included: the batch dimension marked unbacked
    (dynamo would otherwise specialize size 1)."""
    m = randomize_(small_model(depth=1), seed=5).eval()
    cnt = CompileCounterWithBackend("inductor")
    cm = torch.compile(m, backend=cnt, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for batch in (2, 1, 5, 17):
            x = torch.randn(batch, 3, 32, 32)
            torch._dynamo.decorators.mark_unbacked(x, 0)
            torch.testing.assert_close(cm(x), m(x), **MODEL_COMPILED_VS_EAGER)
    assert cnt.frame_count == 1, f"recompiled: {cnt.frame_count} compiles"
    assert not counters["graph_break"]


@pytest.mark.slow  # an Inductor/AOT compile: tens of seconds with a cold cache
def test_compile_dynamic_true_serves_batches_without_recompiling(small_model):
    """Plain dynamic=True: one graph for batches >= 2 (the model adds no batch guards; the
    depthwise convs are pointwise ops, not a conv whose backend choice guards on the batch)."""
    m = small_model(depth=1).eval()
    cnt = CompileCounterWithBackend("aot_eager")
    cm = torch.compile(m, backend=cnt, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for batch in (2, 3, 5, 16, 33):
            x = torch.randn(batch, 3, 32, 32)
            torch.testing.assert_close(cm(x), m(x), **MODEL_COMPILED_VS_EAGER)
    assert cnt.frame_count == 1, f"recompiled: {cnt.frame_count} compiles"


@pytest.mark.slow
def test_compiled_vim_tiny_matches_eager():
    torch.manual_seed(0)
    m = randomize_(vimc.create_model("vim_tiny"), scale=0.3).eval()
    x = torch.randn(2, 3, 224, 224)
    cm = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        err = (cm(x) - m(x)).abs().max().item()
    assert err <= VIM_TINY_COMPILED_VS_EAGER and not counters["graph_break"]
