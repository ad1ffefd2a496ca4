"""The residual graph of a decoder-only transformer (SPEC §2): node names and edge mask.

Sources write to the residual stream (``input``, ``a{l}``, ``m{l}``); destinations read
it (``a{l}<q>``, ``a{l}<k>``, ``a{l}<v>``, ``m{l}``, ``logits`` at "qkv" granularity;
``a{l}``, ``m{l}``, ``logits`` at "block"). Edge u → v exists iff u writes before v reads.
Names follow the EAP-IG / MIB convention. The graph knows a model only by its family,
layer count and (at "head" granularity) its number of query heads H.

At "head" granularity each attention source splits into its heads and each q/k/v
destination into one per query head. Per layer, sources are ``a{l}.h0 … a{l}.h{H-1}``
then ``m{l}``; destinations are grouped by branch, as in EAP-IG's graph:
``a{l}.h0<q> … a{l}.h{H-1}<q>``, the same for ``<k>`` and ``<v>``, then ``m{l}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRANULARITIES = ("qkv", "block", "head")
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class ResidualGraph:
    n_layers: int
    granularity: str = "qkv"
    model_type: str | None = None  # the family the graph was built for (checked by attribute())
    n_heads: int | None = None  # query heads per layer: set at "head" granularity only

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.n_layers < 1:
            raise ValueError(f"a residual graph needs at least one layer, got n_layers={self.n_layers}")
        if self.granularity == "head":
            if not isinstance(self.n_heads, int) or self.n_heads < 1:
                raise ValueError(f"'head' granularity needs n_heads >= 1 (the query heads per layer), got "
                                 f"{self.n_heads!r}; build it with ResidualGraph.from_model(model, 'head')")
        elif self.n_heads is not None:
            raise ValueError(f"n_heads is only meaningful at 'head' granularity, not {self.granularity!r}")

    @classmethod
    def from_model(cls, model: torch.nn.Module, granularity: str = "qkv") -> "ResidualGraph":
        from .architectures import arch_spec, decoder_layers

        spec = arch_spec(model)
        n_heads = int(model.config.num_attention_heads) if granularity == "head" else None
        return cls(n_layers=len(decoder_layers(model, spec)), granularity=granularity,
                   model_type=model.config.model_type, n_heads=n_heads)

    # ---- nodes -------------------------------------------------------------------------
    @property
    def _heads(self) -> range:
        return range(self.n_heads or 0)

    @property
    def sources(self) -> list[str]:
        names = ["input"]
        for l in range(self.n_layers):
            names += [f"a{l}.h{i}" for i in self._heads] if self.granularity == "head" else [f"a{l}"]
            names.append(f"m{l}")
        return names

    @property
    def destinations(self) -> list[str]:
        names: list[str] = []
        for l in range(self.n_layers):
            if self.granularity == "head":
                names += [f"a{l}.h{i}<{b}>" for b in QKV for i in self._heads]
            else:
                names += [f"a{l}<{b}>" for b in QKV] if self.granularity == "qkv" else [f"a{l}"]
            names.append(f"m{l}")
        return names + ["logits"]

    @property
    def src_per_layer(self) -> int:
        """Sources each layer adds: its attention source(s) then ``m{l}``."""
        return self.n_heads + 1 if self.granularity == "head" else 2

    @property
    def dst_per_layer(self) -> int:
        """Destination columns per layer: the attention input(s) then ``m{l}``."""
        return {"qkv": 4, "block": 2}.get(self.granularity) or 3 * self.n_heads + 1

    @property
    def n_src(self) -> int:
        return self.src_per_layer * self.n_layers + 1

    @property
    def n_dst(self) -> int:
        return self.dst_per_layer * self.n_layers + 1

    # ---- index arithmetic (used by attribution) ----------------------------------------
    def attn_dst(self, layer: int, branch: str | None = None, head: int | None = None) -> int:
        """Destination column of layer ``layer``'s attention input (``branch`` q/k/v at "qkv" and
        "head", query ``head`` at "head")."""
        if self.granularity == "block":
            return 2 * layer
        if branch not in QKV:
            raise ValueError(f"{self.granularity} granularity needs a branch in {QKV}, got {branch!r}")
        if self.granularity == "qkv":
            return 4 * layer + QKV.index(branch)
        return self.dst_per_layer * layer + QKV.index(branch) * self.n_heads + self._head(head)

    def mlp_dst(self, layer: int) -> int:
        return self.dst_per_layer * (layer + 1) - 1

    @property
    def logits_dst(self) -> int:
        return self.n_dst - 1

    def attn_src(self, layer: int, head: int | None = None) -> int:
        """Source row of layer ``layer``'s attention output (of query ``head`` at "head")."""
        return 1 + self.src_per_layer * layer + (self._head(head) if self.granularity == "head" else 0)

    def mlp_src(self, layer: int) -> int:
        return self.src_per_layer * (layer + 1)

    def _head(self, head: int | None) -> int:
        if not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise ValueError(f"head granularity needs a head in [0, {self.n_heads}), got {head!r}")
        return head

    def n_upstream(self, dst: int) -> int:
        """How many sources (a prefix of ``sources``) feed destination column ``dst``."""
        if dst == self.logits_dst:
            return self.n_src
        layer, slot = divmod(dst, self.dst_per_layer)
        is_mlp = slot == self.dst_per_layer - 1
        return 1 + self.src_per_layer * layer + (self.src_per_layer - 1 if is_mlp else 0)

    # ---- edges -------------------------------------------------------------------------
    @property
    def edge_mask(self) -> torch.Tensor:
        """Bool [n_src, n_dst]: True where u → v is a real edge."""
        mask = torch.zeros(self.n_src, self.n_dst, dtype=torch.bool)
        for dst in range(self.n_dst):
            mask[: self.n_upstream(dst), dst] = True
        return mask

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())

    def edge_names(self) -> list[str]:
        """``"u->v"`` for every real edge, in row-major (source, destination) order."""
        src, dst = self.sources, self.destinations
        return [f"{src[i]}->{dst[j]}" for i, j in self.edge_mask.nonzero().tolist()]

    def to_qkv(self, scores: torch.Tensor) -> torch.Tensor:
        """Collapse "head" scores [..., n_src, n_dst] to "qkv" [..., 2L+1, 4L+1]: sources a{l}.h* sum to
        a{l}, destinations a{l}.h*<x> to a{l}<x> (exact by linearity, SPEC §2)."""
        if self.granularity != "head":
            raise ValueError("to_qkv() needs scores at 'head' granularity")
        L, H = self.n_layers, self.n_heads
        rows = scores[..., 1:, :].unflatten(-2, (L, H + 1))
        rows = torch.stack([rows[..., :H, :].sum(-2), rows[..., H, :]], dim=-2).flatten(-3, -2)
        s = torch.cat([scores[..., :1, :], rows], dim=-2)
        cols = s[..., : L * (3 * H + 1)].unflatten(-1, (L, 3 * H + 1))
        qkv = cols[..., : 3 * H].unflatten(-1, (3, H)).sum(-1)
        cols = torch.cat([qkv, cols[..., 3 * H:]], dim=-1).flatten(-2)
        return torch.cat([cols, s[..., -1:]], dim=-1)

    def as_qkv(self) -> "ResidualGraph":
        """The "qkv" graph of the same model (what :meth:`to_qkv` maps onto)."""
        return ResidualGraph(self.n_layers, "qkv", self.model_type)

    def to_block(self, scores: torch.Tensor) -> torch.Tensor:
        """Collapse "qkv" (or "head") scores [..., n_src, n_dst] to "block" [..., 2L+1, 2L+1] (a{l} = q + k + v)."""
        if self.granularity == "head":
            return self.as_qkv().to_block(self.to_qkv(scores))
        if self.granularity != "qkv":
            raise ValueError("to_block() needs scores at 'qkv' or 'head' granularity")
        L = self.n_layers
        per_layer = scores[..., : 4 * L].unflatten(-1, (L, 4))
        block = torch.stack([per_layer[..., :3].sum(-1), per_layer[..., 3]], dim=-1).flatten(-2)
        return torch.cat([block, scores[..., -1:]], dim=-1)
