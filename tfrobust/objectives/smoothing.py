"""Training for randomized smoothing: Gaussian data augmentation (Cohen et al. 2019) and
consistency regularisation (Jeong & Shin 2020)."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import keras
import tensorflow as tf

from tfrobust import losses
from tfrobust.attacks.kl import gaussian_noise
from tfrobust.objectives.base import Term, check_coefficient
from tfrobust.objectives.context import StepContext
from tfrobust.utils import check_positive, check_positive_int, scalar

__all__ = ["NoisyCopy", "noisy_copies", "consistency_loss", "GaussianNoise", "Consistency"]


@dataclasses.dataclass(frozen=True)
class NoisyCopy:
    """Copy ``index`` of the batch under Gaussian noise, ``x + N(0, sigma² I)``, as a point of a
    :class:`StepContext` (the interface of :class:`~tfrobust.attacks.AttackConfig`).

    Not clipped to the input range (Cohen et al.). Drawn once per step outside the weight tape
    through :func:`tfrobust.attacks.kl.gaussian_noise`, so terms naming the same copy share it and
    its forward pass. ``eps_scale`` (the eps warm-up) does not shrink the noise.
    """

    sigma: float
    index: int = 0

    name: ClassVar[str] = "gaussian_noise"

    def __post_init__(self):
        check_positive("sigma", self.sigma)
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"index={self.index!r} must be a non-negative integer")

    def __call__(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False,
                 eps_scale=None) -> tf.Tensor:
        """``x`` plus fresh noise (``model``, ``y``, ``clip``, ``training``, ``eps_scale`` unused)."""
        x = tf.convert_to_tensor(x)
        return tf.stop_gradient(x + scalar(self.sigma, x.dtype) * gaussian_noise(tf.shape(x), x.dtype))

    def to_dict(self) -> dict:
        """JSON-friendly description."""
        return {"name": self.name, **dataclasses.asdict(self)}


def noisy_copies(sigma: float, copies: int) -> list[NoisyCopy]:
    """The points ``NoisyCopy(sigma, 0..copies-1)``."""
    return [NoisyCopy(float(sigma), i) for i in range(check_positive_int("copies", copies))]


def consistency_loss(logits: list[tf.Tensor], lam: float, eta: float) -> tf.Tensor:
    """Jeong & Shin's per-example regulariser ``lam * mean_i KL(p̄ || p_i) + eta * H(p̄)``.

    ``p_i = softmax(logits_i)`` of each noisy copy, ``p̄`` their mean; computed in log space
    (``log p̄`` by logsumexp). The gradient flows through ``p̄`` as in the authors' code.
    """
    log_p = tf.stack([tf.nn.log_softmax(z, axis=-1) for z in logits])  # [m, B, C]
    log_mean = tf.reduce_logsumexp(log_p, axis=0) - math.log(len(logits))
    mean = tf.exp(log_mean)
    kl = tf.reduce_mean(tf.reduce_sum(mean[None] * (log_mean[None] - log_p), axis=-1), axis=0)
    entropy = -tf.reduce_sum(mean * log_mean, axis=-1)
    return scalar(lam, kl.dtype) * kl + scalar(eta, kl.dtype) * entropy


@keras.saving.register_keras_serializable(package="tfrobust")
class GaussianNoise(Term):
    """Gaussian data augmentation (Cohen et al. 2019): mean CE over ``copies`` noisy copies of the batch.

    ``CE(f(x + δ_i), y)`` with ``δ_i ~ N(0, sigma² I)``, not clipped. Replaces
    :class:`CrossEntropy` in an objective; train at the sigma you will certify with.

    Args:
        sigma: noise standard deviation in input units (Cohen et al.: 0.25, 0.5, 1.0 on [0, 1]).
        copies: noisy copies per example (1 in Cohen et al.; :class:`Consistency` uses 2).
    """

    name = "noise_ce"

    def __init__(self, sigma: float = 0.25, copies: int = 1):
        self.sigma = check_positive("sigma", sigma)
        self.copies = check_positive_int("copies", copies)

    def attacks(self) -> list:
        return noisy_copies(self.sigma, self.copies)

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        return tf.add_n([losses.cross_entropy(ctx.logits(p), ctx.y) for p in self.attacks()]) / self.copies

    def get_config(self) -> dict:
        return {"sigma": self.sigma, "copies": self.copies}


@keras.saving.register_keras_serializable(package="tfrobust")
class Consistency(Term):
    """Consistency regularisation (Jeong & Shin, NeurIPS 2020) over ``copies`` noisy copies.

    The penalty ``lam * mean_i KL(p̄ || p_i) + eta * H(p̄)`` (:func:`consistency_loss`), added to
    ``GaussianNoise(sigma, copies)``, whose copies it shares (the same points, one forward pass
    each). The authors' MNIST settings: ``copies = 2``, ``eta = 0.5``, ``lam = 10`` at sigma 0.25
    and ``lam = 5`` at sigma 0.5 and 1.0 (their EXPERIMENTS.MD; LeNet, SGD lr 0.01, 90 epochs).
    A penalty: the penalty warm-up scales it.

    Args:
        sigma: noise standard deviation, as in the base term.
        copies: noisy copies, at least 2 for the KL to be non-zero.
        lam: weight of the consistency KL.
        eta: weight of the entropy of the mean prediction.
    """

    name = "consistency"
    penalty = True

    def __init__(self, sigma: float = 0.25, copies: int = 2, lam: float = 10.0, eta: float = 0.5):
        self.sigma = check_positive("sigma", sigma)
        self.copies = check_positive_int("copies", copies)
        if self.copies < 2:
            raise ValueError(f"copies={copies!r} must be at least 2 (one copy is always consistent)")
        self.lam, self.eta = check_coefficient("lam", lam), check_coefficient("eta", eta)

    def attacks(self) -> list:
        return noisy_copies(self.sigma, self.copies)

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        return consistency_loss([ctx.logits(p) for p in self.attacks()], self.lam, self.eta)

    def get_config(self) -> dict:
        return {"sigma": self.sigma, "copies": self.copies, "lam": self.lam, "eta": self.eta}
