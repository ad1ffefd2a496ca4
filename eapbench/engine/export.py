"""Export scored graphs to the EAP-IG / MIB circuit JSON layout, and read them back.

EAP-IG's ``Graph.to_json`` writes ``{"cfg": {...}, "nodes": {name: {"in_graph": bool}},
"edges": {"u->v": {"score": float, "in_graph": bool}}}``, with attention nodes per head
(``a3.h5``) and q/k/v destinations as an edge suffix (``m0->a1.h5<q>``). At "qkv" and
"block" granularity eapbench scores whole attention blocks, so they are exported as one head
per layer (``a{l}.h0``, cfg ``n_heads = 1``), which EAP-IG's ``Graph.from_json`` accepts. At
"head" granularity the nodes are the real heads (``a{l}.h{i}``, edges ``a0.h1->a1.h3<k>``,
cfg ``n_heads`` = the model's query heads), eapbench's own names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..cache import atomic_write_text
from .graph import ResidualGraph

_ATTN = re.compile(r"^a(\d+)(\.h\d+)?(<[qkv]>)?$")


def _mib_node(name: str) -> str:
    """The MIB node of a source or destination name (``a1<q>`` → ``a1.h0``, ``a1.h3<q>`` → ``a1.h3``)."""
    m = _ATTN.match(name)
    return f"a{m.group(1)}{m.group(2) or '.h0'}" if m else name


def mib_edge_name(src: str, dst: str) -> str:
    """eapbench ``a0``/``a1<q>`` → MIB ``a0.h0->a1.h0<q>``; head names (``a0.h2->a1.h3<q>``) are kept."""
    m = _ATTN.match(dst)
    suffix = m.group(3) or "" if m else ""
    return f"{_mib_node(src)}->{_mib_node(dst)}{suffix}"


def to_mib_json(graph: ResidualGraph, scores: torch.Tensor, *, in_graph: torch.Tensor | None = None,
                top_n: int | None = None, d_model: int | None = None, path: str | Path | None = None
                ) -> dict[str, Any]:
    """One scored graph ([n_src, n_dst], e.g. the mean over samples) as an EAP-IG/MIB dict.

    ``in_graph`` (bool [n_src, n_dst]) or ``top_n`` (the n edges of largest |score|) marks the
    circuit; by default every real edge is in it. Written to ``path`` when given.
    """
    if scores.shape != (graph.n_src, graph.n_dst):
        raise ValueError(f"scores must be [n_src, n_dst] = {(graph.n_src, graph.n_dst)} for one graph, got "
                         f"{tuple(scores.shape)}; average per-sample scores first (scores.mean(0))")
    mask = graph.edge_mask
    if in_graph is None:
        in_graph = mask.clone()
        if top_n is not None:
            flat = scores.abs().masked_fill(~mask, -1).flatten()
            in_graph = torch.zeros_like(mask).flatten()
            in_graph[flat.topk(min(top_n, graph.n_edges)).indices] = True
            in_graph = in_graph.view_as(mask)
    in_graph = in_graph & mask
    src, dst = graph.sources, graph.destinations
    edges = {mib_edge_name(src[i], dst[j]): {"score": float(scores[i, j]), "in_graph": bool(in_graph[i, j])}
             for i, j in mask.nonzero().tolist()}
    used_src = in_graph.any(1)
    used_dst = in_graph.any(0)
    nodes = {_mib_node(n): {"in_graph": bool(used_src[i])} for i, n in enumerate(src)}
    for j, n in enumerate(dst):  # a destination a{l}<q> is the node a{l}.h0; logits has no outgoing edges
        node = _mib_node(n.split("<")[0])
        nodes[node] = {"in_graph": nodes.get(node, {"in_graph": False})["in_graph"] or bool(used_dst[j])}
    out = {"cfg": {"n_layers": graph.n_layers, "n_heads": graph.n_heads or 1, "parallel_attn_mlp": False,
                   "d_model": d_model, "granularity": graph.granularity, "model_type": graph.model_type},
           "nodes": nodes, "edges": edges}
    if path is not None:
        atomic_write_text(path, json.dumps(out))
    return out


def from_mib_json(data: dict[str, Any] | str | Path) -> tuple[ResidualGraph, torch.Tensor, torch.Tensor]:
    """Read an exported graph back: ``(graph, scores [n_src, n_dst], in_graph [n_src, n_dst])``."""
    if not isinstance(data, dict):
        data = json.loads(Path(data).read_text())
    cfg = data["cfg"]
    granularity = cfg.get("granularity", "qkv")
    graph = ResidualGraph(cfg["n_layers"], granularity, cfg.get("model_type"),
                          n_heads=cfg["n_heads"] if granularity == "head" else None)
    scores = torch.zeros(graph.n_src, graph.n_dst)
    in_graph = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    src, dst = graph.sources, graph.destinations
    for i, j in graph.edge_mask.nonzero().tolist():
        entry = data["edges"][mib_edge_name(src[i], dst[j])]
        scores[i, j] = entry["score"]
        in_graph[i, j] = entry["in_graph"]
    return graph, scores, in_graph
