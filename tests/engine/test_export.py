"""MIB / EAP-IG JSON export of scored graphs."""

import json

import pytest
import torch

from eapbench.engine.export import from_mib_json, mib_edge_name, to_mib_json
from eapbench.engine.graph import ResidualGraph


def test_edge_names_follow_eap_ig():
    assert mib_edge_name("input", "a0<q>") == "input->a0.h0<q>"
    assert mib_edge_name("a0", "m0") == "a0.h0->m0"
    assert mib_edge_name("m1", "logits") == "m1->logits"
    assert mib_edge_name("a0", "a1") == "a0.h0->a1.h0"  # block granularity


@pytest.mark.parametrize("gran", ["qkv", "block"])
def test_roundtrip_and_layout(tmp_path, gran):
    g = ResidualGraph(3, gran, "llama")
    scores = torch.randn(g.n_src, g.n_dst) * g.edge_mask
    d = to_mib_json(g, scores, top_n=5, d_model=64, path=tmp_path / "c.json")
    on_disk = json.loads((tmp_path / "c.json").read_text())
    assert on_disk == d and set(d) == {"cfg", "nodes", "edges"}
    assert len(d["edges"]) == g.n_edges
    assert sum(e["in_graph"] for e in d["edges"].values()) == 5
    assert {"input", "a0.h0", "m2", "logits"} <= set(d["nodes"])
    g2, s2, ig = from_mib_json(tmp_path / "c.json")
    assert g2 == g and torch.equal(s2, scores) and int(ig.sum()) == 5
    top = scores.abs().flatten().topk(5).indices
    assert ig.flatten()[top].all()
    for name, e in d["edges"].items():  # an in-graph edge's end nodes are in the graph
        if e["in_graph"]:
            u, v = name.split("->")
            assert d["nodes"][u]["in_graph"] and d["nodes"][v.split("<")[0]]["in_graph"]


def test_rejects_per_sample_scores():
    g = ResidualGraph(2)
    with pytest.raises(ValueError, match="mean"):
        to_mib_json(g, torch.zeros(4, g.n_src, g.n_dst))


def test_head_granularity_exports_real_heads(tmp_path):
    """Per-head nodes a{l}.h{i}, edges a0.h1->a1.h2<k>, cfg n_heads = the real count; read back exactly."""
    g = ResidualGraph(3, "head", "qwen2", n_heads=4)
    scores = torch.randn(g.n_src, g.n_dst) * g.edge_mask
    d = to_mib_json(g, scores, top_n=7, d_model=32, path=tmp_path / "h.json")
    assert d["cfg"]["n_heads"] == 4 and d["cfg"]["granularity"] == "head"
    assert len(d["edges"]) == g.n_edges and set(d["edges"]) == set(g.edge_names())
    assert {"a0.h1->a1.h2<k>", "a1.h3->m1", "input->a0.h0<q>", "a2.h3->logits"} <= set(d["edges"])
    assert set(d["nodes"]) == {"input", "logits", *(f"a{l}.h{i}" for l in range(3) for i in range(4)),
                               *(f"m{l}" for l in range(3))}
    assert mib_edge_name("a0.h1", "a1.h2<v>") == "a0.h1->a1.h2<v>"
    g2, s2, ig = from_mib_json(tmp_path / "h.json")
    assert g2 == g and torch.equal(s2, scores) and int(ig.sum()) == 7
    assert ig.flatten()[scores.abs().flatten().topk(7).indices].all()
    for name, e in d["edges"].items():
        if e["in_graph"]:
            u, v = name.split("->")
            assert d["nodes"][u]["in_graph"] and d["nodes"][v.split("<")[0]]["in_graph"]
