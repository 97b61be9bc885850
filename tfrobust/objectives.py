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
(DESIGN §3.6). With ``method="finite_difference"`` they instead use Finlay &
Oberman's difference quotient along the (stop-gradient) steepest direction:
two forward/backward passes, no double backprop.

Terms: :class:`CrossEntropy`, :class:`AdversarialTraining`,
:class:`FastAdversarialTraining`, :class:`Trades`, :class:`Mart` (base
losses) and :class:`DecisionJacobian`, :class:`InputGradient`,
:class:`EffectiveMargin` (penalties). TRADES' KL attack is a
:class:`KLAttack` point, usable wherever an attack config is.

Example::

    objective = CrossEntropy() + DecisionJacobian(c=500.0, norm="l2")
    pgd = AttackConfig(eps=8 / 255, steps=10, step_size=2 / 255)
    at_emr = AdversarialTraining(pgd) + EffectiveMargin.from_authors(3.0, 128, temperature=40, at=pgd)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Iterable, Sequence

import keras
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks import AttackConfig, _check_number, default_step_size, scale_radius

__all__ = [
    "PENALTY_NORMS",
    "penalty_norm",
    "StepContext",
    "Term",
    "CrossEntropy",
    "AdversarialTraining",
    "FastAdversarialTraining",
    "resolve_penalty_norm",
    "DecisionJacobian",
    "InputGradient",
    "DecisionCurvature",
    "linearity_gap",
    "Objective",
    "as_objective",
    "CLEAN",
    "GRADIENT_METHODS",
    "finite_difference_direction",
    "finite_difference_penalty",
    "EffectiveMargin",
    "kl_divergence",
    "gaussian_noise",
    "kl_pgd",
    "KLAttack",
    "Trades",
    "mart_loss",
    "Mart",
]

PENALTY_NORMS = ("l1", "l2", "l2_squared", "linf")
"""Norms R for gradient penalties ``R(∇_x f)``."""

CLEAN = "clean"
"""Key of the clean input in a :class:`StepContext`."""

_SQRT_EPS = 1e-12


def _scalar(value, dtype: tf.DType) -> tf.Tensor:
    """A Python number (or tensor) as a scalar of ``dtype``, without a float32 round trip."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


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
        return tf.sqrt(sq + _scalar(_SQRT_EPS, grad.dtype))
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
        eps_scale: multiplies every attack's radius and step (eps warm-up);
            ``None`` attacks at the configured radius.
    """

    def __init__(self, model: Callable, x, y, *, training: bool, clip=(0.0, 1.0),
                 attack_training: bool = False, eps_scale: tf.Tensor | float | None = None):
        self.model = model
        self.x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)
        if y.shape.rank == 2 and y.shape[-1] != 1:
            y = tf.argmax(y, axis=-1)
        self.y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        self.training = training
        self.clip = clip
        self.attack_training = attack_training
        self.eps_scale = eps_scale
        self._points: dict = {CLEAN: self.x}
        self._forward: dict = {}
        self._gradients: dict = {}

    @staticmethod
    def key(point: str | AttackConfig):
        """Hashable key of a point: ``"clean"`` or an attack config."""
        return point

    def prepare(self, objective: "Objective") -> None:
        """Generates every adversarial point the objective needs (outside any weight tape)."""
        for attack in objective.attacks():
            if attack not in self._points:
                self._points[attack] = attack(self.model, self.x, self.y, clip=self.clip,
                                              training=self.attack_training, eps_scale=self.eps_scale)

    def point(self, point: str | AttackConfig) -> tf.Tensor:
        """The input at ``point``."""
        if point not in self._points:
            raise KeyError(f"point {point!r} was not prepared; call prepare() first")
        return self._points[point]

    def _forward_key(self, point, training: bool | None):
        # The step's own flag keys by the point alone (what cached_logits reads);
        # an explicit other flag gets its own forward pass, keyed (point, flag).
        if training is None or (isinstance(self.training, bool) and bool(training) == self.training):
            return point
        return (point, bool(training))

    def logits(self, point: str | AttackConfig = CLEAN, training: bool | None = None) -> tf.Tensor:
        """Logits at ``point``, computed once and recorded for input gradients.

        Args:
            point: ``"clean"`` or a prepared attack config.
            training: the model's ``training`` flag for this forward pass;
                ``None`` uses the step's flag. Each (point, flag) pair is
                computed once per step.
        """
        key = self._forward_key(point, training)
        if key not in self._forward:
            xp = self.point(point)
            tape = tf.GradientTape(persistent=True)
            with tape:
                tape.watch(xp)
                logits = self.model(xp, training=self.training if training is None else training)
            self._forward[key] = (logits, tape)
        return self._forward[key][0]

    def input_gradient(self, point: str | AttackConfig,
                       fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
                       training: bool | None = None) -> tf.Tensor:
        """Gradient of ``sum(fn(logits, y))`` with respect to the input at ``point``.

        Per example, provided the model does not couple examples (no batch
        statistics). Differentiable with respect to the weights (double backprop).
        ``training`` selects the forward pass as in :meth:`logits`. Computed
        once per step for each (point, flag, ``fn``), so terms sharing ``fn``
        share the gradient.
        """
        logits = self.logits(point, training)
        key = (self._forward_key(point, training), fn)
        if key not in self._gradients:
            tape = self._forward[key[0]][1]
            with tape:
                value = tf.reduce_sum(fn(logits, self.y))
            self._gradients[key] = tape.gradient(value, self.point(point))
        return self._gradients[key]

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
    if isinstance(config, (AttackConfig, KLAttack)):
        return config
    if isinstance(config, dict):
        if config.get("name") == KLAttack.name:
            return KLAttack(**{k: v for k, v in config.items() if k != "name"})
        return AttackConfig(**config)
    raise ValueError(f"attack={config!r} must be an AttackConfig, a KLAttack or a dict of its fields")


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
        return _scalar(self.weight, logits.dtype) * losses.cross_entropy(logits, ctx.y)

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
        value = _scalar(self.mix, adv_logits.dtype) * losses.cross_entropy(adv_logits, ctx.y)
        if self.mix < 1.0:
            clean = losses.cross_entropy(ctx.logits(CLEAN), ctx.y)
            value += _scalar(1.0 - self.mix, adv_logits.dtype) * clean
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


def resolve_penalty_norm(norm: str | None, threat: str) -> str:
    """The penalty norm ``R``: ``norm`` if given, else the dual of the ``threat`` norm.

    For an attack of radius eps in the threat norm, the first-order bound is
    ``d(x + δ) >= d(x) - eps * ||∇x d||_dual``, so the dual norm (L1 for L∞,
    L2 for L2) is the penalty that bounds the attack.

    Raises:
        ValueError: naming a bad ``norm`` or ``threat``.
    """
    dual = norms.dual_of(threat)
    if norm is None:
        return dual
    if norm not in PENALTY_NORMS:
        raise ValueError(f"norm={norm!r} is not supported; choose one of {PENALTY_NORMS}")
    return norm


@keras.saving.register_keras_serializable(package="tfrobust")
class DecisionJacobian(Term):
    """Decision-surface regulariser of Yu et al.: ``c * R(∇_x d(x))``.

    ``d = z_y - max_{i≠y} z_i`` is the decision function. ``R`` defaults to
    the dual of the ``threat`` norm (L1 for ``"linf"``, L2 for ``"l2"``): the
    first-order bound ``d(x + δ) >= d(x) - eps * ||∇x d||_dual`` then holds for
    every attack of radius eps. ``norm=`` picks any of :data:`PENALTY_NORMS`
    instead (the paper's choices; it leaves R's normalisation open, and its
    c = 500 collapses training on a summed squared L2 norm over 784 pixels).
    ``at`` is ``"clean"`` or an attack config (the penalty at adversarial
    points). On MNIST, c = 0.01 with the L1 norm reaches the paper's clean
    accuracy (our measurement, see ``training/results/jacobian_study/``).

    ``method="double_backprop"`` (default) differentiates the exact input
    gradient; ``method="finite_difference"`` replaces ``R(∇_x d)`` by the
    difference quotient of Finlay & Oberman (2019) along the stop-gradient
    steepest direction, with step ``h`` in input units (see
    :func:`finite_difference_penalty`): two forward/backward passes instead
    of double backprop.

    Args:
        c: coefficient, per example.
        norm: ``R``; ``None`` for the dual of ``threat``.
        threat: the threat norm the penalty defends, ``"linf"`` or ``"l2"``.
        at: ``"clean"``, an attack config or a dict of one.
        method: ``"double_backprop"`` or ``"finite_difference"``.
        h: finite-difference step, in input units.
    """

    name = "jacobian_penalty"
    fn = staticmethod(losses.decision_margin)

    def __init__(self, c: float = 0.01, norm: str | None = None, threat: str = "linf",
                 at: str | AttackConfig | dict = CLEAN, method: str = "double_backprop",
                 h: float = 0.01):
        self.c = _check_coefficient("c", c)
        self.threat = norms.validate_norm(threat)
        self.norm = resolve_penalty_norm(norm, threat)
        self.at = _point_from(at)
        self.method = _check_method(method)
        self.h = _check_h(h)

    def attacks(self) -> list[AttackConfig]:
        return [] if self.at == CLEAN else [self.at]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        if self.method == "finite_difference":
            value = finite_difference_penalty(ctx, self.at, self.fn, self.norm, self.h)
        else:
            value = penalty_norm(ctx.input_gradient(self.at, self.fn), self.norm)
        return _scalar(self.c, value.dtype) * value

    def get_config(self) -> dict:
        return {"c": self.c, "norm": self.norm, "threat": self.threat, "at": _point_config(self.at),
                "method": self.method, "h": self.h}


@keras.saving.register_keras_serializable(package="tfrobust")
class InputGradient(DecisionJacobian):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018): ``c * R(∇_x CE)``.

    ``R`` defaults to the dual of the ``threat`` norm, as for
    :class:`DecisionJacobian`; the original paper used ``norm="l2_squared"``.
    ``method="finite_difference"`` gives Finlay & Oberman's (2019) scalable
    version (see :func:`finite_difference_penalty`).
    """

    name = "input_grad_penalty"
    fn = staticmethod(losses.cross_entropy)

    def __init__(self, c: float = 1.0, norm: str | None = None, threat: str = "linf",
                 at: str | AttackConfig | dict = CLEAN, method: str = "double_backprop",
                 h: float = 0.01):
        super().__init__(c=c, norm=norm, threat=threat, at=at, method=method, h=h)


@keras.saving.register_keras_serializable(package="tfrobust")
class DecisionCurvature(Term):
    """The second-order term of Yu et al.'s Taylor bound, measured over a finite step.

    The decision-surface paper bounds ``|d(x+δ) - d(x)| <= |∇d·δ| + |δᵀHδ|/2``
    and leaves Hessian regularisation as future work. On ReLU/max-pool
    networks the Hessian of ``d`` is zero almost everywhere, so the curvature
    that matters is the change of the piecewise-linear surface over a finite
    step. This term penalises the gap of the first-order model at one step of
    size ``h`` along the steepest descent direction of ``d`` for the threat
    norm (the direction of CURE, Moosavi-Dezfooli et al. 2019; the gap is the
    local-linearity measure of Qin et al. 2019, at a fixed step instead of
    maximised over the ball)::

        g   = ∇x d(x)
        δ   = clip(x - h * steepest(g, threat)) - x      (no gradient)
        gap = d(x + δ) - d(x) - δ·g
        penalty = c * |gap|

    With :class:`DecisionJacobian` it completes the bound along δ:
    ``d(x + δ) >= d(x) - h * ||g||_dual - |gap|``. For a smooth model
    ``gap ≈ δᵀHδ / 2``; for a quadratic one it is exact. Cost: one more
    forward/backward pass than the Jacobian penalty, whose double-backprop
    input gradient it shares; no inner maximisation, no adversarial example.

    Args:
        c: coefficient, per example.
        h: step size in input units (for ``"linf"``, per pixel).
        threat: ``"linf"`` or ``"l2"``: the norm of the step.
    """

    name = "curvature_penalty"

    def __init__(self, c: float = 0.1, h: float = 0.1, threat: str = "linf"):
        self.c = _check_coefficient("c", c)
        self.h = _check_h(h)
        self.threat = norms.validate_norm(threat)

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        value = tf.abs(linearity_gap(ctx, self.h, self.threat))
        return _scalar(self.c, value.dtype) * value

    def get_config(self) -> dict:
        return {"c": self.c, "h": self.h, "threat": self.threat}


def linearity_gap(ctx: StepContext, h: float, threat: str) -> tf.Tensor:
    """Per-example ``d(x+δ) - d(x) - δ·∇x d(x)`` at the step of :class:`DecisionCurvature`.

    Differentiable with respect to the weights (through both forward passes
    and, by double backprop, through ``∇x d``); ``δ`` itself is constant.
    """
    d = losses.decision_margin(ctx.logits(CLEAN), ctx.y)
    grad = ctx.input_gradient(CLEAN, losses.decision_margin)
    x = ctx.point(CLEAN)
    step = tf.stop_gradient(_clip_to(x - _scalar(h, x.dtype) * norms.steepest_step(grad, threat),
                                     ctx.clip) - x)
    stepped = losses.decision_margin(ctx.model(x + step, training=ctx.training), ctx.y)
    linear = tf.reduce_sum(tf.reshape(step * grad, [tf.shape(x)[0], -1]), axis=-1)
    return stepped - d - tf.cast(linear, d.dtype)


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


# -- finite-difference gradient norms (Finlay & Oberman 2019) -------------------

GRADIENT_METHODS = ("double_backprop", "finite_difference")
"""How gradient penalties differentiate ``R(∇_x f)`` with respect to the weights."""


def _check_method(method: str) -> str:
    if method not in GRADIENT_METHODS:
        raise ValueError(f"method={method!r} is not supported; choose one of {GRADIENT_METHODS}")
    return method


def _check_h(h: float) -> float:
    h = float(h)
    if not h > 0:
        raise ValueError(f"h={h!r} must be positive")
    return h


def finite_difference_direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """Unit direction ``d`` (no gradient) along which ``grad·d = R(grad)``.

    ``l2``/``l2_squared``: ``grad / ||grad||_2``; ``l1``: ``sign(grad)`` (unit
    in L∞); ``linf``: ``sign(g_j) e_j`` at the largest ``|g_j|`` (unit in L1).
    Each is the maximiser of ``grad·d`` over the unit ball of the dual norm.

    Raises:
        ValueError: if ``norm`` is not in :data:`PENALTY_NORMS`.
    """
    grad = tf.stop_gradient(grad)
    if norm in ("l2", "l2_squared"):
        return norms.steepest_step(grad, "l2")
    if norm == "l1":
        return tf.sign(grad)
    if norm == "linf":
        flat = tf.reshape(grad, [tf.shape(grad)[0], -1])
        pick = tf.one_hot(tf.argmax(tf.abs(flat), axis=-1), tf.shape(flat)[1], dtype=grad.dtype)
        return tf.reshape(pick * tf.sign(flat), tf.shape(grad))
    raise ValueError(f"penalty norm={norm!r} is not supported; choose one of {PENALTY_NORMS}")


def finite_difference_penalty(ctx: StepContext, point, fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
                              norm: str, h: float, training: bool | None = None) -> tf.Tensor:
    """Per-example ``R(∇_x f)`` by a forward difference (Finlay & Oberman 2019).

    With ``f(x) = fn(model(x), y)``, ``g = ∇_x f`` (computed, then treated as a
    constant) and ``d`` = :func:`finite_difference_direction` ``(g, norm)``::

        s = (f(x + h d) - f(x)) / h          ≈ g·d = R(g)
        R ≈ s² (l2_squared), sqrt(s² + 1e-12) (l2), |s| (l1, linf)

    The weight gradient flows only through the two forward passes, so a
    training step costs two forward/backward passes instead of double
    backprop. With ``d`` the maximiser of ``g·d``, the weight gradient of
    ``g·d`` equals that of ``R(g)`` (Danskin), so for a model linear in ``x``
    penalty and weight gradient are exact, and for a smooth model the error
    is ``O(h)``.

    Args:
        ctx: the step context (``point`` prepared).
        point: ``"clean"`` or a prepared attack config.
        fn: per-example function of ``(logits, y)``.
        norm: one of :data:`PENALTY_NORMS`.
        h: step in input units (not clipped to the valid input range).
        training: the forward passes' ``training`` flag (``None``: the step's).
    """
    logits = ctx.logits(point, training)
    grad = ctx.input_gradient(point, fn, training)
    direction = finite_difference_direction(grad, norm)
    x = ctx.point(point)
    flag = ctx.training if training is None else training
    stepped = ctx.model(x + _scalar(h, x.dtype) * direction, training=flag)
    slope = (fn(stepped, ctx.y) - fn(logits, ctx.y)) / _scalar(h, logits.dtype)
    if norm == "l2_squared":
        return tf.square(slope)
    if norm == "l2":
        return tf.sqrt(tf.square(slope) + _scalar(_SQRT_EPS, slope.dtype))
    return tf.abs(slope)


# -- effective margin regularisation (Liu & Chan 2022) ---------------------------


@keras.saving.register_keras_serializable(package="tfrobust")
class EffectiveMargin(Term):
    """Effective margin regularisation, EMR (Liu & Chan, BMVC 2022): ``lam * ||∂s/∂x||²``.

    At ``at`` (``"clean"`` or an attack config: the authors use the
    adversarial training point, e.g. the same PGD-10 config as
    :class:`AdversarialTraining`, or TRADES' :class:`KLAttack`), with the
    network in inference mode (``training=False``)::

        p = stop_gradient(softmax(z(x) / T))      # T = ``temperature``
        s(x) = sum_k p_k z_k(x)
        penalty = lam * R(∂s/∂x)                  # R = squared L2 (default)

    The penalty's weight gradient is taken by double backprop, or by a
    finite difference along ``∂s/∂x`` with ``method="finite_difference"``
    (``p`` held fixed at ``x``; see :func:`finite_difference_penalty`).

    **Coefficient convention.** ``lam`` is per sample: like every term, the
    objective averages ``lam * ||∂s_i/∂x_i||²`` over the batch. The authors'
    code differentiates the *batch mean* ``s = (1/B) sum_i s_i``, so their
    penalty is ``λ_authors * sum_i ||∂s/∂x_i||² = (λ_authors / B²) sum_i
    ||∂s_i/∂x_i||²``. Matching ``(lam / B) sum_i ||∂s_i/∂x_i||²`` gives::

        lam = λ_authors / B      (B = the global batch size they trained with)

    i.e. each sample's weight in their *sum* is ``λ_authors / B²``. For
    AT-EMR (λ_authors = 3, B = 128): ``lam = 0.0234375``; TRADES-EMR
    (λ_authors = 1): ``lam = 0.0078125``. :meth:`from_authors` converts.

    Args:
        lam: per-sample coefficient (see above).
        temperature: softmax temperature ``T`` of the stop-gradient weights
            (authors: 40 for AT-EMR, 1 for TRADES-EMR, 0.1 for MAIL-EMR).
        at: ``"clean"``, an :class:`AttackConfig`, a :class:`KLAttack`, or a dict of either.
        training: ``training`` flag of the penalty's forward pass; ``False``
            (inference mode, as the authors) or ``None`` for the step's flag
            (shares the forward pass with the loss).
        norm: ``R``, one of :data:`PENALTY_NORMS` (the paper: ``"l2_squared"``).
        method: ``"double_backprop"`` or ``"finite_difference"``.
        h: finite-difference step, in input units.
    """

    name = "emr_penalty"

    def __init__(self, lam: float = 0.0234375, temperature: float = 40.0,
                 at: str | AttackConfig | dict = CLEAN, training: bool | None = False,
                 norm: str = "l2_squared", method: str = "double_backprop", h: float = 0.01):
        self.lam = _check_coefficient("lam", lam)
        temperature = float(temperature)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be positive")
        self.temperature = temperature
        self.at = _point_from(at)
        if training is not None and not isinstance(training, bool):
            raise ValueError(f"training={training!r} must be True, False or None")
        self.training = training
        if norm not in PENALTY_NORMS:
            raise ValueError(f"norm={norm!r} is not supported; choose one of {PENALTY_NORMS}")
        self.norm = norm
        self.method = _check_method(method)
        self.h = _check_h(h)

    @classmethod
    def from_authors(cls, lam_authors: float, batch_size: int, **kwargs) -> "EffectiveMargin":
        """The term matching the authors' batch-mean coefficient: ``lam = lam_authors / batch_size``."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        return cls(lam=float(lam_authors) / int(batch_size), **kwargs)

    def attacks(self) -> list[AttackConfig]:
        return [] if self.at == CLEAN else [self.at]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        logits = ctx.logits(self.at, self.training)
        weights = tf.stop_gradient(tf.nn.softmax(logits / _scalar(self.temperature, logits.dtype)))

        def s(z, _y):
            return tf.reduce_sum(weights * z, axis=-1)

        if self.method == "finite_difference":
            value = finite_difference_penalty(ctx, self.at, s, self.norm, self.h, self.training)
        else:
            value = penalty_norm(ctx.input_gradient(self.at, s, self.training), self.norm)
        return _scalar(self.lam, value.dtype) * value

    def get_config(self) -> dict:
        return {"lam": self.lam, "temperature": self.temperature, "at": _point_config(self.at),
                "training": self.training, "norm": self.norm, "method": self.method, "h": self.h}


# -- TRADES and MART --------------------------------------------------------------


def kl_divergence(p_logits: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """Per-example ``KL(softmax(p_logits) || softmax(q_logits))``, from logits (stable)."""
    log_p = tf.nn.log_softmax(p_logits, axis=-1)
    log_q = tf.nn.log_softmax(q_logits, axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def gaussian_noise(shape, dtype: tf.DType = tf.float32, seed: int | None = None) -> tf.Tensor:
    """Standard normal noise, drawn through :func:`tfrobust.norms.random_start`.

    Box–Muller on two uniform draws ``norms.random_start(shape, 1, "linf")``,
    so that every random start of an attack has one patch point: replacing
    ``norms.random_start`` by zeros (as the distribution tests do) makes this
    the constant ``-sqrt(2 ln 2) ≈ -1.177``, deterministic but non-zero.
    """
    second = None if seed is None else seed + 1
    u1 = 0.5 * (1.0 - norms.random_start(shape, 1.0, "linf", dtype=dtype, seed=seed))  # (0, 1]
    u2 = 0.5 * (1.0 + norms.random_start(shape, 1.0, "linf", dtype=dtype, seed=second))  # [0, 1)
    two_pi = tf.constant(6.283185307179586, dtype)
    return tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(two_pi * u2)


def _clip_to(x: tf.Tensor, clip) -> tf.Tensor:
    if clip is None:
        return x
    return tf.clip_by_value(x, _scalar(clip[0], x.dtype), _scalar(clip[1], x.dtype))


def kl_pgd(model: Callable, x, *, eps: float, steps: int, step_size: float, norm: str = "linf",
           init_std: float = 0.001, clip: tuple[float, float] | None = (0.0, 1.0),
           training: bool = False, seed: int | None = None) -> tf.Tensor:
    """TRADES' inner maximisation: PGD on ``KL(p(x) || p(x'))`` (Zhang et al. 2019).

    Starts at ``x + init_std * N(0, 1)`` (the KL's gradient vanishes at
    ``x' = x``), then ``steps`` steepest-ascent steps of ``step_size`` for
    ``norm``, each projected onto the ``eps`` ball around ``x`` and into
    ``clip``; the result is clipped once more. No labels: ``p(x)`` is the
    model's own (stop-gradient) prediction. Graph-safe and pure like
    :mod:`tfrobust.attacks`.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.
    """
    norms.validate_norm(norm)
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    x = tf.stop_gradient(x)
    clean_logits = tf.stop_gradient(model(x, training=training))
    step_size = _scalar(step_size, x.dtype)
    x_adv = x + _scalar(init_std, x.dtype) * gaussian_noise(tf.shape(x), x.dtype, seed)

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            objective = tf.reduce_sum(kl_divergence(clean_logits, model(x_adv, training=training)))
        grad = tape.gradient(objective, x_adv)
        x_adv = x_adv + step_size * norms.steepest_step(grad, norm)
        x_adv = _clip_to(x + norms.project(x_adv - x, eps, norm), clip)
        return i + 1, x_adv

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x_adv))
    return tf.stop_gradient(_clip_to(x_adv, clip))


@dataclasses.dataclass(frozen=True)
class KLAttack:
    """TRADES' training attack as a point of a :class:`StepContext` (see :func:`kl_pgd`).

    Behaves like an :class:`~tfrobust.attacks.AttackConfig` for objectives: it
    is hashable, called as ``attack(model, x, y, clip=..., training=...)``
    (``y`` is ignored) and serialises with :meth:`to_dict` (``name`` =
    ``"kl_pgd"``). TRADES' published settings: MNIST eps 0.3, 40 steps of
    0.01; CIFAR-10 eps 8/255 (0.031), 10 steps of 0.007.
    ``step_size=None`` means ``2.5 * eps / steps``.
    """

    eps: float = 0.3
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    init_std: float = 0.001

    name: ClassVar[str] = "kl_pgd"
    loss: ClassVar[str] = "kl"
    targeted: ClassVar[bool] = False
    random_start: ClassVar[bool] = True

    def __post_init__(self):
        _check_number("eps", self.eps)
        _check_number("steps", self.steps, integer=True)
        if self.step_size is not None:
            _check_number("step_size", self.step_size)
        _check_number("init_std", self.init_std)
        norms.validate_norm(self.norm)

    @property
    def resolved_step_size(self) -> float:
        """The step size actually used."""
        return default_step_size(self.eps, self.steps) if self.step_size is None else float(self.step_size)

    def __call__(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False,
                 eps_scale: float | tf.Tensor | None = None) -> tf.Tensor:
        """Runs the attack on a batch (``y`` is not used); ``eps_scale`` as in AttackConfig."""
        eps, step_size = scale_radius(self.eps, self.resolved_step_size, eps_scale)
        return kl_pgd(model, x, eps=eps, steps=self.steps, step_size=step_size,
                      norm=self.norm, init_std=self.init_std, clip=clip, training=training)

    def to_dict(self) -> dict:
        """JSON-friendly description, with ``name`` so it parses back."""
        return {"name": self.name, **dataclasses.asdict(self)}


@keras.saving.register_keras_serializable(package="tfrobust")
class Trades(Term):
    """TRADES (Zhang et al. 2019): ``CE(z(x), y) + beta * KL(p(x) || p(x'))``.

    ``x'`` maximises the KL (:class:`KLAttack`, generated in inference mode
    once per step); the loss's two forward passes use the step's ``training``
    flag and the gradient flows through both distributions, as in the
    authors' code (``KLDivLoss`` with batch-mean reduction = our per-example
    KL averaged by the objective). Replaces :class:`CrossEntropy` in an
    objective. The paper uses ``beta = 6`` on CIFAR-10 (1/λ in its notation).

    Args:
        beta: weight of the KL term.
        attack: a :class:`KLAttack` (default ``KLAttack()``), or any
            :class:`AttackConfig` for a label-based variant.
    """

    name = "trades"

    def __init__(self, beta: float = 6.0, attack: "KLAttack | AttackConfig | dict | None" = None):
        self.beta = _check_coefficient("beta", beta)
        self.attack = KLAttack() if attack is None else _attack_from(attack)

    def attacks(self) -> list:
        return [self.attack]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        clean = ctx.logits(CLEAN)
        adv = ctx.logits(self.attack)
        beta = _scalar(self.beta, clean.dtype)
        return losses.cross_entropy(clean, ctx.y) + beta * kl_divergence(clean, adv)

    def get_config(self) -> dict:
        return {"beta": self.beta, "attack": self.attack.to_dict()}


def mart_loss(clean_logits: tf.Tensor, adv_logits: tf.Tensor, y: tf.Tensor, beta: float) -> tf.Tensor:
    """Per-example MART loss (Wang et al. 2020), as in the authors' code.

    ``BCE(p', y) + beta * KL(p || p') * (1 - p_y)`` with ``p = softmax(z(x))``,
    ``p' = softmax(z(x'))`` and the boosted CE
    ``BCE = CE(z(x'), y) - log(1.0001 - p'_{j} + 1e-12)``, ``j`` the most
    probable wrong class at ``x'``; the KL uses ``log(p' + 1e-12)`` and the
    weight ``1.0000001 - p_y``, as published.
    """
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    dtype = adv_logits.dtype
    adv_probs = tf.nn.softmax(adv_logits, axis=-1)
    onehot = tf.one_hot(y, tf.shape(adv_logits)[-1], dtype=dtype)
    wrong = tf.reduce_max(adv_probs - onehot * _scalar(2.0, dtype), axis=-1)  # best wrong class prob
    bce = (losses.cross_entropy(adv_logits, y)
           - tf.math.log(_scalar(1.0001, dtype) - wrong + _scalar(1e-12, dtype)))
    log_nat = tf.nn.log_softmax(clean_logits, axis=-1)
    nat_probs = tf.exp(log_nat)
    kl = tf.reduce_sum(nat_probs * (log_nat - tf.math.log(adv_probs + _scalar(1e-12, dtype))), axis=-1)
    true_probs = tf.reduce_sum(onehot * nat_probs, axis=-1)
    return bce + _scalar(beta, dtype) * kl * (_scalar(1.0000001, dtype) - true_probs)


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

    def __init__(self, beta: float = 6.0, attack: "AttackConfig | KLAttack | dict | None" = None):
        self.beta = _check_coefficient("beta", beta)
        self.attack = AttackConfig() if attack is None else _attack_from(attack)

    def attacks(self) -> list:
        return [self.attack]

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        return mart_loss(ctx.logits(CLEAN), ctx.logits(self.attack), ctx.y, self.beta)

    def get_config(self) -> dict:
        return {"beta": self.beta, "attack": self.attack.to_dict()}
