"""eapbench: regression tests for what RL fine-tuning does inside a model's circuitry.

Public API (see README): build a :class:`ResidualGraph`, score edges with
:func:`attribute`, summarise with :mod:`eapbench.metrics`, decide with :mod:`eapbench.stats`.
"""

from .records import AttributionInputs, ModelSpec, Problem

__all__ = ["AttributionInputs", "ModelSpec", "Problem"]
__version__ = "0.1.0"
