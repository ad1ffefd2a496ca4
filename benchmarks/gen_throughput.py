"""HF generation throughput on the CPU (issue 14.3): decoded tokens/s of one model, fresh cache, one thread.

    OMP_NUM_THREADS=1 python benchmarks/gen_throughput.py mini          # zoo sft, 500 synthetic problems, batch 64
    OMP_NUM_THREADS=1 python benchmarks/gen_throughput.py smol          # SmolLM2-135M, 32 GSM8K problems, batch 8
    OMP_NUM_THREADS=1 python benchmarks/gen_throughput.py mini 2048     # ... with --gen-token-budget 2048

Prints one JSON line: tokens decoded (answer + EOS), seconds (model loading excluded), tokens/s and a
hash of the answers (equal hashes: equal answers). The "before" figures in the README were taken with
the same script against the previous commit's package (``git archive HEAD eapbench | tar -x -C DIR``,
then ``PYTHONPATH=DIR``; without a ``token_budget`` argument).
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import torch

torch.set_num_threads(1)
which = sys.argv[1] if len(sys.argv) > 1 else "mini"
budget = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "none" else None
cache = tempfile.mkdtemp(prefix="gen-throughput-")
os.environ["EAPBENCH_CACHE"] = cache  # a fresh generation cache: every answer is decoded

from eapbench.models import load_model  # noqa: E402
from eapbench.pipeline.data import load_dataset  # noqa: E402
from eapbench.pipeline.generate import generate, load_tokenizer  # noqa: E402
from eapbench.records import ModelSpec  # noqa: E402

if which == "mini":
    from eapbench.zoo import checkpoint_path

    spec = ModelSpec(str(checkpoint_path("sft")), "mini", max_new_tokens=64, name="mini-sft")
    problems, batch = list(load_dataset("synthetic", limit=500).problems), 64
else:
    from eapbench.models import smollm2_checkpoint

    spec = ModelSpec(str(smollm2_checkpoint()), "chat", max_new_tokens=48, name="smollm2")
    problems, batch = list(load_dataset("gsm8k", limit=32).problems), 8
model, _ = load_model(spec.path, dtype="float32", device="cpu")
tok = load_tokenizer(spec)
kw = {"token_budget": budget} if budget is not None else {}
t0 = time.perf_counter()
run = generate(spec, problems, dataset=which, model=model, tokenizer=tok, batch_size=batch, progress=False, **kw)
dt = time.perf_counter() - t0
tokens = sum(len(g.answer_ids) + g.finished for g in run.generations)
print(json.dumps({"which": which, "budget": budget, "batch": batch, "problems": len(problems), "tokens": tokens,
                  "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1),
                  "reported_tokens_per_s": getattr(run, "tokens_per_s", None),
                  "answers": hashlib.sha256(json.dumps([g.answer_ids for g in run.generations]).encode())
                  .hexdigest()[:12]}))
shutil.rmtree(cache, ignore_errors=True)
