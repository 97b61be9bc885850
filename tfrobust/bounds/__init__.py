"""Certified robustness by bound propagation: IBP and CROWN-IBP over an L∞ ball in the clip box.

:func:`margin_lower_bounds` proves, per example and class j, a lower bound on ``z_y - z_j`` for
every input in the ball; :func:`verified` says where all of them are positive, and
:func:`certified_radius` finds by bisection the largest radius at which they are. Everything
is graph-safe and batched, and differentiable with respect to the weights, so
:class:`~tfrobust.objectives.CertifiedTraining` trains on it inside ``fit``.

Example::

    lb = bounds.margin_lower_bounds(model.classifier, x, y, eps=0.3, method="crown-ibp")
    radius, predicted = bounds.certified_radius(model.classifier, x)
"""

from tfrobust.bounds.certify import bisection_steps, certified_radius, is_verified, verified
from tfrobust.bounds.graph import MONOTONE_ACTIVATIONS, Graph, Node, graph_of
from tfrobust.bounds.propagate import (BOUND_METHODS, input_box, interval_bounds, logit_bounds,
                                       margin_lower_bounds, mixed_margin_lower_bounds, specification)

__all__ = [
    "BOUND_METHODS",
    "MONOTONE_ACTIVATIONS",
    "Graph",
    "Node",
    "graph_of",
    "input_box",
    "interval_bounds",
    "logit_bounds",
    "specification",
    "margin_lower_bounds",
    "mixed_margin_lower_bounds",
    "is_verified",
    "verified",
    "certified_radius",
    "bisection_steps",
]
