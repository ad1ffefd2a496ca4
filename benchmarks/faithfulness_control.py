"""Why EAP's top edges are not faithful on the mini zoo: a measured control (README, "Beyond the paper's method").

    python benchmarks/faithfulness_control.py [PAIR] [ALPHA]   ->  benchmarks/faithfulness_control.json

On the base model of PAIR's paired selection at ALPHA (default mini-grpo, 0.3: the suite's inputs):
1. per destination, the sum of its incoming EAP scores against the mean |score| (a pre-norm reader's sum is
   ~0: RMSNorm is scale-invariant, so dL/dH is orthogonal to H = sum of the upstream sources' outputs);
2. each edge's measured effect: the drop in mean answer log-likelihood when that edge alone is mean-ablated;
3. the faithfulness curve (CPR, CMD) of EAP's ranking against that of the measured-effect ranking.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from eapbench.engine.attribution import score_inputs
from eapbench.engine.faithfulness import faithfulness_curve, patched_loglik, source_means
from eapbench.engine.graph import ResidualGraph
from eapbench.models import load_model
from eapbench.suite import pairs as P
from eapbench.suite.measure import select_inputs
from eapbench.suite.measurement import RunConfig


def main(pair_id: str = "mini-grpo", alpha: float = 0.3) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    pair = P.REGISTRY[pair_id]
    inputs = select_inputs(pair, "synthetic", [alpha], RunConfig(progress=False))[alpha].base
    spec = pair.resolved().base
    model, tok = load_model(spec.path, dtype="float32", device="cpu")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    graph = ResidualGraph.from_model(model)
    scores = score_inputs(model, inputs, pad_token_id=pad, graph=graph, progress=False).scores
    mask = graph.edge_mask
    mean_abs = float(scores.abs()[:, mask].mean())
    sums = scores.sum(1)  # [n, n_dst]: each sample's incoming scores per destination
    dsts = graph.destinations
    per_dst = {dsts[j]: float(sums[:, j].abs().max()) for j in range(graph.n_dst)}

    ids, attn, lm = inputs.tensors(pad)
    means = source_means(model, inputs, pad_token_id=pad, graph=graph)
    full = float(patched_loglik(model, ids, lm, mask, means, graph=graph, attention_mask=attn).mean())
    effect = torch.zeros(graph.n_src, graph.n_dst)
    for i, j in mask.nonzero().tolist():
        circuit = mask.clone()
        circuit[i, j] = False
        effect[i, j] = full - float(patched_loglik(model, ids, lm, circuit, means, graph=graph, attention_mask=attn).mean())
    eap = faithfulness_curve(model, inputs, scores.mean(0), graph, pad_token_id=pad, means=means, progress=False)
    measured = faithfulness_curve(model, inputs, effect, graph, pad_token_id=pad, means=means, progress=False)
    top = sorted(((float(effect[i, j]), f"{graph.sources[i]}->{dsts[j]}") for i, j in mask.nonzero().tolist()),
                 reverse=True)[:5]
    out = {"pair": pair_id, "alpha": alpha, "model": pair.base.path, "n_samples": len(inputs), "n_edges": graph.n_edges,
           "mean_abs_score": mean_abs,
           "max_abs_incoming_sum": {"pre_norm_readers (a<q|k|v>, m, logits)": max(per_dst.values())},
           "largest_single_edge_effects_nats": top,
           "eap_ranking": {"cpr": eap.cpr, "cmd": eap.cmd, "f_signed": list(eap.f_signed)},
           "measured_effect_ranking": {"cpr": measured.cpr, "cmd": measured.cmd, "f_signed": list(measured.f_signed)},
           "percents": list(eap.percents), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=1))
    Path(__file__).with_name("faithfulness_control.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["mini-grpo"]), *(float(x) for x in sys.argv[2:3]))
