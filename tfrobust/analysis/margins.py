"""Sample margins, raw and normalised (Wen, Li, Jia 2020; docs/architecture.md).

The raw margin of an example is the decision function of Yu et al.,
``d(x) = z_y(x) - max_{i != y} z_i(x)`` on the logits: positive when the
example is classified correctly, zero on the decision boundary. Logits can be
scaled at will, so the raw margin says little about the distance to the
boundary; the *normalised* margin divides it by the dual norm of its input
gradient, ``d / ||∇_x d||_*``, the first-order estimate of the distance to the
boundary in input units for the threat norm (the ``effective_margin`` of the
``robustness`` serving signature).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust import utils
from tfrobust.models import unwrap
from tfrobust.attacks import resolve_labels

__all__ = [
    "decision_and_gradient",
    "normalised_margin",
    "Margins",
    "sample_margins",
    "summarize",
]


def decision_and_gradient(model: Callable, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The decision function ``d`` ``[N]`` and its input gradient ``∇_x d`` (shape of ``x``)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        d = losses.decision_margin(model(x, training=False), y)
    return d, tape.gradient(d, x)


def normalised_margin(d: tf.Tensor, grad: tf.Tensor, norm: str = "linf") -> tf.Tensor:
    """``d / ||∇_x d||_*``: first-order distance to the decision boundary for the threat ``norm``.

    Args:
        d: decision function values ``[N]``.
        grad: their input gradients ``[N, ...]``.
        norm: threat norm, ``"linf"`` (divides by the L1 norm) or ``"l2"``.
    """
    return norms.safe_ratio(d, norms.dual_norm(grad, norm))


@dataclasses.dataclass
class Margins:
    """Per-example margins of one model on one set of inputs.

    Attributes:
        raw: ``d(x)`` on logits ``[N]``.
        normalised: ``d / ||∇_x d||_*`` ``[N]`` (input units).
        grad_norm: ``||∇_x d||_*`` ``[N]``.
        correct: whether ``d > 0`` ``[N]``.
        norm: the threat norm of the normalisation.
    """

    raw: np.ndarray
    normalised: np.ndarray
    grad_norm: np.ndarray
    correct: np.ndarray
    norm: str

    def summary(self) -> dict:
        """JSON-friendly statistics of both distributions."""
        return {"norm": self.norm, "raw": summarize(self.raw), "normalised": summarize(self.normalised),
                "grad_norm": summarize(self.grad_norm), "accuracy": float(np.mean(self.correct))}


def sample_margins(model, x, y=None, *, norm: str = "linf", batch_size: int = 256,
                   progress: bool = False) -> Margins:
    """Raw and normalised sample margins of ``model`` on ``(x, y)``.

    Args:
        model: classifier returning logits (a RobustModel is unwrapped).
        x: inputs ``[N, ...]``.
        y: integer labels ``[N]``; ``None`` uses the model's predictions.
        norm: threat norm of the normalisation (``"linf"`` or ``"l2"``).
        batch_size: examples per forward pass.
        progress: show a progress bar.

    Returns:
        :class:`Margins`.
    """
    norms.validate_norm(norm)
    batch_size = utils.check_positive_int("batch_size", batch_size)
    model = unwrap(model)
    x = tf.convert_to_tensor(x)
    y = resolve_labels(model, x, y, targeted=False)

    parts = [_margin_step(model, x[s], y[s], norm) for s in utils.progress(
        utils.batches(int(x.shape[0]), batch_size), enabled=progress, desc="margins")]
    raw, normed, gnorm = (np.concatenate([p[i].numpy() for p in parts]) for i in range(3))
    return Margins(raw=raw, normalised=normed, grad_norm=gnorm, correct=raw > 0, norm=norm)


@tf.function(reduce_retracing=True)
def _margin_step(model, x, y, norm):
    _, d, dual = losses.margin_and_gradient_norm(model, x, y, norm=norm)
    return d, norms.safe_ratio(d, dual), dual


def summarize(values) -> dict:
    """Mean, standard deviation, median and the 5/25/75/95 % quantiles, as floats."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {"mean": None, "std": None, "median": None, "q05": None, "q25": None, "q75": None, "q95": None}
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(q[2]),
            "q05": float(q[0]), "q25": float(q[1]), "q75": float(q[3]), "q95": float(q[4])}
