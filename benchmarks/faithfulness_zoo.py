"""MIB faithfulness (CPR / CMD, f(k)) and top-k stability of the mini zoo's EAP scores (issue 13, items 3-4).

    python benchmarks/faithfulness_zoo.py                 # -> benchmarks/faithfulness_zoo.json
    python benchmarks/faithfulness_zoo.py --granularity head   # -> benchmarks/faithfulness_zoo_head.json
    python benchmarks/faithfulness_zoo.py --alpha 0.5 --granularity block --no-prune --out /tmp/f.json

For each mini pair at α (default 0.3, synthetic task, the suite's paired selection and settings:
N = 100, seed 42, the first 500 problems, float32 on CPU, one thread), both models' EAP scores on
their own inputs, then :func:`eapbench.engine.faithfulness.faithfulness_curve` from the mean scores
(mean ablation over the inputs' real tokens, pruned circuits, MIB's trapezoid over the fraction of
edges) and :func:`eapbench.analysis.stability.topk_stability` (1000 resamples) on the per-sample
scores. The SFT base appears once per pair: each pair selects its own both-correct problems.
Generations come from the cache ($EAPBENCH_CACHE) when present; timings are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from eapbench.analysis.stability import topk_stability
from eapbench.engine.attribution import score_inputs
from eapbench.engine.faithfulness import faithfulness_curve
from eapbench.engine.graph import ResidualGraph
from eapbench.models import load_model
from eapbench.suite.measure import select_inputs
from eapbench.suite.measurement import RunConfig
from eapbench.suite.pairs import group

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--granularity", default="qkv", choices=("qkv", "block", "head"))
    p.add_argument("--n-samples", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--no-prune", action="store_true", help="keep the top-k edges as they are (MIB prunes them to "
                   "their input -> logits connected part)")
    p.add_argument("--pairs", default="", help="comma-separated mini pair ids (default: all mini pairs)")
    p.add_argument("--out", default=None, help="default: benchmarks/faithfulness_zoo.json "
                   "(faithfulness_zoo_head.json at --granularity head)")
    args = p.parse_args()
    if args.out is None:
        args.out = str(HERE / ("faithfulness_zoo_head.json" if args.granularity == "head" else "faithfulness_zoo.json"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    cfg = RunConfig(n_samples=args.n_samples, granularity=args.granularity, batch_size=args.batch_size,
                    progress=False)
    pairs = [q for q in group("mini") if not args.pairs or q.id in args.pairs.split(",")]
    rows = []
    t_all = time.perf_counter()
    for pair in pairs:
        t0 = time.perf_counter()
        selection = select_inputs(pair, "synthetic", [args.alpha], cfg)[args.alpha]
        t_select = time.perf_counter() - t0
        r = pair.resolved()
        for side, spec in (("base", r.base), ("tuned", r.tuned)):
            inputs = getattr(selection, side)
            model, tok = load_model(spec.path, dtype="float32", device="cpu")
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            graph = ResidualGraph.from_model(model, granularity=args.granularity)
            t1 = time.perf_counter()
            scores = score_inputs(model, inputs, pad_token_id=pad, graph=graph, batch_size=args.batch_size,
                                  progress=False)
            t_attr = time.perf_counter() - t1
            curve = faithfulness_curve(model, inputs, scores.scores.mean(0), graph, pad_token_id=pad,
                                       batch_size=args.batch_size, prune=not args.no_prune, progress=False)
            t2 = time.perf_counter()
            stab = topk_stability(scores.edge_vectors(), n_resamples=args.resamples, seed=0, progress=False)
            t_stab = time.perf_counter() - t2
            rows.append({"pair": pair.id, "side": side, "model": spec.name, "n_samples": len(inputs),
                         "t_cut": inputs.t_cut, "tokens": sum(len(x) for x in inputs.input_ids),
                         "seconds": {"selection_of_pair": round(t_select, 2), "attribution": round(t_attr, 2),
                                     "faithfulness": round(curve.seconds, 2), "stability": round(t_stab, 2)},
                         "faithfulness": curve.to_dict(), "stability": stab.to_dict()})
            print(f"{pair.id:16s} {side:5s} {spec.name:16s} n={len(inputs):3d} CPR {curve.cpr:.3f} "
                  f"CMD {curve.cmd:.3f}  f_abs {' '.join(f'{f:.2f}' for f in curve.f_abs)}  "
                  f"({curve.seconds:.1f}s; EAP {t_attr:.1f}s)", flush=True)
            del model
    out = {"alpha": args.alpha, "dataset": "synthetic", "granularity": args.granularity, "pruned": not args.no_prune,
           "n_samples_requested": args.n_samples, "batch_size": args.batch_size, "threads": 1,
           "resamples": args.resamples, "total_seconds": round(time.perf_counter() - t_all, 1),
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "torch": torch.__version__}, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
