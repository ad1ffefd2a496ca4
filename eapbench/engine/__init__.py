"""The engine: a decoder's residual graph and its one-pass Edge Attribution Patching scores.

``architectures`` (where each family keeps its layers), ``graph`` (nodes and edges),
``attribution`` (EAP scores), ``integrated_gradients`` (EAP-IG, ``attribute(method="eap-ig")``),
``export`` (EAP-IG / MIB circuit JSON), ``faithfulness`` (MIB CPR / CMD curves by mean-ablation edge
patching).
May import: the shared top-level modules (``records``, ``cache``) only.
"""
