"""Synthetic edge-score samples for the metrics/stats tests: the qkv graph mask and heavy-tailed scores."""

from __future__ import annotations

import numpy as np


def qkv_mask(n_layers: int) -> np.ndarray:
    """The paper's qkv residual graph (SPEC §2), built independently of eapbench.engine.graph."""
    src = ["input"] + [f"{k}{l}" for l in range(n_layers) for k in ("a", "m")]
    dst = [d for l in range(n_layers) for d in (f"a{l}<q>", f"a{l}<k>", f"a{l}<v>", f"m{l}")] + ["logits"]
    order = {name: i for i, name in enumerate(src)}
    mask = np.zeros((len(src), len(dst)), dtype=bool)
    for j, d in enumerate(dst):
        if d == "logits":
            mask[:, j] = True
            continue
        layer = int(d[1:].split("<")[0])
        # a{l}<q|k|v> read everything written before layer l; m{l} also sees a{l}
        last = order[f"a{layer}"] if d.startswith("m") else order[f"a{layer}"] - 1
        mask[: last + 1, j] = True
    return mask


def heavy_scores(rng: np.random.Generator, n: int, mask: np.ndarray, kind: str = "t",
                 scale: float = 1e-3, garbage: bool = False) -> np.ndarray:
    """[n, n_src, n_dst] heavy-tailed signed scores; non-edges 0 (or garbage), some real edges exactly 0."""
    shape = (n,) + mask.shape
    w = rng.standard_t(3, size=shape) if kind == "t" else rng.laplace(size=shape)
    w *= scale * rng.uniform(0.5, 2.0, size=(n, 1, 1))
    w[rng.random(shape) < 0.05] = 0.0
    outside = rng.normal(size=shape) * 1e3 if garbage else 0.0
    return np.where(mask, w, outside)
