"""ResidualGraph: names, counts and edge mask (SPEC §2)."""

import pytest
import torch
from hypothesis import given, strategies as st

from eapbench.engine.graph import ResidualGraph


@pytest.mark.parametrize("L, edges", [(28, 3221), (30, 3691), (32, 4193)])
def test_edge_counts_match_spec(L, edges):
    g = ResidualGraph(L)
    assert g.n_edges == edges == 4 * L * L + 3 * L + 1
    assert (g.n_src, g.n_dst) == (2 * L + 1, 4 * L + 1)


def test_names_follow_mib_convention():
    g = ResidualGraph(2)
    assert g.sources == ["input", "a0", "m0", "a1", "m1"]
    assert g.destinations == ["a0<q>", "a0<k>", "a0<v>", "m0", "a1<q>", "a1<k>", "a1<v>", "m1", "logits"]
    b = ResidualGraph(2, "block")
    assert b.destinations == ["a0", "m0", "a1", "m1", "logits"]
    assert "a0->a1<q>" in g.edge_names() and "m1->logits" in g.edge_names()
    assert "a1->a1<q>" not in g.edge_names() and "a0->m0" in g.edge_names()


@given(st.integers(1, 12), st.sampled_from(["qkv", "block"]))
def test_edge_iff_written_before_read(L, gran):
    g = ResidualGraph(L, gran)
    src_pos = {"input": -1, **{f"a{l}": 2 * l for l in range(L)}, **{f"m{l}": 2 * l + 1 for l in range(L)}}

    def read_pos(name):  # position in forward order at which the destination reads
        if name == "logits":
            return 2 * L
        layer = int(name[1:].split("<")[0])
        return 2 * layer + (1 if name.startswith("m") else 0)

    expected = torch.tensor([[src_pos[u] < read_pos(v) for v in g.destinations] for u in g.sources])
    assert torch.equal(g.edge_mask, expected)
    assert len(g.edge_names()) == g.n_edges


@given(st.integers(1, 6))
def test_to_block_sums_qkv_columns(L):
    g = ResidualGraph(L)
    s = torch.randn(3, g.n_src, g.n_dst)
    b = g.to_block(s)
    gb = ResidualGraph(L, "block")
    assert b.shape == (3, gb.n_src, gb.n_dst)
    for l in range(L):
        assert torch.allclose(b[..., gb.attn_dst(l)], s[..., 4 * l:4 * l + 3].sum(-1))
        assert torch.equal(b[..., gb.mlp_dst(l)], s[..., g.mlp_dst(l)])
    assert torch.equal(b[..., -1], s[..., -1])


def test_bad_granularity_and_layers():
    with pytest.raises(ValueError, match="granularity"):
        ResidualGraph(2, "neuron")
    with pytest.raises(ValueError, match="at least one layer"):
        ResidualGraph(0)
