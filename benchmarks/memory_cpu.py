"""Validate estimate_memory against attribute()'s measured peak memory on CPU (issue 14, item 1).

    python benchmarks/memory_cpu.py                      # the full table -> benchmarks/memory_cpu.json
    python benchmarks/memory_cpu.py --malloc-mmap --out benchmarks/memory_cpu_mmap.json   # RSS = live bytes
    python benchmarks/memory_cpu.py --shapes llama3-8b --seq 1024 --checkpointing 0 --attn eager --malloc-mmap \
        --out benchmarks/memory_cpu_eager_mmap.json                                       # the T² term

Random-init reduced-layer 7B-shaped models (Llama-3-8B and Qwen2-7B shapes, bf16, one thread), with
and without checkpointing; each configuration in a fresh process (tests/engine/memory_probe.py):
peak resident-set growth over one attribute() call (the second half of each row scored), against
estimate_memory for the same call. The per-layer rows difference the 2- and 4-layer models, as the
issue did. ``--malloc-mmap`` sets MALLOC_MMAP_THRESHOLD_=65536 so glibc returns every freed block
of >= 64 KiB to the OS at once: RSS then tracks live bytes, without heap fragmentation.
About 30 minutes for the full table on one core; peak RSS stays under ~7 GB.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "engine" / "memory_probe.py"


def probe(spec: dict, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, str(PROBE), json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="llama3-8b,qwen2-7b")
    p.add_argument("--layers", default="2,4")
    p.add_argument("--seq", default="1024,2048")
    p.add_argument("--checkpointing", default="0,1")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--attn", default="sdpa", help="the config's attention implementation (sdpa, eager)")
    p.add_argument("--malloc-mmap", action="store_true", help="MALLOC_MMAP_THRESHOLD_=65536 (live bytes)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "memory_cpu.json"))
    args = p.parse_args(argv)
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"} if args.malloc_mmap else {}
    rows = []
    for shape, T, ck, L in itertools.product(args.shapes.split(","), map(int, args.seq.split(",")),
                                             [bool(int(c)) for c in args.checkpointing.split(",")],
                                             map(int, args.layers.split(","))):
        r = probe({"shape": shape, "layers": L, "T": T, "checkpointing": ck, "dtype": args.dtype,
                   "attn_implementation": args.attn}, env)
        r["ratio"] = r["estimate_bytes"] / r["peak_bytes"]
        rows.append(r)
        print(f"{shape:10s} {args.attn} L={L} T={T} ckpt={int(ck)}: measured {r['peak_bytes'] / 1e6:7.0f} MB  estimate "
              f"{r['estimate_bytes'] / 1e6:7.0f} MB  estimate/measured {r['ratio']:.2f}  ({r['seconds']:.0f} s)",
              flush=True)
    per_layer = []
    key = lambda r: (r["shape"], r["T"], r["checkpointing"])
    for k, group in itertools.groupby(sorted(rows, key=key), key=key):
        g = {r["layers"]: r for r in group}
        if len(g) >= 2:
            lo, hi = min(g), max(g)
            meas = (g[hi]["peak_bytes"] - g[lo]["peak_bytes"]) / (hi - lo)
            est = (g[hi]["estimate_bytes"] - g[lo]["estimate_bytes"]) / (hi - lo)
            per_layer.append({"shape": k[0], "T": k[1], "checkpointing": k[2], "measured_bytes": meas,
                              "estimate_bytes": est, "ratio": est / meas if meas > 0 else None})
    doc = {"command": " ".join(["python benchmarks/memory_cpu.py", *(sys.argv[1:] if argv is None else argv)]),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor()
           or platform.machine(), "malloc_mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_"),
           "method": "fresh process per row; peak RSS growth (VmHWM reset after building the model and a "
                     "warm-up call) over one attribute() call; B=1, second half of each row scored, one thread",
           "rows": rows, "per_layer": per_layer,
           "max_abs_error": max(abs(r["ratio"] - 1) for r in rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for r in per_layer:
        print(f"per layer {r['shape']:10s} T={r['T']} ckpt={int(r['checkpointing'])}: measured "
              f"{r['measured_bytes'] / 1e6:6.0f} MB  estimate {r['estimate_bytes'] / 1e6:6.0f} MB")
    print(f"wrote {args.out}; worst |estimate/measured - 1| = {doc['max_abs_error']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
