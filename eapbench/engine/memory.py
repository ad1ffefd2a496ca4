"""How much memory :func:`~eapbench.engine.attribution.attribute` needs beyond the weights, from the
model config alone (no weights): :func:`estimate_memory` and its itemised :func:`memory_breakdown`.

The model mirrors what one attribute() call keeps alive, term by term. Notation: B batch, T sequence
length, n = B·T tokens, d hidden size, H / H_kv query / key-value heads, d_h head dim, q_d = H·d_h,
kv_d = H_kv·d_h, F MLP width, V vocabulary, L layers, e bytes per element of the model dtype,
a = max(4, e) bytes of the loss dtype (logits are upcast to fp32), N_t = B·n_targets scored tokens.
"nd" below is n·d elements.

Kept per decoder layer from its forward until its backward (``layer``):

- residual norms: RMSNorm upcasts its input to fp32 and autograd keeps that copy:
  2 · 4·nd (pre-norm families: input and post-attention norms; OLMo-2: the post-attention and
  post-feed-forward norms plus the QK-norms on the projections, 4·n·(q_d + kv_d));
- attention, by kernel:
    flash-style (SDPA flash / memory-efficient on CUDA, SDPA's flash kernel on CPU in torch >= 2.3,
    flash_attention_2): q, k, v, output and the fp32 log-sum-exp: e·n·(2·q_d + 2·kv_d') + 4·B·H·T,
    with kv_d' = kv_d (GQA handled in the kernel) or q_d when rows are padded (transformers then
    repeats the k/v heads before SDPA);
    probability-keeping (``config._attn_implementation == "eager"``): q and the repeated k, v
    (3·e·n·q_d) plus the attention probabilities, fp32 from the softmax and their cast to the model
    dtype for the second matmul: B·H·T²·(4 + e) (4 alone in fp32) — the T² term;
- SwiGLU MLP: gate output (kept by SiLU), SiLU output and up output (kept by the product):
  3·e·n·F (parameters are frozen, so no linear layer keeps its input);
- source buffer: the layer's two source outputs a{l}, m{l}, copied into [B, n_src, T, d]: 2·e·nd.

The residual that q/k/v's norm reads is not kept: the engine rebuilds it from the source buffer in
backward, bit for bit (the upstream outputs added in layer order, as the decoder adds them).

With ``checkpointing=True`` a layer keeps only its input (e·nd) and its two source slots (2·e·nd);
its activations (``layer_activations``, the terms above less the buffer) come back during its
recomputation in backward.

Kept for the whole call (``fixed``): embedding output (the autograd leaf) and its source slot 2·e·nd;
the final norm's fp32 input 4·nd; the attention mask when one is materialised (eager: e·B·T²;
padded SDPA: a bool B·T²); the score accumulator 4·B·n_src·n_dst.

On top of that, the largest of the transient phases (``transient``):

- loss: the fp32 log-softmax of every target row a·N_t·V (logits exist only at target positions),
  and in its backward, for one chunk of c = min(N_t, 4096) rows, the NLL and log-softmax gradients
  2·a·c·V: a·V·(N_t + 2c);
- contraction (no checkpointing: top layer; with: recomputed layer + this): the gradients of a
  layer's destinations stacked (m·e·nd, m = 4 at qkv and 2 at block granularity) and, on CPU for
  bf16/fp16 models, their fp32 copy (4·m·nd) and a few upstream sources cast to fp32
  (4·nd·min(k, max(1, 2^26 // nd)), k = 2L+1 upstream sources); the q/k/v norm VJP at qkv
  granularity, the residual rebuilt from the buffer (a running sum and its next term, 2·e·nd) and
  three fp32 copies of it and their gradients (3·(3e + 8)·nd); the MLP
  backward's three [n, F] gradients (3·e·n·F) — the largest of these.

EAP-IG (``method="eap-ig"``, m = ``steps``; :mod:`~eapbench.engine.integrated_gradients`) runs m
forward+backward passes one after another, each costing what plain EAP's does (the terms above), and
keeps across them (``ig``): O − O', the source buffer the destinations contract, a second one beside the
step's own (per layer the layer's buffer slots, and the embedding slot e·nd) whenever a step runs after
it is taken (m > 1, or a corrupted-token baseline, whose no-grad forward fills it before the clean
step); with a corrupted-token baseline its embedding output e' (e·nd); from the second step on, the
float64 sum of the steps' scores 8·B·n_src·n_dst. A step's own buffer is freed before the next step
allocates one. The no-grad baseline forward holds its buffer and one layer's transients at a time,
less than a gradient step. m = 1 with the zero baseline is plain EAP, and so is its estimate. Checked
against measured peaks at small sizes, "qkv" and "head", with and without checkpointing.

"head" granularity (H query heads, c = min(H, HEAD_CHUNK) heads handled together) changes:

- the source buffer: H + 1 slots per layer ((H+1)·e·nd) instead of 2, and the residual the layer's
  q/k/v read is kept per layer for the branch VJP (e·nd; with checkpointing it is the layer input,
  already kept); GQA is ungrouped, so attention keeps k and v at q_d width (kv_d' = q_d);
- the score accumulator grows with n_src = L(H+1)+1 and n_dst = L(3H+1)+1;
- transient phases: ``head_split`` (forward: the c head outputs e·c·nd and, for OLMo-2, their fp32
  frozen-scale shares 2·4·c·nd) and ``head_vjp`` (backward, one layer: the recomputed branch — the
  attention norm's fp32 copy and output (4 + e)·nd for pre-norm families, OLMo-2's projection and QK-norm
  fp32 copy (4 + e)·n·q_d —, the 3H per-head residual gradients kept for the layer's single contraction
  3H·e·nd, and the larger of one chunk's VJP (OLMo-2's head-masked gradients c·e·n·q_d, the fp32 norm
  backward and result c·(12 + e)·nd) and the contraction of 3H + 1 columns), in place of the q/k/v norm
  VJP. Checked against measured peaks at small sizes (tests/engine/test_memory.py).

Not counted: the weights, the framework's small workspaces, and the allocator's own overhead. The
estimate is the live bytes at the peak; what an allocator holds on top is its own. Measured on CPU
(benchmarks/memory_cpu*.json, random-init Llama-3-8B / Qwen2-7B shapes, 2 and 4 layers, T 1024 / 2048,
bf16, with and without checkpointing): with MALLOC_MMAP_THRESHOLD_=65536 (glibc returns freed blocks at
once, so RSS tracks live bytes) the peak RSS growth equals the estimate to 1%, per layer exactly; with
glibc's default (freed blocks under 32 MB stay in its heap) RSS runs 9–28% above it at these depths;
per layer (4 − 2 layers) RSS grows 1.2–1.4× the live cost, and with checkpointing 1.7–3.6× (the heap
fragments as each layer is recomputed), so at full depth the gap widens. On CUDA the caching allocator's ``max_memory_allocated`` counts live
bytes (reserved memory is higher); the CUDA terms follow the same model but are unmeasured.
The returned number is the itemised sum; :func:`memory_breakdown` returns the items.
"""

from __future__ import annotations

from typing import Any, Mapping

from .architectures import ARCHITECTURES, UnsupportedArchitectureError
from .graph import GRANULARITIES

# Constants mirrored from attribution.py: the loss's row chunk and the contraction's fp32-cast budget.
LOSS_CHUNK = 4096
CAST_ELEMENTS = 1 << 26
HEAD_CHUNK = 8
METHODS = ("eap", "eap-ig")
BASELINES = ("zero", "tokens")  # EAP-IG's baselines: zero ablation, or corrupted token ids
DEFAULT_IG_STEPS = 5  # integrated_gradients.DEFAULT_IG_STEPS

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
_DTYPE_ALIASES = {"fp64": "float64", "double": "float64", "fp32": "float32", "float": "float32",
                  "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
FLASH_STYLE = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
KEEPS_PROBABILITIES = ("eager",)


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _dtype_bytes(dtype: Any) -> int:
    name = str(dtype).replace("torch.", "")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; estimate_memory knows {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def attention_kernel(config: Any, device: str = "cuda") -> str:
    """``"flash"`` (no T² state kept for backward) or ``"eager"`` (the probabilities are kept), from
    the config's attention implementation (``_attn_implementation``; transformers' default "sdpa"
    when unset) and the device: SDPA dispatches to a flash-style kernel on CUDA and, for causal
    self-attention, to its CPU flash kernel on CPU (torch >= 2.3)."""
    dev = str(device).split(":")[0]
    if dev not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    impl = _get(config, "_attn_implementation", None) or "sdpa"
    if impl in KEEPS_PROBABILITIES:
        return "eager"
    if impl in FLASH_STYLE or "flash" in str(impl):
        return "flash"
    raise ValueError(f"unknown attention implementation {impl!r}; estimate_memory knows "
                     f"{', '.join(KEEPS_PROBABILITIES + FLASH_STYLE)}")


def memory_breakdown(config: Any, *, seq_len: int, batch_size: int = 1, dtype: Any = "bfloat16",
                     checkpointing: bool = False, granularity: str = "qkv", device: str = "cuda",
                     n_targets: int | None = None, padded: bool = False, method: str = "eap",
                     steps: int | None = None, baseline: str = "zero") -> dict[str, Any]:
    """The terms of :func:`estimate_memory` (bytes): ``layer`` (kept per layer), ``layers``
    (L × layer), ``fixed``, ``transient`` (the largest transient phase), ``phase`` (its name:
    "loss", "contraction", "mlp_backward", "norm_vjp", and at "head" granularity "head_split" or
    "head_vjp"), ``attention_T2`` (the per-layer
    probability term, 0 for a flash-style kernel), ``ig`` (what EAP-IG adds, included in ``layers``
    and ``fixed``; 0 for plain EAP) and ``total``."""
    config = getattr(config, "config", config)  # a model: use its config
    model_type = _get(config, "model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"estimate_memory: architecture {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"need seq_len >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
    ig_steps, tokens = ig_settings(method, steps, baseline)
    spec = ARCHITECTURES[model_type]
    e = _dtype_bytes(dtype)
    a = max(4, e)
    kernel = attention_kernel(config, device)
    on_cpu = str(device).split(":")[0] == "cpu"

    L = int(_get(config, "num_hidden_layers"))
    d = int(_get(config, "hidden_size"))
    H = int(_get(config, "num_attention_heads"))
    H_kv = int(_get(config, "num_key_value_heads", None) or H)
    d_h = int(_get(config, "head_dim", None) or d // H)
    F = int(_get(config, "intermediate_size"))
    V = int(_get(config, "vocab_size"))
    q_d, kv_d = H * d_h, H_kv * d_h
    B, T = batch_size, seq_len
    n = B * T
    nd = n * d
    N_t = B * (T - 1 if n_targets is None else min(int(n_targets), T - 1))
    pre_norm = spec.norm_position == "pre"
    heads = granularity == "head"
    c = min(H, HEAD_CHUNK)
    n_src = (H + 1 if heads else 2) * L + 1
    n_dst = {"qkv": 4, "block": 2}.get(granularity, 3 * H + 1) * L + 1
    m = {"qkv": 4, "block": 2}.get(granularity, 3 * H + 1)

    # --- kept per layer ---------------------------------------------------------------------
    norms = 2 * 4 * nd + (0 if pre_norm else 4 * n * (q_d + kv_d))
    if kernel == "flash":
        kv_eff = q_d if (padded or heads) else kv_d
        attn = e * n * (2 * q_d + 2 * kv_eff) + 4 * B * H * T
        t2 = 0
    else:
        t2 = B * H * T * T * (4 + (e if e != 4 else 0))
        attn = 3 * e * n * q_d + t2
    mlp = 3 * e * n * F
    buffer = (H + 1 if heads else 2) * e * nd
    activations = norms + attn + mlp
    kept_input = e * nd if heads else 0  # "head": the residual the layer's q/k/v read, for the branch VJP
    # EAP-IG: O − O' beside the step's own buffer, once any step runs after it is taken
    ig_buffer = ig_steps > 1 or tokens
    ig_layer = buffer if ig_buffer else 0
    layer = (e * nd + buffer if checkpointing else activations + buffer + kept_input) + ig_layer

    # --- kept for the whole call -------------------------------------------------------------
    mask = e * B * T * T if kernel == "eager" else (B * T * T if padded else 0)
    ig_fixed = (e * nd if ig_buffer else 0) + (e * nd if tokens else 0) \
        + (8 * B * n_src * n_dst if ig_steps > 1 else 0)  # O − O' embedding slot, e', float64 sum
    fixed = 2 * e * nd + 4 * nd + mask + 4 * B * n_src * n_dst + ig_fixed

    # --- the largest transient phase ----------------------------------------------------------
    cast = on_cpu and e not in (4, 8)

    def contraction(k: int, cols: int) -> int:
        out = cols * e * nd
        if cast:
            out += 4 * cols * nd + 4 * nd * min(k, max(1, CAST_ELEMENTS // nd))
        return out

    phases = {
        "loss": a * V * (N_t + 2 * min(N_t, LOSS_CHUNK)),
        "contraction": contraction(n_src, m),
        "mlp_backward": 3 * e * n * F,
        "norm_vjp": (2 * e + 3 * (3 * e + 8)) * nd if (pre_norm and granularity == "qkv") else 0,
    }
    if heads:
        phases["head_split"] = e * c * nd + (0 if pre_norm else 2 * 4 * c * nd)
        recomputed = (4 + e) * nd if pre_norm else (4 + e) * n * q_d
        vjp_step = (0 if pre_norm else c * e * n * q_d) + c * (12 + e) * nd
        phases["head_vjp"] = recomputed + 3 * H * e * nd + max(vjp_step, contraction(n_src, m))
    if checkpointing:  # a layer's activations come back while it is differentiated
        for k in ("contraction", "mlp_backward", "norm_vjp", "head_vjp"):
            if k not in phases:
                continue
            phases[k] += activations
    phase = max(phases, key=phases.get)
    total = fixed + L * layer + phases[phase]
    return {"layer": layer, "layers": L * layer, "fixed": fixed, "transient": phases[phase], "phase": phase,
            "attention_T2": t2, "ig": L * ig_layer + ig_fixed, "total": total}


def ig_settings(method: str, steps: int | None, baseline: str) -> tuple[int, bool]:
    """(steps m, corrupted-token baseline?) of a validated method: (1, False) for plain EAP."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES} (zero ablation or corrupted token ids), "
                         f"got {baseline!r}")
    if method == "eap":
        if baseline != "zero" or steps not in (None, 1):
            raise ValueError("steps and a token baseline apply to method='eap-ig' only; plain EAP is one pass "
                             "from the zero baseline")
        return 1, False
    steps = DEFAULT_IG_STEPS if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps, baseline == "tokens"


def estimate_memory(config: Any, *, seq_len: int, batch_size: int = 1, dtype: Any = "bfloat16",
                    checkpointing: bool = False, granularity: str = "qkv", device: str = "cuda",
                    n_targets: int | None = None, padded: bool = False, method: str = "eap",
                    steps: int | None = None, baseline: str = "zero") -> int:
    """Bytes :func:`attribute` needs beyond the model's weights for one batch, from the config alone.

    ``config``: a transformers config (or a model, or a dict of its fields) of a supported family
    (Llama, Mistral, Qwen2, OLMo-2; GQA and tied embeddings included — tying changes the weights,
    not the activations). ``seq_len``/``batch_size``: the padded batch shape. ``n_targets``: scored
    tokens per row (default seq_len − 1, the most there can be). ``padded``: rows of different
    lengths (a materialised mask; SDPA then repeats the k/v heads). The attention kernel follows from
    ``device`` and ``config._attn_implementation`` ("eager" keeps the T² probabilities, SDPA and
    flash-attention do not). ``method``/``steps``/``baseline``: attribute()'s EAP-IG settings
    (``baseline``: "zero", or "tokens" for corrupted token ids); EAP-IG keeps a second source buffer.
    Term by term: the module docstring; itemised: :func:`memory_breakdown`.
    Validated on CPU against measured peak RSS (tests/engine/test_memory.py, benchmarks/memory_cpu*.json):
    equal to 1% when RSS tracks live bytes (MALLOC_MMAP_THRESHOLD_=65536); under glibc's default
    malloc, whose heap keeps freed blocks, budget ~1.3× this on CPU (more with checkpointing at depth).
    CUDA figures follow the same model but are unmeasured.
    """
    return int(memory_breakdown(config, seq_len=seq_len, batch_size=batch_size, dtype=dtype,
                                checkpointing=checkpointing, granularity=granularity, device=device,
                                n_targets=n_targets, padded=padded, method=method, steps=steps,
                                baseline=baseline)["total"])
