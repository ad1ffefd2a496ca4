"""EAP-IG edge scores ("ig-inputs", Hanna et al. 2024; SPEC §11), run by
:func:`eapbench.engine.attribution.attribute` with ``method="eap-ig"``:

    W[u, v] = − (O_u − O_u') · (1/m) Σ_{k=1..m} ∂L/∂H_v |_(embeddings = e' + (k/m)(e − e'))

O_u are the clean source outputs, O_u' the baseline's: zero for the default zero-ablation
baseline (e' = 0, O' = 0), or those of a forward on corrupted token ids of the same shape
(e' their embeddings). The right Riemann sum (α_k = k/m) makes m = 1 with the zero baseline
plain EAP exactly. The loss is always the clean per-sample loss (clean targets).

Each step is one forward + backward with plain EAP's hooks and scorer, the embedding output
replaced by e' + α_k(e − e'). The scorer's source buffer holds that step's own outputs (the q/k/v
norm's backward rebuilds the step's residual from it), while destinations contract their
gradients with the fixed difference O − O' (the scorer's ``delta``). Step m (α = 1) is the clean
forward itself, so it runs first and yields O and the clean loss: the cost is m forward+backward
passes plus one no-grad forward on a corrupted baseline. Steps are summed in float64 and
divided by m; scores come back in plain EAP's dtype (float32). Memory: plain EAP's per step, plus
the fixed O − O' (a second source buffer) and the float64 sum kept across steps
(:func:`~eapbench.engine.memory.estimate_memory` with ``method="eap-ig"``).

Choosing the baseline: along the zero baseline's path α·e every norm amplifies small inputs by up
to 1/√eps, so the loss changes on scales down to √eps/‖e‖ and below near α = 0; the Riemann sums
then do not settle at any practical m (on the fp64 test models they still move at m = 4096, and
Σ_v W[input, v] stays far from L(0) − L(e)). A corrupted-token baseline gives a smooth path:
|W_m − W_2m| halves with each doubling of m and the input row tends to L(e') − L(e) (tested).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .architectures import ArchSpec, get_module
from .attribution import (AttributionError, _execution_mode, _frozen_parameters, _per_sample_loss, _Scorer,
                          attribution_hooks)
from .graph import ResidualGraph
from ..records import AttributionInputs

METHODS = ("eap", "eap-ig")
DEFAULT_IG_STEPS = 5  # the m of Hanna et al. (2024)


def check_method(model: nn.Module, input_ids: torch.Tensor | None, method: str, steps: int | None,
                 baseline: torch.Tensor | None) -> int:
    """The number of steps to run (1 for plain EAP), or an :class:`AttributionError` naming the problem
    (``input_ids`` is only read for the shape a baseline must have)."""
    if method not in METHODS:
        raise AttributionError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "eap":
        if baseline is not None:
            raise AttributionError("a baseline applies to method='eap-ig' only; plain EAP (method='eap') "
                                   "zero-ablates and takes no baseline")
        if steps not in (None, 1):
            raise AttributionError(f"steps={steps} applies to method='eap-ig' only; plain EAP is one pass")
        return 1
    if steps is None:
        steps = DEFAULT_IG_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttributionError(f"steps must be an integer >= 1 (the number of interpolation steps m), got {steps!r}")
    if baseline is not None:
        if not isinstance(baseline, torch.Tensor) or baseline.is_floating_point() or baseline.is_complex() \
                or baseline.dtype == torch.bool:
            raise AttributionError("baseline must be a tensor of corrupted token ids (integers) or None for the "
                                   f"zero baseline, got {type(baseline).__name__}"
                                   + (f" of dtype {baseline.dtype}" if isinstance(baseline, torch.Tensor) else ""))
        if input_ids is not None and baseline.shape != input_ids.shape:
            raise AttributionError(f"baseline shape {tuple(baseline.shape)} != input_ids shape "
                                   f"{tuple(input_ids.shape)}; a corrupted baseline has one token per input token")
        vocab = getattr(model.config, "vocab_size", None)
        if vocab is not None and baseline.numel() and (int(baseline.max()) >= vocab or int(baseline.min()) < 0):
            raise AttributionError(f"baseline token ids outside [0, {vocab}) for this model")
    return steps


def check_baseline_inputs(inputs: AttributionInputs, baseline: AttributionInputs | None, method: str) -> None:
    """A corrupted baseline for :func:`~eapbench.engine.attribution.score_inputs`: one row per sample of
    ``inputs``, each as long as its clean row (so every batch pads both to the same shape)."""
    if baseline is None:
        return
    if method != "eap-ig":
        raise AttributionError("a baseline applies to method='eap-ig' only; plain EAP (method='eap') "
                               "zero-ablates and takes no baseline")
    if len(baseline) != len(inputs):
        raise AttributionError(f"baseline has {len(baseline)} samples but the inputs have {len(inputs)}; "
                               "a corrupted baseline needs one row per sample")
    bad = [pid for pid, a, b in zip(inputs.problem_ids, inputs.input_ids, baseline.input_ids) if len(a) != len(b)]
    if bad:
        raise AttributionError(f"baseline rows differ in length from the clean rows of samples {bad[:5]}"
                               f"{' ...' if len(bad) > 5 else ''}; a corrupted baseline has one token per input token")


def ig_scores(model: nn.Module, graph: ResidualGraph, spec: ArchSpec, input_ids: torch.Tensor,
              loss_mask: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
              steps: int, baseline: torch.Tensor | None, checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 [B, n_src, n_dst] scores on the CPU, clean per-sample losses) of EAP-IG; inputs
    already validated and on the model's input device."""
    scorer = _Scorer(graph=graph, spec=spec, token_mask=attention_mask)
    base = get_module(model, spec.base)
    state: dict[str, Any] = {"alpha": None, "e0": None}

    def interpolate(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        alpha, e0 = state["alpha"], state["e0"]
        if alpha is None or alpha == 1.0:  # the baseline's own forward, or the clean one
            return None
        return alpha * out if e0 is None else e0 + alpha * (out - e0.to(out.device))

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return base(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False).last_hidden_state

    # ahead of attribution_hooks' own embedding hook, which makes the (interpolated) output the leaf
    handle = get_module(model, spec.embed).register_forward_hook(interpolate, prepend=True)
    try:
        with _frozen_parameters(model), _execution_mode(model, checkpointing), \
                attribution_hooks(model, graph, scorer):
            base_outputs = None
            if baseline is not None:
                with torch.no_grad():
                    forward(baseline.to(input_ids.device))
                base_outputs = scorer.outputs
                state["e0"] = base_outputs[:, 0].clone()
            total = None
            clean_losses = None
            for k in [steps, *range(1, steps)]:  # α = 1 first: the clean forward provides O and the loss
                state["alpha"] = k / steps
                with torch.enable_grad():
                    hidden = forward(input_ids)
                    losses = _per_sample_loss(model, spec, hidden, input_ids, loss_mask)
                    if k == steps:
                        clean_losses = losses.detach()
                        if not torch.isfinite(losses).all():
                            bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
                            raise AttributionError(f"non-finite loss for samples {bad} of the batch; check the "
                                                   "model's dtype (fp16 overflows) and the inputs")
                        if base_outputs is not None:  # O − O' in place of O', bit-exact: −O' + O
                            scorer.delta = base_outputs.neg_().add_(scorer.outputs)
                            del base_outputs
                    torch.autograd.grad(losses.sum(), [scorer.leaf])
                for layer in list(scorer.pending):  # destinations whose gradient never arrived score zero
                    scorer.flush_layer(layer)
                if scorer.delta is None:  # zero baseline: O − O' = O, the buffer of this clean step
                    scorer.delta = scorer.outputs
                total = scorer.scores.double() if total is None else total.add_(scorer.scores)  # float64 sum
                del scorer.outputs, scorer.scores  # freed before the next step allocates its own (O − O' stays)
    finally:
        handle.remove()
    scores = (total / steps).to(scorer.score_dtype).cpu()
    del scorer, total
    bad_rows = (~torch.isfinite(scores).flatten(1).all(1)).nonzero().flatten().tolist()
    if bad_rows:
        raise AttributionError(f"non-finite gradients: edge scores of samples {bad_rows} (batch rows) contain "
                               "NaN/inf; the model overflowed in backward — try float32 or bfloat16")
    return scores, clean_losses.cpu()
