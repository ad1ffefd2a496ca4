"""The residual graph of a decoder-only transformer (SPEC §2): node names and edge mask.

Sources write to the residual stream (``input``, ``a{l}``, ``m{l}``); destinations read
it (``a{l}<q>``, ``a{l}<k>``, ``a{l}<v>``, ``m{l}``, ``logits`` at "qkv" granularity;
``a{l}``, ``m{l}``, ``logits`` at "block"). Edge u → v exists iff u writes before v reads.
Names follow the EAP-IG / MIB convention. The graph knows a model only by its family and
layer count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRANULARITIES = ("qkv", "block")
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class ResidualGraph:
    n_layers: int
    granularity: str = "qkv"
    model_type: str | None = None  # the family the graph was built for (checked by attribute())

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.n_layers < 1:
            raise ValueError(f"a residual graph needs at least one layer, got n_layers={self.n_layers}")

    @classmethod
    def from_model(cls, model: torch.nn.Module, granularity: str = "qkv") -> "ResidualGraph":
        from .architectures import arch_spec, decoder_layers

        spec = arch_spec(model)
        return cls(n_layers=len(decoder_layers(model, spec)), granularity=granularity,
                   model_type=model.config.model_type)

    # ---- nodes -------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        names = ["input"]
        for l in range(self.n_layers):
            names += [f"a{l}", f"m{l}"]
        return names

    @property
    def destinations(self) -> list[str]:
        names: list[str] = []
        for l in range(self.n_layers):
            names += [f"a{l}<{b}>" for b in QKV] if self.granularity == "qkv" else [f"a{l}"]
            names.append(f"m{l}")
        return names + ["logits"]

    @property
    def n_src(self) -> int:
        return 2 * self.n_layers + 1

    @property
    def n_dst(self) -> int:
        return (4 if self.granularity == "qkv" else 2) * self.n_layers + 1

    # ---- index arithmetic (used by attribution) ----------------------------------------
    def attn_dst(self, layer: int, branch: str | None = None) -> int:
        """Destination column of layer ``layer``'s attention input (``branch`` q/k/v at "qkv")."""
        if self.granularity == "qkv":
            if branch not in QKV:
                raise ValueError(f"qkv granularity needs a branch in {QKV}, got {branch!r}")
            return 4 * layer + QKV.index(branch)
        return 2 * layer

    def mlp_dst(self, layer: int) -> int:
        return (4 if self.granularity == "qkv" else 2) * layer + (3 if self.granularity == "qkv" else 1)

    @property
    def logits_dst(self) -> int:
        return self.n_dst - 1

    @staticmethod
    def attn_src(layer: int) -> int:
        return 1 + 2 * layer

    @staticmethod
    def mlp_src(layer: int) -> int:
        return 2 + 2 * layer

    def n_upstream(self, dst: int) -> int:
        """How many sources (a prefix of ``sources``) feed destination column ``dst``."""
        if dst == self.logits_dst:
            return self.n_src
        per_layer = 4 if self.granularity == "qkv" else 2
        layer, slot = divmod(dst, per_layer)
        is_mlp = slot == per_layer - 1
        return 2 * layer + (2 if is_mlp else 1)

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

    def to_block(self, scores: torch.Tensor) -> torch.Tensor:
        """Collapse "qkv" scores [..., n_src, 4L+1] to "block" [..., n_src, 2L+1] (a{l} = q + k + v)."""
        if self.granularity != "qkv":
            raise ValueError("to_block() needs scores at 'qkv' granularity")
        L = self.n_layers
        per_layer = scores[..., : 4 * L].unflatten(-1, (L, 4))
        block = torch.stack([per_layer[..., :3].sum(-1), per_layer[..., 3]], dim=-1).flatten(-2)
        return torch.cat([block, scores[..., -1:]], dim=-1)
