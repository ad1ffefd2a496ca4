"""The engine: a decoder's residual graph and its one-pass Edge Attribution Patching scores.

``architectures`` (where each family keeps its layers), ``graph`` (nodes and edges),
``attribution`` (EAP scores), ``export`` (EAP-IG / MIB circuit JSON).
May import: the shared top-level modules (``records``, ``cache``) only.
"""
