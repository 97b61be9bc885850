"""Certified training: cross-entropy on the worst-case logits that bound propagation proves."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfrobust import bounds, losses
from tfrobust.attacks.base import check_fraction, check_number
from tfrobust.objectives.base import Term
from tfrobust.objectives.context import CLEAN, StepContext
from tfrobust.utils import check_choice

__all__ = ["CertifiedTraining", "ramp"]


def ramp(start: float, end: float, progress) -> tf.Tensor | float:
    """``start + (end - start) * progress``; ``progress=None`` (no warm-up running) is ``end``."""
    if progress is None:
        return end
    return start + (end - start) * tf.cast(progress, tf.float32)


@keras.saving.register_keras_serializable(package="tfrobust")
class CertifiedTraining(Term):
    """IBP (Gowal et al. 2019) or CROWN-IBP (Zhang et al. 2020) training at L∞ radius ``eps``.

    Per example ``kappa * CE(z(x), y) + (1 - kappa) * CE(-m(x), y)``, where ``m_j`` is the proven
    lower bound on ``z_y - z_j`` over the ball (0 at j = y): ``-m`` are the worst-case logits of
    the specification folded into the last layer. With ``method="crown-ibp"``, ``m`` is
    ``beta * CROWN-IBP + (1 - beta) * IBP``. Replaces :class:`CrossEntropy` in an objective.

    ``eps``, ``kappa`` and ``beta`` follow the model's eps warm-up
    (``RobustModel(eps_warmup_steps=...)``): over it eps grows linearly to ``eps``, kappa moves
    from ``kappa_start`` to ``kappa`` and beta from ``beta_start`` to ``beta`` (Gowal et al.: kappa
    1 -> 0.5; Zhang et al.: beta 1 -> 0). Evaluation uses the final values.

    Args:
        eps: the training radius (the papers train MNIST at 0.4 for a test radius of 0.3).
        method: ``"ibp"`` or ``"crown-ibp"``.
        kappa: weight of the clean cross-entropy after the warm-up.
        kappa_start: its weight at the start.
        beta: CROWN-IBP's weight of the linear bound after the warm-up.
        beta_start: its weight at the start.
    """

    name = "certified_ce"

    def __init__(self, eps: float = 0.3, method: str = "ibp", kappa: float = 0.5, kappa_start: float = 1.0,
                 beta: float = 0.0, beta_start: float = 1.0):
        check_number("eps", eps)
        self.eps = float(eps)
        self.method = check_choice("method", method, bounds.BOUND_METHODS)
        for name, value in (("kappa", kappa), ("kappa_start", kappa_start), ("beta", beta),
                            ("beta_start", beta_start)):
            check_fraction(name, value)
        self.kappa, self.kappa_start = float(kappa), float(kappa_start)
        self.beta, self.beta_start = float(beta), float(beta_start)

    def worst_case_logits(self, ctx: StepContext) -> tf.Tensor:
        """``-m``: the logits of the worst case that the bound allows, per example and class."""
        scale = ctx.eps_scale
        eps = self.eps if scale is None else self.eps * tf.cast(scale, tf.float32)
        if self.method == "ibp":
            m = bounds.margin_lower_bounds(ctx.model, ctx.x, ctx.y, eps, method="ibp", clip=ctx.clip)
        else:
            beta = ramp(self.beta_start, self.beta, scale)
            m = bounds.mixed_margin_lower_bounds(ctx.model, ctx.x, ctx.y, eps, beta=beta, clip=ctx.clip)
        return -m

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        worst = losses.cross_entropy(self.worst_case_logits(ctx), ctx.y)
        kappa = tf.cast(ramp(self.kappa_start, self.kappa, ctx.eps_scale), worst.dtype)
        clean = losses.cross_entropy(ctx.logits(CLEAN), ctx.y)
        return kappa * clean + (1.0 - kappa) * worst

    def get_config(self) -> dict:
        return {"eps": self.eps, "method": self.method, "kappa": self.kappa, "kappa_start": self.kappa_start,
                "beta": self.beta, "beta_start": self.beta_start}
