"""Measure the peak memory of one attribute() call in a fresh process (used by test_memory.py and
the benchmarks; not a test module).

    python tests/engine/memory_probe.py '{"shape": "llama3-8b", "layers": 2, "T": 1024}'

prints one JSON line (one per configuration when given a JSON list, measured one after the other):
the configuration, the process's peak resident-set growth over the call (``PeakMemory`` of
test_attribution_bench.py: VmHWM reset to the current RSS after the model is built, then read after
the call), its wall time, and ``estimate_memory``'s prediction for attribute() (in either mode).
Random-init models from a config alone (no weights downloaded); one torch thread; a short
warm-up call first so one-time allocations (thread pools, oneDNN kernels) are not counted.
Keys: shape (see SHAPES), layers, T, B (1), dtype ("bfloat16"), checkpointing (false),
granularity ("qkv"), mode ("eap" = attribute(), "bound" = bound_step of the benchmark),
targets ("half": the second half of each row is scored, as in the benchmark; "all"), method ("eap";
"eap-ig"), steps (EAP-IG's m, default 5) and baseline ("zero"; "tokens": random corrupted ids).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Full-size shapes of the families' 7B-class models; the "small-*" ones are scaled down for a fast test.
SHAPES = {
    "llama3-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                                num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                                max_position_embeddings=8192, tie_word_embeddings=False)),
    "qwen2-7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                               num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0,
                               max_position_embeddings=32768, tie_word_embeddings=False)),
    "small-llama": ("llama", dict(hidden_size=512, intermediate_size=1792, num_attention_heads=8,
                                  num_key_value_heads=2, vocab_size=16000, max_position_embeddings=4096,
                                  tie_word_embeddings=False)),
    "small-qwen2": ("qwen2", dict(hidden_size=448, intermediate_size=2368, num_attention_heads=7,
                                  num_key_value_heads=1, vocab_size=19000, max_position_embeddings=4096,
                                  tie_word_embeddings=True)),
}


def make_config(shape: str, layers: int, attn_implementation: str = "sdpa"):
    from transformers import AutoConfig

    family, kw = SHAPES[shape]
    return AutoConfig.for_model(family, num_hidden_layers=layers, attn_implementation=attn_implementation, **kw)


def measure(spec: dict) -> dict:
    from test_attribution_bench import PeakMemory, bound_step
    from transformers import AutoModelForCausalLM

    from eapbench.engine.attribution import attribute
    from eapbench.engine.graph import ResidualGraph

    spec = {"B": 1, "dtype": "bfloat16", "checkpointing": False, "granularity": "qkv", "mode": "eap",
            "targets": "half", "attn_implementation": "sdpa", "threads": 1, "method": "eap", "steps": None,
            "baseline": "zero", **spec}
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = make_config(spec["shape"], spec["layers"], spec["attn_implementation"])
    dtype = getattr(torch, spec["dtype"])
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model.requires_grad_(False)
    graph = ResidualGraph.from_model(model, granularity=spec["granularity"])
    B, T = spec["B"], spec["T"]

    def inputs(T):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, config.vocab_size, (B, T), generator=g)
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, T // 2 if spec["targets"] == "half" else 1:] = True
        return ids, mask

    def run(T):
        ids, mask = inputs(T)
        if spec["mode"] == "bound":
            bound_step(model, ids, mask)
        elif spec["method"] == "eap-ig":
            base = None
            if spec["baseline"] == "tokens":
                base = torch.randint(0, config.vocab_size, ids.shape, generator=torch.Generator().manual_seed(1))
            attribute(model, ids, mask, graph=graph, checkpointing=spec["checkpointing"], method="eap-ig",
                      steps=spec["steps"], baseline=base)
        else:
            attribute(model, ids, mask, graph=graph, checkpointing=spec["checkpointing"])

    run(min(T, 64))  # warm-up
    device = torch.device("cpu")
    t0 = time.perf_counter()
    with PeakMemory(device) as pm:
        run(T)
    seconds = time.perf_counter() - t0
    n_targets = T - T // 2 if spec["targets"] == "half" else T - 1
    from eapbench.engine.memory import estimate_memory

    est = estimate_memory(config, seq_len=T, batch_size=B, dtype=spec["dtype"], checkpointing=spec["checkpointing"],
                          granularity=spec["granularity"], device="cpu", n_targets=n_targets,
                          **({} if spec["method"] == "eap" else
                             {"method": spec["method"], "steps": spec["steps"], "baseline": spec["baseline"]}))
    return {**spec, "peak_bytes": pm.peak, "seconds": round(seconds, 2), "estimate_bytes": est,
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


if __name__ == "__main__":
    specs = json.loads(sys.argv[1])
    for spec in specs if isinstance(specs, list) else [specs]:  # a list: one after the other, one line each
        print(json.dumps(measure(spec)), flush=True)
