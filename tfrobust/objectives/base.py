"""Terms and objectives, and the base losses: cross-entropy and adversarial training."""

from __future__ import annotations

from typing import Iterable, Sequence

import keras
import tensorflow as tf

from tfrobust import attacks, losses
from tfrobust.attacks import AttackConfig
from tfrobust.objectives.context import CLEAN, StepContext
from tfrobust.utils import scalar

__all__ = [
    "Term",
    "CrossEntropy",
    "AdversarialTraining",
    "FastAdversarialTraining",
    "Objective",
    "as_objective",
]


def check_coefficient(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name}={value!r} must be non-negative")
    return value


class Term:
    """One additive part of an objective; returns one value per example.

    Subclasses set ``name`` (the metric reported in ``fit`` logs) and
    implement :meth:`__call__` and :meth:`get_config`. Regularisers added to a
    base loss set ``penalty = True``: the penalty warm-up
    (``RobustModel(penalty_warmup_steps=...)``) scales them and nothing else.
    """

    name: str = "term"
    penalty: bool = False

    def attacks(self) -> list[AttackConfig]:
        """Adversarial points this term needs."""
        return []

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor's arguments, for Keras serialisation (subclasses add theirs)."""
        return {}

    @classmethod
    def from_config(cls, config: dict):
        """The term that :meth:`get_config` describes."""
        return cls(**config)

    def __add__(self, other) -> "Objective":
        return Objective([self]) + other

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))


def as_attack(config) -> AttackConfig:
    """A training attack from a config or a dict of its fields (:func:`tfrobust.attacks.as_attack`)."""
    return attacks.as_attack(config, use="training")


def as_point(at) -> str | AttackConfig:
    if at in (None, CLEAN):
        return CLEAN
    return as_attack(at)


def point_config(point) -> str | dict:
    return point if point == CLEAN else point.to_dict()


@keras.saving.register_keras_serializable(package="tfrobust")
class CrossEntropy(Term):
    """Natural training: softmax cross-entropy on the clean input."""

    name = "ce"

    def __init__(self, weight: float = 1.0):
        self.weight = check_coefficient("weight", weight)

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        logits = ctx.logits(CLEAN)
        return scalar(self.weight, logits.dtype) * losses.cross_entropy(logits, ctx.y)

    def get_config(self) -> dict:
        return {"weight": self.weight}


@keras.saving.register_keras_serializable(package="tfrobust")
class AdversarialTraining(Term):
    """Adversarial training (Madry et al.): ``(1 - mix) CE(x) + mix CE(x_adv)``.

    Replaces :class:`CrossEntropy` in an objective (it contains the clean
    part when ``mix < 1``). ``attack`` is any :class:`AttackConfig`, e.g. PGD,
    or C&W-margin PGD as the decision-surface paper's baseline.
    """

    name = "adv_ce"

    def __init__(self, attack: AttackConfig | dict | None = None, mix: float = 1.0):
        self.attack = as_attack(attack or AttackConfig())
        mix = float(mix)
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix={mix!r} must be in [0, 1]")
        self.mix = mix

    def attacks(self) -> list[AttackConfig]:
        return [self.attack]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        adv_logits = ctx.logits(self.attack)
        value = scalar(self.mix, adv_logits.dtype) * losses.cross_entropy(adv_logits, ctx.y)
        if self.mix < 1.0:
            clean = losses.cross_entropy(ctx.logits(CLEAN), ctx.y)
            value += scalar(1.0 - self.mix, adv_logits.dtype) * clean
        return value

    def get_config(self) -> dict:
        return {"attack": self.attack.to_dict(), "mix": self.mix}


@keras.saving.register_keras_serializable(package="tfrobust")
class FastAdversarialTraining(AdversarialTraining):
    """"Fast is better than free" (Wong et al. 2020): FGSM from a random start.

    One step of size ``alpha`` (default ``1.25 * eps``) from a uniform random
    point in the ball, projected back onto the ball.
    """

    name = "fast_adv_ce"

    def __init__(self, eps: float = 0.3, alpha: float | None = None, norm: str = "linf",
                 mix: float = 1.0):
        self.eps = float(eps)
        self.alpha = 1.25 * self.eps if alpha is None else float(alpha)
        self.norm = norm
        super().__init__(AttackConfig(name="pgd", eps=self.eps, steps=1, step_size=self.alpha,
                                      norm=norm, random_start=True), mix=mix)

    def get_config(self) -> dict:
        return {"eps": self.eps, "alpha": self.alpha, "norm": self.norm, "mix": self.mix}


@keras.saving.register_keras_serializable(package="tfrobust")
class Objective:
    """A sum of terms; what a :class:`~tfrobust.models.RobustModel` minimises.

    Args:
        terms: the terms; names must be distinct (they are metric names).
    """

    def __init__(self, terms: Sequence[Term | dict] = ()):
        self.terms = [t if isinstance(t, Term) else keras.saving.deserialize_keras_object(t)
                      for t in terms]
        if not self.terms:
            raise ValueError("an Objective needs at least one term")
        names = [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"objective terms must have distinct names, got {names}")

    @property
    def metric_names(self) -> list[str]:
        """Names of the per-term metrics, in order."""
        return [t.name for t in self.terms]

    def attacks(self) -> list[AttackConfig]:
        """Distinct adversarial points the terms need."""
        seen: list[AttackConfig] = []
        for term in self.terms:
            for attack in term.attacks():
                if attack not in seen:
                    seen.append(attack)
        return seen

    def __call__(self, ctx: StepContext, sample_weight=None) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Total loss (batch mean of the summed terms) and each term's batch mean.

        Penalty terms are multiplied by ``ctx.penalty_scale`` when it is set (the
        warm-up); their metric is the scaled value, the part the loss contains.
        """
        parts = {}
        for term in self.terms:
            value = term(ctx)
            if term.penalty and ctx.penalty_scale is not None:
                value = value * tf.cast(ctx.penalty_scale, value.dtype)
            if sample_weight is not None:
                value = value * tf.cast(tf.reshape(sample_weight, [-1]), value.dtype)
            parts[term.name] = tf.reduce_mean(value)
        total = tf.add_n(list(parts.values()))
        return total, parts

    def __add__(self, other) -> "Objective":
        if isinstance(other, Term):
            return Objective(self.terms + [other])
        if isinstance(other, Objective):
            return Objective(self.terms + other.terms)
        return NotImplemented

    def get_config(self) -> dict:
        """The serialised terms, for Keras serialisation."""
        return {"terms": [keras.saving.serialize_keras_object(t) for t in self.terms]}

    @classmethod
    def from_config(cls, config: dict) -> "Objective":
        """The objective that :meth:`get_config` describes."""
        return cls(config["terms"])

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)


def as_objective(objective: Objective | Term | Iterable[Term] | None) -> Objective:
    """Normalises ``None`` (natural training), a term or a list of terms to an :class:`Objective`."""
    if objective is None:
        return Objective([CrossEntropy()])
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, Term):
        return Objective([objective])
    if isinstance(objective, dict):
        return keras.saving.deserialize_keras_object(objective)
    return Objective(list(objective))
