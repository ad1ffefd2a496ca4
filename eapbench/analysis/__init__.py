"""Analysis: what edge scores say — the claim metrics and their paired statistics.

``metrics`` (intensity, complexity, kurtosis, diversity, output-edge entropy), ``stats`` (paired
bootstrap, verdicts, permutation test, Benjamini–Hochberg), ``stability`` (top-k edge-set Jaccard
across bootstrap resamples).
May import: numpy, scipy, torch and the shared top-level modules; nothing else of eapbench.
"""
