"""Argument checks, labels, clipping and radius scaling shared by every attack."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.checks import check_number
from tfrobust.utils import as_labels, check_range, scalar

__all__ = [
    "check_number",
    "check_clip",
    "check_model",
    "check_static_int",
    "check_fraction",
    "clip_to_range",
    "prepare_inputs",
    "scale_radius",
    "default_step_size",
    "resolve_labels",
    "ranked_class",
]


def scale_radius(eps: float, step_size: float, scale: float | tf.Tensor | None) -> tuple:
    """``(eps * scale, step_size * scale)`` for an eps warm-up; ``scale=None`` leaves both.

    ``scale`` is a number in [0, 1] or a scalar tensor (not checked).
    """
    if scale is None:
        return eps, step_size
    if isinstance(scale, tf.Tensor):
        scale = tf.cast(scale, tf.float32)
        return scale * eps, scale * step_size
    check_number("eps_scale", scale)
    if scale > 1:
        raise ValueError(f"eps_scale={scale!r} must be in [0, 1]")
    return eps * float(scale), step_size * float(scale)


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step for an iterative attack: ``2.5 * eps / steps``."""
    return 2.5 * float(eps) / max(int(steps), 1)


def check_clip(clip) -> None:
    """Raises ValueError unless ``clip`` is ``None`` or a pair ``(low, high)`` with ``low < high``."""
    if clip is None:
        return
    try:
        lo, hi = clip
    except (TypeError, ValueError):
        raise ValueError(f"clip={clip!r} must be a pair (low, high) or None") from None
    if not lo < hi:
        raise ValueError(f"clip={clip!r} must have low < high")


def check_model(model) -> None:
    """Raises ValueError if a Keras ``model`` ends in a softmax (attacks need logits)."""
    if isinstance(model, tf.Module) or hasattr(model, "layers"):
        losses.check_logits(model, name=getattr(model, "name", "model"))


def resolve_labels(model: Callable, x: tf.Tensor, y, *, targeted: bool, training: bool = False):
    """Integer labels for an attack: ``y`` as given, else the prediction.

    ``y`` follows :func:`tfrobust.utils.as_labels` (``(N,)``, ``(N, 1)`` or
    one-hot). With ``y=None`` an untargeted attack uses the model's predicted
    class and a targeted one the least-likely class.
    """
    if y is None:
        logits = tf.stop_gradient(losses.logits_of(model, x, training))
        if tf.executing_eagerly():
            losses.check_logits(logits)
        return losses.least_likely(logits) if targeted else tf.argmax(logits, -1, output_type=tf.int32)
    return as_labels(y, num_examples=x.shape[0])


def clip_to_range(x: tf.Tensor, clip) -> tf.Tensor:
    """``x`` clipped into ``clip = (low, high)``; ``None`` leaves it. Bounds keep ``x``'s dtype exactly."""
    if clip is None:
        return x
    return tf.clip_by_value(x, scalar(clip[0], x.dtype), scalar(clip[1], x.dtype))


def prepare_inputs(model, x, *, clip, norm: str) -> tf.Tensor:
    """Checks an attack's model, clip range, norm and inputs; returns ``x`` as a float tensor
    without gradient. Every attack starts here.

    Raises:
        ValueError: naming a bad clip range or norm, a model that outputs probabilities, or
            inputs outside the clip range (eager only, see :func:`tfrobust.utils.check_range`).
    """
    check_clip(clip)
    norms.validate_norm(norm)
    check_model(model)
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    x = tf.stop_gradient(x)
    check_range(x, clip)
    return x


def check_static_int(name: str, value) -> None:
    """Raises ValueError unless ``value`` is a Python integer >= 0 (not a tensor: it sizes a graph)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        raise ValueError(f"{name} must be a Python int (it fixes the schedule when the graph is built)")
    check_number(name, value, integer=True)


def check_fraction(name: str, value) -> None:
    """Raises ValueError unless ``value`` is a number in [0, 1]."""
    check_number(name, value)
    if not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} must be in [0, 1]")


def ranked_class(logits: tf.Tensor, rank: int, *, num_classes: int | None = None) -> tf.Tensor:
    """The class with the ``rank``-th largest logit per example (2 = the runner-up): the target
    of APGD-T and FAB-T.

    Raises:
        ValueError: unless ``2 <= rank <=`` the number of classes (when it is known statically).
    """
    check_static_int("rank", rank)
    classes = num_classes if num_classes is not None else logits.shape[-1]
    if rank < 2 or (classes is not None and rank > classes):
        raise ValueError(f"target_rank={rank!r} must be in 2..{classes} (the model's classes)")
    return tf.math.top_k(logits, k=rank).indices[:, rank - 1]
