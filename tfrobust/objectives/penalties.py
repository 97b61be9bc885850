"""Gradient penalties: decision Jacobian, input gradient, curvature, EMR, finite differences."""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.names import PENALTY_NORMS
from tfrobust.attacks import AttackConfig
from tfrobust.attacks.base import clip_to_range
from tfrobust.objectives.base import Term, check_coefficient, point_config, as_point
from tfrobust.objectives.context import CLEAN, StepContext
from tfrobust.utils import scalar

__all__ = [
    "PENALTY_NORMS",
    "penalty_norm",
    "resolve_penalty_norm",
    "DecisionJacobian",
    "InputGradient",
    "DecisionCurvature",
    "linearity_gap",
    "GRADIENT_METHODS",
    "finite_difference_direction",
    "finite_difference_penalty",
    "min_finite_difference_step",
    "EffectiveMargin",
]


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
        return tf.sqrt(sq + scalar(norms.TINY, grad.dtype))
    if norm in ("l1", "linf"):
        return norms.per_example_norm(grad, norm)
    raise ValueError(f"penalty norm={norm!r} is not supported; choose one of {PENALTY_NORMS}")


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
    of double backprop. Its rounding error is about ``u |f| / h`` (``u`` the
    compute dtype's unit roundoff), so under ``mixed_float16`` take ``h`` of
    0.1 rather than the float32 default of 0.01, which raises there.

    Args:
        c: coefficient, per example.
        norm: ``R``; ``None`` for the dual of ``threat``.
        threat: the threat norm the penalty defends, ``"linf"`` or ``"l2"``.
        at: ``"clean"``, an attack config or a dict of one.
        method: ``"double_backprop"`` or ``"finite_difference"``.
        h: finite-difference step, in input units; under a half-precision policy at least
            :func:`min_finite_difference_step` (0.044 for ``mixed_float16``; see
            :func:`finite_difference_penalty` for the rounding it trades against).
    """

    name = "jacobian_penalty"
    penalty = True
    fn = staticmethod(losses.decision_margin)

    def __init__(self, c: float = 0.01, norm: str | None = None, threat: str = "linf",
                 at: str | AttackConfig | dict = CLEAN, method: str = "double_backprop",
                 h: float = 0.01):
        self.c = check_coefficient("c", c)
        self.threat = norms.validate_norm(threat)
        self.norm = resolve_penalty_norm(norm, threat)
        self.at = as_point(at)
        self.method = _check_method(method)
        self.h = _check_h(h)

    def attacks(self) -> list[AttackConfig]:
        return [self.at] if isinstance(self.at, AttackConfig) else []

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        if self.method == "finite_difference":
            value = finite_difference_penalty(ctx, self.at, self.fn, self.norm, self.h)
        else:
            value = penalty_norm(ctx.input_gradient(self.at, self.fn), self.norm)
        return scalar(self.c, value.dtype) * value

    def get_config(self) -> dict:
        return {"c": self.c, "norm": self.norm, "threat": self.threat, "at": point_config(self.at),
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
    penalty = True

    def __init__(self, c: float = 0.1, h: float = 0.1, threat: str = "linf"):
        self.c = check_coefficient("c", c)
        self.h = _check_h(h)
        self.threat = norms.validate_norm(threat)

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        value = tf.abs(linearity_gap(ctx, self.h, self.threat))
        return scalar(self.c, value.dtype) * value

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
    step = tf.stop_gradient(clip_to_range(x - scalar(h, x.dtype) * norms.steepest_step(grad, threat),
                                     ctx.clip) - x)
    stepped = losses.decision_margin(ctx.forward(x + step), ctx.y)
    linear = tf.reduce_sum(tf.reshape(step * grad, [tf.shape(x)[0], -1]), axis=-1)
    return stepped - d - tf.cast(linear, d.dtype)


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


_UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
"""Unit roundoff of the half-precision compute dtypes (float32's is 2^-24)."""


def min_finite_difference_step(dtype) -> float:
    """The smallest finite-difference step ``h`` for a model computing in ``dtype``.

    A forward difference of ``f`` computed with unit roundoff ``u`` has rounding error
    about ``u |f| / h`` and truncation error about ``h |f''| / 2``; they balance at
    ``h = 2 sqrt(u |f| / |f''|)``, i.e. ``2 sqrt(u)`` for inputs in [0, 1] and ``f`` of
    order one. For the half-precision compute dtypes that is ``2 sqrt(2^-11) ≈ 0.044``
    (float16) and ``2 sqrt(2^-8) = 0.125`` (bfloat16); below it the quotient is mostly
    rounding (for float16 and ``h = 0.01``, the step itself is only about 20 float16
    spacings of an input near 1). Other dtypes: 0, no floor (float32's ``2 sqrt(2^-24) ≈
    5e-4`` is below every step used outside exactness tests on linear models).
    """
    u = _UNIT_ROUNDOFF.get(keras.backend.standardize_dtype(dtype))
    return 0.0 if u is None else 2.0 * u ** 0.5


def _check_step_for_model(model, h: float) -> None:
    dtype = keras.backend.standardize_dtype(getattr(model, "compute_dtype", None) or "float32")
    floor = min_finite_difference_step(dtype)
    if h < floor:
        raise ValueError(f"h={h!r} is too small for the model's {dtype} compute dtype: a forward "
                         f"difference in {dtype} has a rounding error of about u*|f|/h "
                         f"(u = {_UNIT_ROUNDOFF[dtype]:.3g}); use h >= {floor:.3g} (2*sqrt(u)), "
                         f"or method='double_backprop'")


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

    **Mixed precision.** Under a ``mixed_float16`` (or bfloat16) policy the two
    forward passes run in the model's compute dtype: Keras fixes a layer's
    compute dtype when it is created, so they cannot be run in float32 without a
    float32 copy of the model. The difference and the quotient are taken in
    float32 (from the float32-cast logits of :meth:`StepContext.forward`), so
    no precision is lost after the model; what remains is each pass's rounding,
    about ``u |f|`` for the value and ``u |∇_w f|`` for the weight gradient
    (``u`` the unit roundoff), divided by ``h``: with float16's ``u = 2^-11`` and
    ``h = 0.1``, the penalty's weight gradient is off by about ``2u/h ≈ 1%`` of
    ``|∇_w f|``, an error double backprop does not amplify. Take ``h`` as large
    as the smoothness of the model allows; a step below
    :func:`min_finite_difference_step` (0.044 for float16, 0.125 for bfloat16)
    would be mostly rounding and raises.

    Args:
        ctx: the step context (``point`` prepared).
        point: ``"clean"`` or a prepared attack config.
        fn: per-example function of ``(logits, y)``.
        norm: one of :data:`PENALTY_NORMS`.
        h: step in input units (not clipped to the valid input range).
        training: the forward passes' ``training`` flag (``None``: the step's).

    Raises:
        ValueError: if ``h`` is below :func:`min_finite_difference_step` for the
            model's compute dtype.
    """
    _check_step_for_model(ctx.model, h)
    logits = ctx.logits(point, training)
    grad = ctx.input_gradient(point, fn, training)
    direction = finite_difference_direction(grad, norm)
    x = ctx.point(point)
    flag = ctx.training if training is None else training
    stepped = ctx.forward(x + scalar(h, x.dtype) * direction, training=flag)
    slope = (fn(stepped, ctx.y) - fn(logits, ctx.y)) / scalar(h, logits.dtype)
    if norm == "l2_squared":
        return tf.square(slope)
    if norm == "l2":
        return tf.sqrt(tf.square(slope) + scalar(norms.TINY, slope.dtype))
    return tf.abs(slope)


# -- effective margin regularisation (Liu & Chan 2022) ---------------------------


@keras.saving.register_keras_serializable(package="tfrobust")
class EffectiveMargin(Term):
    """Effective margin regularisation, EMR (Liu & Chan, BMVC 2022): ``lam * ||∂s/∂x||²``.

    At ``at`` (``"clean"`` or an attack config: the authors use the
    adversarial training point, e.g. the same PGD-10 config as
    :class:`AdversarialTraining`, or TRADES' :func:`KLAttack`), with the
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
        at: ``"clean"``, an :class:`AttackConfig`, a :func:`KLAttack`, or a dict of either.
        training: ``training`` flag of the penalty's forward pass; ``False``
            (inference mode, as the authors) or ``None`` for the step's flag
            (shares the forward pass with the loss).
        norm: ``R``, one of :data:`PENALTY_NORMS` (the paper: ``"l2_squared"``).
        method: ``"double_backprop"`` or ``"finite_difference"``.
        h: finite-difference step, in input units; under a half-precision policy at least
            :func:`min_finite_difference_step` (0.044 for ``mixed_float16``; see
            :func:`finite_difference_penalty` for the rounding it trades against).
    """

    name = "emr_penalty"
    penalty = True

    def __init__(self, lam: float = 0.0234375, temperature: float = 40.0,
                 at: str | AttackConfig | dict = CLEAN, training: bool | None = False,
                 norm: str = "l2_squared", method: str = "double_backprop", h: float = 0.01):
        self.lam = check_coefficient("lam", lam)
        temperature = float(temperature)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be positive")
        self.temperature = temperature
        self.at = as_point(at)
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
        return [self.at] if isinstance(self.at, AttackConfig) else []

    def __call__(self, ctx: StepContext) -> tf.Tensor:
        logits = ctx.logits(self.at, self.training)
        weights = tf.stop_gradient(tf.nn.softmax(logits / scalar(self.temperature, logits.dtype)))

        def s(z, _y):
            return tf.reduce_sum(weights * z, axis=-1)

        if self.method == "finite_difference":
            value = finite_difference_penalty(ctx, self.at, s, self.norm, self.h, self.training)
        else:
            value = penalty_norm(ctx.input_gradient(self.at, s, self.training), self.norm)
        return scalar(self.lam, value.dtype) * value

    def get_config(self) -> dict:
        return {"lam": self.lam, "temperature": self.temperature, "at": point_config(self.at),
                "training": self.training, "norm": self.norm, "method": self.method, "h": self.h}
