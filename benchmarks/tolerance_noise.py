"""How far each stored mini baseline's numbers move under seeded relative noise on the edge scores.

    python benchmarks/tolerance_noise.py 1e-5 3     # noise level, seeds (the tolerances.yaml figures)

For every stored mini case: the suite's own scores (eapbench.suite.measure.select_inputs / score_pair,
one thread), then for each seed both models' scores times (1 + s·z), z ~ N(0, 1), metrics and 9999-resample
bootstraps recomputed; prints, per metric and scale (values relative, changes and bounds absolute), the
largest deviation from the unperturbed run and from the stored baseline. tests/suite/test_portability.py
asserts the consequence at s = 1e-5.
"""

import collections
import dataclasses
import shutil
import sys

import torch

from eapbench.suite import baselines as B
from eapbench.suite import pairs as P
from eapbench.suite.claims import load_claims
from eapbench.suite.measure import bootstrap_metrics, score_pair, select_inputs
from eapbench.suite.measurement import RunConfig


def main(noise: float, seeds: int) -> None:
    torch.set_num_threads(1)
    cfg = RunConfig(progress=False)
    names = load_claims().metrics
    worst = collections.defaultdict(lambda: [0.0, 0.0])  # (metric, scale) -> [vs unperturbed, vs stored]
    for pair in P.group("mini"):
        selections = select_inputs(pair, "synthetic", pair.alphas, cfg)
        scores, _, _, dirs = score_pair(pair, selections, pair.alphas, cfg)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
        for a in pair.alphas:
            stored = B.read_baseline(B.baseline_path(pair.id, "synthetic", a))["metrics"]
            base, tuned = scores[("base", a)], scores[("tuned", a)]
            clean = bootstrap_metrics(base, tuned, cfg, names)[0]
            for s in range(1, seeds + 1):
                g = torch.Generator().manual_seed(1000 * s)
                noisy = [dataclasses.replace(es, scores=es.scores * (1 + noise * torch.randn(es.scores.shape, generator=g)))
                         for es in (base, tuned)]
                run = bootstrap_metrics(*noisy, cfg, names)[0]
                for metric, r in run.items():
                    for f in B.VALUE_FIELDS:
                        scale = "value" if f in B.VALUE_SCALE else "change"
                        rel = (lambda x, ref: abs(x - ref) / abs(ref)) if scale == "value" else (lambda x, ref: abs(x - ref))
                        w = worst[(metric, scale)]
                        w[0] = max(w[0], rel(r[f], clean[metric][f]))
                        w[1] = max(w[1], rel(clean[metric][f], stored[metric][f]))
    print(f"noise {noise:g}, {seeds} seeds; values: relative, changes and bounds: absolute")
    for (metric, scale), (vs_clean, vs_stored) in sorted(worst.items()):
        print(f"{metric:15s} {scale:7s} vs unperturbed {vs_clean:.2e}   this machine vs stored {vs_stored:.2e}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1e-5, int(sys.argv[2]) if len(sys.argv) > 2 else 3)
