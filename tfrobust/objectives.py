"""Training objectives as small, composable, Keras-serialisable terms.

An :class:`Objective` is a sum of :class:`Term` s. Each term returns one value
per example (its coefficient already applied); the objective averages each
over the batch, adds them up and reports every term as a metric. Terms that
need adversarial points name their :class:`~tfrobust.attacks.AttackConfig`;
the :class:`StepContext` generates each such point once per step, outside the
weight tape, and shares it between terms.

Input-gradient penalties use double backprop: a persistent inner tape on the
input records the forward pass inside the weight tape, so the penalty's
gradient with respect to the weights flows through the input gradient
(DESIGN §3.6).

Example::

    objective = CrossEntropy() + DecisionJacobian(c=500.0, norm="l2")
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import keras
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks import AttackConfig

__all__ = [
    "PENALTY_NORMS",
    "penalty_norm",
    "StepContext",
    "Term",
    "CrossEntropy",
    "AdversarialTraining",
    "FastAdversarialTraining",
    "DecisionJacobian",
    "InputGradient",
    "Objective",
    "as_objective",
    "CLEAN",
]

PENALTY_NORMS = ("l1", "l2", "l2_squared", "linf")
"""Norms R for gradient penalties ``R(∇_x f)``."""

CLEAN = "clean"
"""Key of the clean input in a :class:`StepContext`."""

_SQRT_EPS = 1e-12


def penalty_norm(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-example size ``R(grad)`` of an input gradient.

    ``l2`` is ``sqrt(sum g² + 1e-12)`` so that its gradient is finite at zero.

    Raises:
        ValueError: if ``norm`` is not in :data:`PENALTY_NORMS`.
    """
    if norm == "l2_squared":
        return tf.reduce_sum(tf.square(grad), axis=tf.range(1, tf.rank(grad)))
    if norm == "l2":
        sq = tf.reduce_sum(tf.square(grad), axis=tf.range(1, tf.rank(grad)))
        return tf.sqrt(sq + tf.cast(_SQRT_EPS, grad.dtype))
    if norm in ("l1", "linf"):
        return norms.per_example_norm(grad, norm)
    raise ValueError(f"penalty norm={norm!r} is not supported; choose one of {PENALTY_NORMS}")


def _check_coefficient(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name}={value!r} must be non-negative")
    return value


class StepContext:
    """What one training or test step knows: model, batch, and cached points.

    Args:
        model: the classifier, mapping inputs to logits.
        x: the input batch.
        y: integer (or one-hot) labels.
        training: the ``training`` flag for forward passes in the loss.
        clip: valid input range for attacks.
        attack_training: the ``training`` flag while generating attacks.
    """

    def __init__(self, model: Callable, x, y, *, training: bool, clip=(0.0, 1.0),
                 attack_training: bool = False):
        self.model = model
        self.x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)
        if y.shape.rank == 2 and y.shape[-1] != 1:
            y = tf.argmax(y, axis=-1)
        self.y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        self.training = training
        self.clip = clip
        self.attack_training = attack_training
        self._points: dict = {CLEAN: self.x}
        self._forward: dict = {}

    @staticmethod
    def key(point: str | AttackConfig):
        """Hashable key of a point: ``"clean"`` or an attack config."""
        return point

    def prepare(self, objective: "Objective") -> None:
        """Generates every adversarial point the objective needs (outside any weight tape)."""
        for attack in objective.attacks():
            if attack not in self._points:
                self._points[attack] = attack(self.model, self.x, self.y, clip=self.clip,
                                              training=self.attack_training)

    def point(self, point: str | AttackConfig) -> tf.Tensor:
        """The input at ``point``."""
        if point not in self._points:
            raise KeyError(f"point {point!r} was not prepared; call prepare() first")
        return self._points[point]

    def logits(self, point: str | AttackConfig = CLEAN) -> tf.Tensor:
        """Logits at ``point``, computed once and recorded for input gradients."""
        if point not in self._forward:
            xp = self.point(point)
            tape = tf.GradientTape(persistent=True)
            with tape:
                tape.watch(xp)
                logits = self.model(xp, training=self.training)
            self._forward[point] = (logits, tape)
        return self._forward[point][0]

    def input_gradient(self, point: str | AttackConfig,
                       fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
        """Gradient of ``sum(fn(logits, y))`` with respect to the input at ``point``.

        Per example, provided the model does not couple examples (no batch
        statistics). Differentiable with respect to the weights (double backprop).
        """
        logits = self.logits(point)
        tape = self._forward[point][1]
        with tape:
            value = tf.reduce_sum(fn(logits, self.y))
        return tape.gradient(value, self.point(point))

    def cached_logits(self, point: str | AttackConfig = CLEAN) -> tf.Tensor | None:
        """Logits at ``point`` if a term already computed them, else ``None``."""
        entry = self._forward.get(point)
        return None if entry is None else entry[0]


class Term:
    """One additive part of an objective; returns one value per example.

    Subclasses set ``name`` (the metric reported in ``fit`` logs) and
    implement :meth:`__call__` and :meth:`get_config`.
    """

    name: str = "term"

    def attacks(self) -> list[AttackConfig]:
        """Adversarial points this term needs."""
        return []

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
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


def _attack_from(config) -> AttackConfig:
    if isinstance(config, AttackConfig):
        return config
    if isinstance(config, dict):
        return AttackConfig(**config)
    raise ValueError(f"attack={config!r} must be an AttackConfig or a dict of its fields")


def _point_from(at) -> str | AttackConfig:
    if at in (None, CLEAN):
        return CLEAN
    return _attack_from(at)


def _point_config(point) -> str | dict:
    return point if point == CLEAN else point.to_dict()


@keras.saving.register_keras_serializable(package="tfrobust")
class CrossEntropy(Term):
    """Natural training: softmax cross-entropy on the clean input."""

    name = "ce"

    def __init__(self, weight: float = 1.0):
        self.weight = _check_coefficient("weight", weight)

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        logits = ctx.logits(CLEAN)
        return tf.cast(self.weight, logits.dtype) * losses.cross_entropy(logits, ctx.y)

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
        self.attack = _attack_from(attack or AttackConfig())
        mix = float(mix)
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix={mix!r} must be in [0, 1]")
        self.mix = mix

    def attacks(self) -> list[AttackConfig]:
        return [self.attack]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        adv_logits = ctx.logits(self.attack)
        value = tf.cast(self.mix, adv_logits.dtype) * losses.cross_entropy(adv_logits, ctx.y)
        if self.mix < 1.0:
            clean = losses.cross_entropy(ctx.logits(CLEAN), ctx.y)
            value += tf.cast(1.0 - self.mix, adv_logits.dtype) * clean
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
class DecisionJacobian(Term):
    """Decision-surface regulariser of Yu et al.: ``c * R(∇_x d(x))``.

    ``d = z_y - max_{i≠y} z_i`` is the decision function; ``R`` is one of
    :data:`PENALTY_NORMS`. ``at`` is ``"clean"`` or an attack config (the
    penalty at adversarial points). The paper uses c = 500 on MNIST.
    """

    name = "jacobian_penalty"

    def __init__(self, c: float = 500.0, norm: str = "l2", at: str | AttackConfig | dict = CLEAN):
        self.c = _check_coefficient("c", c)
        if norm not in PENALTY_NORMS:
            raise ValueError(f"norm={norm!r} is not supported; choose one of {PENALTY_NORMS}")
        self.norm = norm
        self.at = _point_from(at)

    def attacks(self) -> list[AttackConfig]:
        return [] if self.at == CLEAN else [self.at]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        grad = ctx.input_gradient(self.at, losses.decision_margin)
        return tf.cast(self.c, grad.dtype) * penalty_norm(grad, self.norm)

    def get_config(self) -> dict:
        return {"c": self.c, "norm": self.norm, "at": _point_config(self.at)}


@keras.saving.register_keras_serializable(package="tfrobust")
class InputGradient(DecisionJacobian):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018): ``c * R(∇_x CE)``.

    Default ``R`` is the squared L2 norm, as in the original paper.
    """

    name = "input_grad_penalty"

    def __init__(self, c: float = 1.0, norm: str = "l2_squared", at: str | AttackConfig | dict = CLEAN):
        super().__init__(c=c, norm=norm, at=at)

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        grad = ctx.input_gradient(self.at, losses.cross_entropy)
        return tf.cast(self.c, grad.dtype) * penalty_norm(grad, self.norm)


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
        """Total loss (batch mean of the summed terms) and each term's batch mean."""
        parts = {}
        for term in self.terms:
            value = term(ctx)
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
        return {"terms": [keras.saving.serialize_keras_object(t) for t in self.terms]}

    @classmethod
    def from_config(cls, config: dict) -> "Objective":
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
