"""TRADES (Zhang et al. 2019) and MART (Wang et al. 2020)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks import AttackConfig
from tfrobust.attacks.kl import KLAttack, kl_divergence
from tfrobust.objectives.base import Term, as_attack, check_coefficient
from tfrobust.objectives.context import CLEAN, StepContext
from tfrobust.utils import scalar

__all__ = [
    "Trades",
    "mart_loss",
    "Mart",
]


@keras.saving.register_keras_serializable(package="tfrobust")
class Trades(Term):
    """TRADES (Zhang et al. 2019): ``CE(z(x), y) + beta * KL(p(x) || p(x'))``.

    ``x'`` maximises the KL (:func:`KLAttack`, generated in inference mode
    once per step); the loss's two forward passes use the step's ``training``
    flag and the gradient flows through both distributions, as in the
    authors' code (``KLDivLoss`` with batch-mean reduction = our per-example
    KL averaged by the objective). Replaces :class:`CrossEntropy` in an
    objective. The paper uses ``beta = 6`` on CIFAR-10 (1/λ in its notation).

    Args:
        beta: weight of the KL term.
        attack: a :func:`KLAttack` (default ``KLAttack()``), or any
            :class:`AttackConfig` for a label-based variant.
    """

    name = "trades"

    def __init__(self, beta: float = 6.0, attack: "AttackConfig | dict | None" = None):
        self.beta = check_coefficient("beta", beta)
        self.attack = KLAttack() if attack is None else as_attack(attack)

    def attacks(self) -> list:
        return [self.attack]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        clean = ctx.logits(CLEAN)
        adv = ctx.logits(self.attack)
        beta = scalar(self.beta, clean.dtype)
        return losses.cross_entropy(clean, ctx.y) + beta * kl_divergence(clean, adv)

    def get_config(self) -> dict:
        return {"beta": self.beta, "attack": self.attack.to_dict()}


def mart_loss(clean_logits: tf.Tensor, adv_logits: tf.Tensor, y: tf.Tensor, beta: float) -> tf.Tensor:
    """Per-example MART loss (Wang et al. 2020), as in the authors' code.

    ``BCE(p', y) + beta * KL(p || p') * (1 - p_y)`` with ``p = softmax(z(x))``,
    ``p' = softmax(z(x'))`` and the boosted CE
    ``BCE = CE(z(x'), y) - log(1.0001 - p'_{j} + TINY)``, ``j`` the most
    probable wrong class at ``x'``; the KL uses ``log(p' + TINY)`` and the
    weight ``1.0000001 - p_y``, as published (``TINY = 1e-12``, :data:`tfrobust.norms.TINY`).
    """
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    dtype = adv_logits.dtype
    adv_probs = tf.nn.softmax(adv_logits, axis=-1)
    onehot = tf.one_hot(y, tf.shape(adv_logits)[-1], dtype=dtype)
    wrong = tf.reduce_max(adv_probs - onehot * scalar(2.0, dtype), axis=-1)  # best wrong class prob
    bce = (losses.cross_entropy(adv_logits, y)
           - tf.math.log(scalar(1.0001, dtype) - wrong + scalar(norms.TINY, dtype)))
    log_nat = tf.nn.log_softmax(clean_logits, axis=-1)
    nat_probs = tf.exp(log_nat)
    kl = tf.reduce_sum(nat_probs * (log_nat - tf.math.log(adv_probs + scalar(norms.TINY, dtype))), axis=-1)
    true_probs = tf.reduce_sum(onehot * nat_probs, axis=-1)
    return bce + scalar(beta, dtype) * kl * (scalar(1.0000001, dtype) - true_probs)


@keras.saving.register_keras_serializable(package="tfrobust")
class Mart(Term):
    """MART (Wang et al., ICLR 2020): misclassification-aware adversarial training.

    Per example (see :func:`mart_loss`): boosted CE at the adversarial point
    plus ``beta * KL(p(x) || p(x')) * (1 - p_y(x))``. Replaces
    :class:`CrossEntropy` in an objective. The paper uses ``beta = 6`` and
    PGD-10 (eps 8/255, step 2/255) with random start on CIFAR-10.

    Args:
        beta: weight of the misclassification-aware KL term.
        attack: the training attack (default ``AttackConfig()``: PGD-10,
            uniform random start in the ball).
    """

    name = "mart"

    def __init__(self, beta: float = 6.0, attack: "AttackConfig | dict | None" = None):
        self.beta = check_coefficient("beta", beta)
        self.attack = AttackConfig() if attack is None else as_attack(attack)

    def attacks(self) -> list:
        return [self.attack]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        return mart_loss(ctx.logits(CLEAN), ctx.logits(self.attack), ctx.y, self.beta)

    def get_config(self) -> dict:
        return {"beta": self.beta, "attack": self.attack.to_dict()}
