"""eapbench: regression tests for what RL fine-tuning does inside a model's circuitry.

The public API, in the order data flows (see README and ../shared/DESIGN.md):

- :class:`ResidualGraph` — node names and edge mask of a decoder's residual graph;
- :func:`attribute` / :func:`score_inputs` — one-pass EAP edge scores → :class:`EdgeScores`;
- :mod:`eapbench.metrics` — intensity, complexity, kurtosis, diversity, output-edge entropy;
- :func:`paired_bootstrap` / :func:`verdict` — paired intervals and pass/fail/inconclusive;
- :func:`to_mib_json` — export a scored graph to the EAP-IG / MIB circuit format;
- :func:`faithfulness_curve` — MIB circuit faithfulness (CPR / CMD) of edge scores;
- :func:`topk_stability` — Jaccard stability of top-k edge sets across bootstrap resamples.
"""

from .engine.architectures import ARCHITECTURES, UnsupportedArchitectureError
from .engine.attribution import AttributionError, EdgeScores, attribute, score_inputs
from .engine.export import from_mib_json, to_mib_json
from .engine.faithfulness import FaithfulnessCurve, faithfulness_curve
from .engine.graph import ResidualGraph
from .engine.memory import estimate_memory
from .analysis.metrics import (activation_intensity, distribution_kurtosis, information_complexity,
                      inter_sample_diversity, output_edge_entropy, output_edge_entropy_per_node,
                      relative_change)
from .models import load_model, load_smollm2
from . import zoo as _zoo  # noqa: F401  (registers the zoo:<name> model names with load_model)
from .records import AttributionInputs, ModelSpec, Problem
from .analysis.stability import StabilityResult, topk_stability
from .analysis.stats import BootstrapResult, Verdict, benjamini_hochberg, paired_bootstrap, paired_permutation_test, verdict

__all__ = [
    "ARCHITECTURES", "AttributionError", "AttributionInputs", "BootstrapResult", "EdgeScores", "FaithfulnessCurve",
    "ModelSpec", "StabilityResult", "faithfulness_curve", "topk_stability",
    "Problem", "ResidualGraph", "UnsupportedArchitectureError", "Verdict", "activation_intensity", "attribute",
    "benjamini_hochberg", "distribution_kurtosis", "estimate_memory", "from_mib_json", "information_complexity",
    "inter_sample_diversity", "load_model", "load_smollm2", "output_edge_entropy", "output_edge_entropy_per_node",
    "paired_bootstrap", "paired_permutation_test", "relative_change", "score_inputs", "to_mib_json", "verdict",
]
__version__ = "0.1.0"
