"""Graph-safe, batched white-box attacks.

Every attack is a pure function ``(model, x, y=None, *, eps, ...) -> x_adv``:
no ``.numpy()`` inside, usable eagerly, inside ``tf.function``, a
``train_step`` and a distribution strategy (it runs on whatever replica calls
it). The result is under ``tf.stop_gradient``, inside the ``eps`` ball of
``norm`` around ``x`` and inside ``clip``. Norm maths lives in
:mod:`tfrobust.norms` and losses in :mod:`tfrobust.losses` (DESIGN §3.1-3.2).

``y=None`` attacks the model's own prediction; ``targeted=True`` with
``y=None`` targets the least-likely class.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms

__all__ = [
    "fgsm",
    "pgd",
    "bim",
    "cw",
    "ATTACKS",
    "get_attack",
    "AttackConfig",
    "resolve_labels",
]


def _check_number(name: str, value, *, positive: bool = False, integer: bool = False) -> None:
    if isinstance(value, tf.Tensor):
        return
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
        raise ValueError(f"{name}={value!r} must be a number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={value!r} must be {'positive' if positive else 'non-negative'}")


def _check_clip(clip) -> None:
    if clip is None:
        return
    try:
        lo, hi = clip
    except (TypeError, ValueError):
        raise ValueError(f"clip={clip!r} must be a pair (low, high) or None") from None
    if not lo < hi:
        raise ValueError(f"clip={clip!r} must have low < high")


def _check_model(model) -> None:
    if isinstance(model, tf.Module) or hasattr(model, "layers"):
        losses.check_logits(model, name=getattr(model, "name", "model"))


def resolve_labels(model: Callable, x: tf.Tensor, y, *, targeted: bool, training: bool = False):
    """Integer labels for an attack: ``y`` as given, else the prediction.

    One-hot ``y`` is reduced by argmax. With ``y=None`` an untargeted attack
    uses the model's predicted class and a targeted one the least-likely class.
    """
    if y is None:
        logits = tf.stop_gradient(model(x, training=training))
        if tf.executing_eagerly():
            losses.check_logits(logits)
        return losses.least_likely(logits) if targeted else tf.argmax(logits, -1, output_type=tf.int32)
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2:
        y = tf.argmax(y, axis=-1, output_type=tf.int32)
    return tf.cast(tf.reshape(y, [-1]), tf.int32)


def _clip(x: tf.Tensor, clip) -> tf.Tensor:
    if clip is None:
        return x
    return tf.clip_by_value(x, tf.cast(clip[0], x.dtype), tf.cast(clip[1], x.dtype))


def pgd(
    model: Callable,
    x,
    y=None,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: bool = True,
    clip: tuple[float, float] | None = (0.0, 1.0),
    loss: str = "ce",
    targeted: bool = False,
    training: bool = False,
    seed: int | None = None,
) -> tf.Tensor:
    """Projected gradient descent (Madry et al. 2018), L∞ or L2.

    Each step moves ``step_size`` along the steepest-ascent direction of
    ``loss`` for ``norm`` (descent when ``targeted``), then projects back onto
    the ``eps`` ball around ``x`` and into ``clip``.

    Args:
        model: callable mapping images to logits, called as ``model(x, training=...)``.
        x: batch of inputs.
        y: integer or one-hot labels; ``None`` uses the prediction (least-likely class if ``targeted``).
        eps: radius of the threat ball, in input units.
        steps: number of gradient steps.
        step_size: size of each step, in input units.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start uniformly inside the ball instead of at ``x``.
        clip: valid input range ``(low, high)``, or ``None``.
        loss: ``"ce"``, ``"cw"`` (margin) or ``"dlr"``.
        targeted: move towards class ``y`` instead of away from it.
        training: the ``training`` flag passed to the model.
        seed: op seed for the random start.

    Returns:
        Adversarial inputs, same shape and dtype as ``x``, without gradient.

    Raises:
        ValueError: on a bad argument (named in the message) or a model that
            outputs probabilities.
    """
    _check_number("eps", eps)
    _check_number("steps", steps, integer=True)
    _check_number("step_size", step_size)
    _check_clip(clip)
    norms.validate_norm(norm)
    loss_fn = losses.attack_loss(loss)
    _check_model(model)

    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    x = tf.stop_gradient(x)
    labels = resolve_labels(model, x, y, targeted=targeted, training=training)
    direction = tf.cast(-1.0 if targeted else 1.0, x.dtype)
    step_size = tf.cast(step_size, x.dtype)

    if random_start:
        x_adv = x + norms.random_start(tf.shape(x), eps, norm, dtype=x.dtype, seed=seed)
        x_adv = _clip(x_adv, clip)
    else:
        x_adv = x

    def body(i, x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            objective = direction * tf.reduce_sum(loss_fn(model(x_adv, training=training), labels))
        grad = tape.gradient(objective, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        x_adv = x_adv + step_size * norms.steepest_step(grad, norm)
        x_adv = _clip(x + norms.project(x_adv - x, eps, norm), clip)
        return i + 1, x_adv

    _, x_adv = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), x_adv))
    return tf.stop_gradient(x_adv)


def fgsm(
    model: Callable,
    x,
    y=None,
    *,
    eps: float,
    norm: str = "linf",
    clip: tuple[float, float] | None = (0.0, 1.0),
    loss: str = "ce",
    targeted: bool = False,
    training: bool = False,
) -> tf.Tensor:
    """Fast gradient (sign) method: one step of size ``eps``, no random start.

    L∞ gives Goodfellow et al.'s FGSM ``x + eps * sign(∇)``; L2 gives the
    fast gradient method ``x + eps * ∇ / ||∇||``. Arguments as in :func:`pgd`.
    """
    return pgd(model, x, y, eps=eps, steps=1, step_size=eps, norm=norm, random_start=False,
               clip=clip, loss=loss, targeted=targeted, training=training)


def bim(model: Callable, x, y=None, *, eps: float, steps: int = 10, step_size: float | None = None,
        random_start: bool = False, **kwargs) -> tf.Tensor:
    """Basic iterative method (Kurakin et al.): PGD without random start.

    ``step_size`` defaults to ``2.5 * eps / steps``. Other arguments as in :func:`pgd`.
    """
    if step_size is None:
        step_size = 2.5 * eps / max(int(steps), 1)
    return pgd(model, x, y, eps=eps, steps=steps, step_size=step_size,
               random_start=random_start, **kwargs)


def cw(model: Callable, x, y=None, *, eps: float, steps: int = 10, step_size: float | None = None,
       random_start: bool = False, loss: str = "cw", **kwargs) -> tf.Tensor:
    """C&W-margin attack as the decision-surface paper uses it: PGD on ``max_{i≠y} z_i - z_y``.

    Arguments as in :func:`bim`; ``loss`` defaults to ``"cw"``.
    """
    return bim(model, x, y, eps=eps, steps=steps, step_size=step_size,
               random_start=random_start, loss=loss, **kwargs)


ATTACKS: dict[str, Callable] = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "cw": cw}
"""Attack name -> function."""


def get_attack(name: str) -> Callable:
    """Looks up an attack by name.

    Raises:
        ValueError: naming the unknown attack and listing the known ones.
    """
    if name not in ATTACKS:
        raise ValueError(f"attack {name!r} is unknown; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A fully specified attack, for training objectives and evaluation.

    ``step_size=None`` means ``2.5 * eps / steps`` (Madry et al.).
    """

    name: str = "pgd"
    eps: float = 0.3
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    loss: str = "ce"
    random_start: bool | None = None
    targeted: bool = False

    def __post_init__(self):
        get_attack(self.name)
        _check_number("eps", self.eps)
        _check_number("steps", self.steps, integer=True)
        if self.step_size is not None:
            _check_number("step_size", self.step_size)
        norms.validate_norm(self.norm)
        losses.attack_loss(self.loss)

    @property
    def resolved_step_size(self) -> float:
        """The step size actually used."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / max(self.steps, 1)

    def __call__(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False) -> tf.Tensor:
        """Runs the attack on a batch."""
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=self.eps, norm=self.norm, clip=clip, loss=self.loss,
                        targeted=self.targeted, training=training)
        random_start = self.name == "pgd" if self.random_start is None else self.random_start
        loss = "cw" if self.name == "cw" else self.loss
        return pgd(model, x, y, eps=self.eps, steps=self.steps, step_size=self.resolved_step_size,
                   norm=self.norm, random_start=random_start, clip=clip, loss=loss,
                   targeted=self.targeted, training=training)

    def to_dict(self) -> dict:
        """JSON-friendly description."""
        return dataclasses.asdict(self)
