"""The graph builder the lowerings write nodes with, and the walks over an ONNX graph they and
the tests need (every node including subgraphs', what a node reads, a topological order).

onnx is imported inside the functions: ``vimc.export`` imports this package, and onnx is an
optional dependency (the ``onnx`` extra).
"""

from __future__ import annotations

import heapq
import itertools

INT64_MAX = 2**63 - 1  # "to the end" for Slice
STANDARD_DOMAINS = ("", "ai.onnx")


class Builder:
    """Appends nodes to ``nodes``, each output and node named uniquely under ``prefix`` (the
    placeholder's name, so a lowered scan's nodes are easy to find in the graph)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes = []
        self._ids = itertools.count()

    def name(self, hint: str) -> str:
        return f"{self.prefix}/{hint}_{next(self._ids)}"

    def __call__(self, op_type: str, inputs, hint: str | None = None, n_out: int = 1, **attrs):
        """Append an ``op_type`` node reading ``inputs``; returns its output name (a list of
        ``n_out`` names when there are several)."""
        from onnx import helper

        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs)
        )
        return outs[0] if n_out == 1 else outs

    def const(self, values, hint="c", dtype="int64"):
        import numpy as np
        from onnx import helper, numpy_helper

        out = self.name(hint)
        t = numpy_helper.from_array(np.asarray(values, dtype=dtype), out)
        self.nodes.append(
            helper.make_node("Constant", [], [out], name=self.name("Constant"), value=t)
        )
        return out

    def f32(self, t: str) -> str:
        from onnx import TensorProto

        return self("Cast", [t], "f32", to=TensorProto.FLOAT)

    def shape(self, t: str, start: int, end: int | None = None, hint: str = "shape") -> str:
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        return self("Shape", [t], hint, **attrs)


def iter_nodes(graph):
    """Every node of ``graph``, recursing into subgraphs (Loop, Scan, If bodies)."""
    from onnx import AttributeProto

    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                yield from iter_nodes(a.g)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from iter_nodes(g)


def nonstandard_nodes(model_proto) -> list[str]:
    """``domain::op_type`` of every node outside the standard ``ai.onnx`` domain, recursively
    (functions of the model included)."""
    bad = [
        f"{n.domain}::{n.op_type}"
        for n in iter_nodes(model_proto.graph)
        if n.domain not in STANDARD_DOMAINS
    ]
    for f in model_proto.functions:
        bad += [f"{n.domain}::{n.op_type}" for n in f.node if n.domain not in STANDARD_DOMAINS]
    return bad


def consumed(node) -> set[str]:
    """Every name ``node`` reads: its inputs and what its subgraphs read from outside."""
    from onnx import AttributeProto

    names = {i for i in node.input if i}
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            names |= _outer_names(a.g)
        elif a.type == AttributeProto.GRAPHS:
            for g in a.graphs:
                names |= _outer_names(g)
    return names


def _outer_names(graph) -> set[str]:
    """Names a (sub)graph reads from its enclosing scope."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used = set()
    for n in graph.node:
        used |= consumed(n)
        local |= set(n.output)
    return used - local


def topological(nodes: list) -> list:
    """``nodes`` reordered so that every node follows the producers of what it reads, keeping
    the given order where it is free."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, n in enumerate(nodes):
        deps = {producer[x] for x in consumed(n) if x in producer} - {i}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise RuntimeError("lowering the scans left a cycle in the graph")
    return order
