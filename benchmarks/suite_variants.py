"""Cost of the attribution settings in the suite: one mini pair's measurement (both models, both α) under
qkv/EAP, head/EAP and qkv/EAP-IG, generations cached, interleaved repeats in one process, one thread.

    python benchmarks/suite_variants.py [PAIR] [REPEATS]   ->  benchmarks/suite_variants.json

Times are the suite's own per-stage seconds (attribution of both models incl. faithfulness curves, bootstrap);
ratios are against qkv/EAP within the same run (the machine may be shared: quote ratios, not seconds).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from eapbench.suite import pairs as P
from eapbench.suite.claims import load_claims
from eapbench.suite.measure import measure_pair
from eapbench.suite.measurement import RunConfig
from eapbench.suite.runner import ROBUSTNESS_VARIANTS


def main(pair_id: str = "mini-grpo", repeats: int = 3) -> dict:
    torch.set_num_threads(1)
    pair = P.REGISTRY[pair_id]
    claims = load_claims(Path(__file__).resolve().parent.parent / "baselines" / "expectations.yaml")
    base = RunConfig(progress=False)
    runs: dict[str, list[dict]] = {name: [] for name in ROBUSTNESS_VARIANTS}
    measure_pair(pair, "synthetic", pair.alphas, base, method_class=claims.method_class(pair.method),
                 metric_names=claims.metrics)  # warm: generations cached, models' files in the page cache
    for _ in range(repeats):
        for name, settings in ROBUSTNESS_VARIANTS.items():
            cfg = replace(base, **settings)
            t0 = time.perf_counter()
            ms = measure_pair(pair, "synthetic", pair.alphas, cfg, method_class=claims.method_class(pair.method),
                              metric_names=claims.metrics)
            secs = ms[0].provenance["seconds"]
            runs[name].append({"total": time.perf_counter() - t0,
                               "attribution": sum(secs["attribution_all_alphas"].values()),
                               "bootstrap": sum(m.provenance["seconds"]["bootstrap"] for m in ms)})
    out = {"pair": pair_id, "alphas": list(pair.alphas), "repeats": repeats, "threads": 1,
           "torch": torch.__version__, "settings": {}}
    ref = statistics.median(r["total"] for r in runs["qkv/EAP"])
    ref_attr = statistics.median(r["attribution"] for r in runs["qkv/EAP"])
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("total", "attribution", "bootstrap")}
        out["settings"][name] = {**{f"median_{k}_s": round(v, 2) for k, v in med.items()},
                                 "total_vs_qkv_eap": round(med["total"] / ref, 2),
                                 "attribution_vs_qkv_eap": round(med["attribution"] / ref_attr, 2)}
        print(f"{name:12s} total {med['total']:6.2f} s (x{med['total'] / ref:.2f})  attribution+faithfulness "
              f"{med['attribution']:6.2f} s (x{med['attribution'] / ref_attr:.2f})  bootstrap {med['bootstrap']:.2f} s")
    path = Path(__file__).with_name("suite_variants.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["mini-grpo"]), *(int(x) for x in sys.argv[2:3]))
