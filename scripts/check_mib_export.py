"""Check that eapbench's MIB export opens in EAP-IG's own ``Graph.from_json`` (issue 13), at qkv and head granularity.

    python scripts/check_mib_export.py PATH/TO/EAP-IG/src   (a checkout of github.com/hannamw/EAP-IG; needs einops)

EAP-IG imports TransformerLens for type checks only; where that is not installed, a stand-in module is
put on the path (Graph.from_json never touches a model). A tiny random Llama-family model is scored,
exported with :func:`eapbench.to_mib_json`, loaded by EAP-IG, and EAP-IG's score matrix and in-graph
flags are compared with eapbench's, cell by cell (EAP-IG's forward × backward layout is eapbench's
[n_src, n_dst] at head granularity). Prints one line per granularity; exit 1 on any difference.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import torch


def main(src: str) -> int:
    sys.path.insert(0, str(Path(src).resolve()))
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        stub = types.ModuleType("transformer_lens")
        stub.HookedTransformer = type("HookedTransformer", (), {})
        stub.HookedTransformerConfig = type("HookedTransformerConfig", (), {})
        sys.modules["transformer_lens"] = stub
    from eap.graph import Graph  # EAP-IG's

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_models import random_batch, tiny_model

    import eapbench

    bad = 0
    model = tiny_model("llama", n_layers=2, dtype=torch.float32)
    ids, mask = random_batch()
    for gran in ("qkv", "head"):
        graph = eapbench.ResidualGraph.from_model(model, granularity=gran)
        scores = eapbench.attribute(model, ids, mask, graph=graph).mean(0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "circuit.json"
            eapbench.to_mib_json(graph, scores, top_n=10, d_model=model.config.hidden_size, path=path)
            g = Graph.from_json(str(path))
        if gran == "head":  # the same layout: compare the matrices cell by cell
            same = torch.allclose(g.scores, scores * graph.edge_mask, atol=1e-7)
            flags = int(g.in_graph.sum())
        else:  # qkv is exported as one head per layer: compare edge by edge through the names
            same = all(abs(g.edges[name].score - float(scores[i, j])) < 1e-7 for name, (i, j) in
                       zip(_mib_names(graph), graph.edge_mask.nonzero().tolist()))
            flags = sum(e.in_graph for e in g.edges.values())
        print(f"{gran}: EAP-IG Graph.from_json loaded {len(g.edges)} edges, {len(g.nodes)} nodes "
              f"(n_heads {g.cfg['n_heads']}); scores equal: {same}; edges in graph: {flags} (exported top 10)")
        bad += (not same) or flags != 10 or len(g.edges) != graph.n_edges
    return 1 if bad else 0


def _mib_names(graph) -> list[str]:
    from eapbench.engine.export import mib_edge_name

    return [mib_edge_name(graph.sources[i], graph.destinations[j]) for i, j in graph.edge_mask.nonzero().tolist()]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
