"""The names the library accepts, in one module that imports nothing.

The command line lists them in ``--help`` without loading TensorFlow
(docs/architecture.md, "Command line"); the library modules that use them
import them from here.
"""

__all__ = ["NORMS", "ATTACK_LOSSES", "PENALTY_NORMS", "STRATEGIES", "BOUND_METHODS"]

NORMS = ("linf", "l2")
"""Threat norms the attacks support."""

ATTACK_LOSSES = ("ce", "cw", "dlr")
"""Losses an attack can climb (``tfrobust.losses.attack_loss``)."""

PENALTY_NORMS = ("l1", "l2", "l2_squared", "linf")
"""Norms R for gradient penalties ``R(∇_x f)``."""

STRATEGIES = ("none", "mirrored", "multiworker")
"""Distribution strategies of ``tfrobust train``."""

BOUND_METHODS = ("ibp", "crown-ibp")
"""Bound-propagation methods that certify a prediction (``tfrobust.bounds``)."""
