"""Every check that needs a GPU, in one prepared run that needs no downloads (issue 14).

    python scripts/gpu_check.py --device cuda --out benchmarks/gpu_check-h200.json   # <= 8 min on one GPU
    python scripts/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json        # same code paths, toy sizes

Sections (each timed, each recorded even when it fails; the exit status is 1 if any failed):
1. ``oracle``: EAP scores of tiny fp64 models of every family equal the finite-difference derivative
   of the loss under single-edge ablation (tests/eap_oracle.py), on the device;
2. ``smollm2``: SmolLM2-135M (offline GGUF package) bf16 vs fp32 on the device: Spearman rank
   correlation of the edge scores, and both models' losses;
3. ``shapes``: random-init Llama-3-8B- and Qwen2-7B-shaped models in bf16 at T = 1k, 4k, 8k (16k with
   checkpointing): attribute() time and peak memory against the bound (one frozen-parameter
   forward+backward of the same loss) and against :func:`eapbench.estimate_memory`;
4. ``generation``: HF greedy generation tokens/s for a 7B-shaped model;
5. ``suite``: the mini suite on the device against the stored CPU baselines under the device's
   tolerances (a subprocess ``pytest suites/ --device ...``).
It prints a table and writes the JSON (environment, sizes, figures, errors).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "engine")]  # the independent oracle, the benchmarks' helpers

# Model shapes (transformers config fields). Full-size on a GPU; --quick keeps the family and GQA
# ratio at toy width so the same code paths run on a CPU in seconds.
SHAPES = {
    "llama3-8b": dict(family="llama", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, num_hidden_layers=32, rope_theta=500000.0),
    "qwen2-7b": dict(family="qwen2", hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, num_hidden_layers=28, rope_theta=1000000.0),
}
QUICK_SHAPE = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
                   vocab_size=512, num_hidden_layers=2)


def random_model(shape: dict[str, Any], *, quick: bool, device: torch.device, dtype: torch.dtype,
                 layers: int | None = None):
    """A random-init model of ``shape`` built directly on ``device`` (no weights are read)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    fields = {k: v for k, v in shape.items() if k != "family"}
    if quick:
        fields.update(QUICK_SHAPE)
    if layers is not None:
        fields["num_hidden_layers"] = layers
    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[shape["family"]]
    cfg = cfg_cls(**fields, max_position_embeddings=32768, tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls(cfg).to(dtype)
    return model.eval()


def timed_peak(device: torch.device, fn: Callable[[], Any]) -> tuple[float, int]:
    """Seconds and peak memory growth (bytes) of one call (tests/engine/test_attribution_bench.py's PeakMemory)."""
    from test_attribution_bench import PeakMemory

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    with PeakMemory(device) as pm:
        fn()
        sync()
    return time.perf_counter() - t0, int(pm.peak)


def check_oracle(device: torch.device, quick: bool) -> dict[str, Any]:
    from eap_oracle import finite_difference_scores
    from tiny_models import FAMILIES, random_batch, tiny_model

    from eapbench.engine.attribution import attribute
    from eapbench.engine.graph import ResidualGraph

    out = {}
    for family in FAMILIES:
        model = tiny_model(family).to(device)
        ids, mask = random_batch()
        ids, mask = ids.to(device), mask.to(device)
        graph = ResidualGraph.from_model(model)
        scores = attribute(model, ids, mask, graph=graph)
        fd = finite_difference_scores(model, ids, mask, graph).cpu()
        err = float((scores - fd).abs().max() / fd.abs().max())
        out[family] = {"max_rel_error": err, "ok": err <= 1e-5}
    return {"families": out, "ok": all(v["ok"] for v in out.values())}


def check_smollm2(device: torch.device, quick: bool) -> dict[str, Any]:
    from scipy.stats import spearmanr
    from test_attribution_real import qa_batch

    from eapbench.engine.attribution import attribute
    from eapbench.engine.graph import ResidualGraph
    from eapbench.models import load_model, smollm2_checkpoint

    res = {}
    scores = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model(smollm2_checkpoint(), dtype=dtype, device=str(device))
        graph = ResidualGraph.from_model(model)
        ids, mask = qa_batch(tok)
        s, loss = attribute(model, ids, mask, graph=graph, return_loss=True)
        scores[dtype] = s[0][graph.edge_mask]
        res[f"loss_{dtype}"] = float(loss[0])
        del model
    rho = float(spearmanr(scores["float32"].numpy(), scores["bfloat16"].numpy()).statistic)
    res.update(spearman_bf16_vs_fp32=rho, n_edges=int(scores["float32"].numel()), ok=rho >= 0.99)
    return res


def check_shapes(device: torch.device, quick: bool) -> dict[str, Any]:
    from test_attribution_bench import bound_step

    from eapbench import estimate_memory
    from eapbench.engine.attribution import attribute
    from eapbench.engine.graph import ResidualGraph

    lengths = [(64, False), (128, False), (256, True)] if quick else [(1024, False), (4096, False), (8192, False),
                                                                      (16384, True)]
    rows = []
    for name, shape in SHAPES.items():
        model = random_model(shape, quick=quick, device=device, dtype=torch.bfloat16)
        graph = ResidualGraph.from_model(model)
        warm = torch.randint(0, model.config.vocab_size, (1, lengths[0][0])).to(device)
        warm_mask = torch.ones_like(warm, dtype=torch.bool)
        warm_mask[:, 0] = False
        bound_step(model, warm, warm_mask)  # kernels, allocator pools and lazy inits before anything is timed
        attribute(model, warm, warm_mask, graph=graph)
        for T, ckpt in lengths:
            g = torch.Generator().manual_seed(T)
            ids = torch.randint(0, model.config.vocab_size, (1, T), generator=g).to(device)
            mask = torch.zeros(1, T, dtype=torch.bool, device=device)
            mask[:, T // 2:] = True
            row: dict[str, Any] = {"model": name, "layers": model.config.num_hidden_layers, "T": T,
                                   "checkpointing": ckpt}
            try:
                t_b, m_b = timed_peak(device, lambda: bound_step(model, ids, mask))
                t_a, m_a = timed_peak(device, lambda: attribute(model, ids, mask, graph=graph, checkpointing=ckpt))
                est = estimate_memory(model.config, seq_len=T, batch_size=1, dtype="bfloat16", checkpointing=ckpt,
                                      device=device.type)
                row.update(bound_s=t_b, bound_peak=m_b, attribute_s=t_a, attribute_peak=m_a, estimate=est,
                           time_vs_bound=t_a / t_b, mem_vs_bound=m_a / max(m_b, 1), est_vs_measured=est / max(m_a, 1))
            except torch.cuda.OutOfMemoryError as exc:  # recorded: the plan must avoid it, this says where
                row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
                torch.cuda.empty_cache()
            rows.append(row)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "ok": all("error" not in r for r in rows)}


def check_generation(device: torch.device, quick: bool) -> dict[str, Any]:
    model = random_model(SHAPES["llama3-8b"], quick=quick, device=device, dtype=torch.bfloat16)
    batch, prompt, new = (4, 16, 16) if quick else (8, 256, 128)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    for _ in range(2):
        t, _ = timed_peak(device, lambda: model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                                         pad_token_id=0))
        times.append(t)
    t = statistics.median(times)
    return {"model": "llama3-8b" + (" (quick shape)" if quick else ""), "batch": batch, "prompt_tokens": prompt,
            "new_tokens": new, "seconds": t, "tokens_per_s": batch * new / t, "ok": True}


def check_suite(device: torch.device, quick: bool, out_dir: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "suites/", "-q", "-p", "no:cacheprovider", "--device", device.type,
           "--report", str(out_dir / "suite-report")]
    if quick:
        cmd += ["--pairs", "mini-grpo", "--alphas", "0.3"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    return {"command": " ".join(cmd[2:]), "returncode": proc.returncode, "summary": tail,
            "seconds": time.perf_counter() - t0, "ok": proc.returncode == 0}


def environment(device: torch.device) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "platform": platform.platform(terse=True), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   gpu_memory_bytes=torch.cuda.get_device_properties(device).total_memory)
    return env


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="toy sizes: the same code paths in minutes on a CPU")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but torch sees no CUDA device here; use --device cpu --quick", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "oracle": lambda: check_oracle(device, args.quick),
        "smollm2": lambda: check_smollm2(device, args.quick),
        "shapes": lambda: check_shapes(device, args.quick),
        "generation": lambda: check_generation(device, args.quick),
        "suite": lambda: check_suite(device, args.quick, out.parent),
    }
    report: dict[str, Any] = {"environment": environment(device), "quick": args.quick, "sections": {}}
    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as exc:  # one failing section must not lose the others' figures
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        res["seconds_total"] = time.perf_counter() - t0
        report["sections"][name] = res
        print(f"[{name}] {'ok' if res.get('ok') else 'FAILED'} in {res['seconds_total']:.1f}s", flush=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")  # after every section: nothing lost
    for row in report["sections"].get("shapes", {}).get("rows", []):
        print("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    for name, res in report["sections"].items():
        if name != "shapes":
            print(f"  {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in res.items()
                                           if k not in ("traceback", "rows", "families")))
    print(f"wrote {out}")
    return 0 if all(r.get("ok") for r in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
