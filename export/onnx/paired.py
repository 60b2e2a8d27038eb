"""The "paired" lowering (the default), and the pass that lowers every placeholder of a graph.

A Vim layer emits two placeholders that read the same ``z`` (its mixer gates both directions
with one silu(z)), one forward and one reverse. "paired" runs such a pair as one ONNX ``Scan``
with a state each, the reverse one through ``Scan``'s reverse directions (the loop of
step.py, with two halves): half the ``Scan`` iterations of "step", and one silu(z) for both.
A placeholder without such a partner is lowered as in "step".
"""

from __future__ import annotations

from .builder import consumed, topological
from .names import DEFAULT_SCAN, SCAN_DOMAIN, SCAN_OP, STANDARD_LOWERINGS, resolve_lowering
from .step import lower_scan_node, lower_step, resolve_unroll, signature


def _is_placeholder(node) -> bool:
    return node.domain == SCAN_DOMAIN and node.op_type == SCAN_OP


def _pairable(first, second) -> bool:
    """Two placeholders reading one z run as one Scan when they go in opposite directions
    (their inputs then have one length L: u, delta and z share a shape)."""
    return signature(first)[4] != signature(second)[4]


def _depends(nodes: list, later: int, earlier: int) -> bool:
    """Whether ``nodes[later]`` reads, directly or not, an output of ``nodes[earlier]``."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    seen, todo = set(), [later]
    while todo:
        for name in consumed(nodes[todo.pop()]):
            i = producer.get(name)
            if i == earlier:
                return True
            if i is not None and i not in seen:
                seen.add(i)
                todo.append(i)
    return False


def scan_pairs(graph) -> list[tuple[int, int]]:
    """Index pairs (earlier, later) of placeholder nodes of ``graph`` that can share a Scan:
    the only two placeholders reading one ``z`` (Vim's mixer gates both directions with the
    same z), in opposite directions, the later not depending on the earlier. Any other
    placeholder is lowered on its own."""
    nodes = list(graph.node)
    by_z = {}
    for i, n in enumerate(nodes):
        if _is_placeholder(n):
            z = signature(n)[0][6]
            if z:
                by_z.setdefault(z, []).append(i)
    return [
        (i, j)
        for i, j in (g for g in by_z.values() if len(g) == 2)
        if _pairable(nodes[i], nodes[j]) and not _depends(nodes, j, i)
    ]


def lower_scan_pair(first, second, unroll: int | None = None) -> list:
    """Standard-op nodes equivalent to two placeholders run as one ``Scan``, one state each:
    the two directions of a Vim layer. The caller checks that they pair (:func:`scan_pairs`)."""
    return lower_step([first, second], resolve_unroll(unroll))


def lower_scans(model_proto, lowering: str = DEFAULT_SCAN, unroll: int | None = None) -> int:
    """Replace every ``vimc.SelectiveScan`` node of ``model_proto`` (in place) by standard
    operators, with ``lowering`` "paired" or "step"; drop the ``vimc`` opset import. With
    "paired", the pairs of :func:`scan_pairs` share one Scan each. Returns the number of
    placeholders lowered."""
    lowering = resolve_lowering(lowering, arg="lowering", choices=STANDARD_LOWERINGS)
    resolve_unroll(unroll)
    nodes = list(model_proto.graph.node)
    pairs = scan_pairs(model_proto.graph) if lowering == "paired" else []
    partner = {j: i for i, j in pairs}  # the pair is lowered where its later node stood
    paired = set(partner.values())
    new, count = [], 0
    for i, n in enumerate(nodes):
        if i in partner:
            new.extend(lower_scan_pair(nodes[partner[i]], n, unroll))
            count += 2
        elif i in paired:
            continue
        elif _is_placeholder(n):
            new.extend(lower_scan_node(n, lowering, unroll))
            count += 1
        else:
            new.append(n)
    if pairs:  # what read the earlier node's outputs before the later one moves after it
        new = topological(new)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(new)
    keep = [o for o in model_proto.opset_import if o.domain != SCAN_DOMAIN]
    del model_proto.opset_import[:]
    model_proto.opset_import.extend(keep)
    return count
