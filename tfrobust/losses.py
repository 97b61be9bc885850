"""Per-example losses and margins on logits.

All functions take logits ``z`` of shape ``[batch, classes]`` (before softmax)
and integer labels ``y`` of shape ``[batch]``, and return one value per example.
"""

from __future__ import annotations

import tensorflow as tf

from tfrobust import norms
from tfrobust.names import ATTACK_LOSSES

__all__ = [
    "logits_of",
    "cross_entropy",
    "decision_margin",
    "top2_margin",
    "cw_loss",
    "dlr_loss",
    "attack_loss",
    "ATTACK_LOSSES",
    "dlr_targeted_loss",
    "least_likely",
    "check_logits",
    "margin_and_gradient_norm",
]



def _labels(y: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.reshape(y, [-1]), tf.int32)


def logits_of(model, x, training: bool = False) -> tf.Tensor:
    """``model(x)`` as float32 logits (a ``mixed_float16`` model computes in float16).

    Losses, margins, attack objectives and penalties are all computed from these, so they add
    up in one dtype and keep float32 precision where it matters.
    """
    logits = model(x, training=training)
    return tf.cast(logits, tf.float32) if logits.dtype in (tf.float16, tf.bfloat16) else logits


def cross_entropy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy per example."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=_labels(y), logits=logits)


def _true_and_best_other(logits: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    y = _labels(y)
    onehot = tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype)
    true = tf.reduce_sum(onehot * logits, axis=-1)
    # Push the true class far below every other logit before taking the max.
    other = tf.reduce_max(logits - onehot * tf.cast(1e9, logits.dtype), axis=-1)
    return true, other


def decision_margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Decision function of Yu et al.: ``d = z_y - max_{i != y} z_i``.

    ``d > 0`` means correctly classified; ``d = 0`` is the decision boundary.
    """
    true, other = _true_and_best_other(logits, y)
    return true - other


def top2_margin(logits: tf.Tensor) -> tf.Tensor:
    """Top-1 minus top-2 logit: the decision margin of the predicted class."""
    top = tf.math.top_k(logits, k=2).values
    return top[:, 0] - top[:, 1]


def cw_loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Carlini-Wagner margin loss to *maximise* in an attack: ``-d``."""
    return -decision_margin(logits, y)


def dlr_loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Difference-of-logits-ratio loss of Croce & Hein (2020), to maximise.

    ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3) + 1e-12)`` with ``z_(k)`` the
    k-th largest logit; invariant to shift and scale of the logits.
    """
    top3 = tf.math.top_k(logits, k=3).values
    scale = top3[:, 0] - top3[:, 2] + tf.cast(norms.TINY, logits.dtype)
    return -decision_margin(logits, y) / scale


def dlr_targeted_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Targeted DLR loss of Croce & Hein (2020) (APGD-T), to maximise.

    ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2 + 1e-12)`` with ``t`` the
    target class and ``z_(k)`` the k-th largest logit; needs at least 4 classes.
    """
    top4 = tf.math.top_k(logits, k=4).values
    scale = top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + tf.cast(norms.TINY, logits.dtype)
    z_y = tf.gather(logits, tf.cast(y, tf.int32), batch_dims=1)
    z_t = tf.gather(logits, tf.cast(target, tf.int32), batch_dims=1)
    return -(z_y - z_t) / scale


def attack_loss(name: str):
    """Returns the per-example loss function an attack maximises.

    Raises:
        ValueError: if ``name`` is not one of :data:`ATTACK_LOSSES`.
    """
    table = {"ce": cross_entropy, "cw": cw_loss, "dlr": dlr_loss}
    if name not in table:
        raise ValueError(f"loss={name!r} is not supported; choose one of {ATTACK_LOSSES}")
    return table[name]


def least_likely(logits: tf.Tensor) -> tf.Tensor:
    """The least-likely class per example (target of the 'll' attack)."""
    return tf.argmin(logits, axis=-1, output_type=tf.int32)


def check_logits(model_or_outputs, name: str = "model") -> None:
    """Raises if a model outputs probabilities instead of logits.

    Two checks: a Keras model whose last layer ends in softmax or sigmoid is
    rejected statically; a concrete output tensor whose rows are all in [0, 1]
    and sum to 1 is rejected numerically (eager tensors only).

    Raises:
        ValueError: naming the model and what was found.
    """
    layers = getattr(model_or_outputs, "layers", None)
    if layers:
        last = layers[-1]
        while getattr(last, "layers", None):
            last = last.layers[-1]
        act = getattr(last, "activation", None)
        act_name = getattr(act, "__name__", "")
        if act_name in ("softmax", "sigmoid") or type(last).__name__ in ("Softmax",):
            raise ValueError(
                f"{name} outputs probabilities (its last layer {last.name!r} applies "
                f"{act_name or type(last).__name__}); tfrobust needs logits: remove the final "
                "activation and pass from_logits=True to any Keras loss")
        return
    out = model_or_outputs
    if isinstance(out, tf.Tensor) and not tf.executing_eagerly():
        return
    out = tf.convert_to_tensor(out)
    if out.shape.rank == 2 and out.shape[-1] and out.shape[-1] > 1 and out.shape[0]:
        in_unit = bool(tf.reduce_all((out >= 0) & (out <= 1)))
        sums = tf.reduce_sum(tf.cast(out, tf.float64), axis=-1)
        if in_unit and bool(tf.reduce_all(tf.abs(sums - 1.0) < 1e-4)):
            raise ValueError(
                f"{name} outputs probabilities (every row is in [0, 1] and sums to 1); "
                "tfrobust needs logits: remove the final softmax")


def margin_and_gradient_norm(model, x: tf.Tensor, y: tf.Tensor | None = None, *, norm: str = "linf",
                             dtype: tf.DType | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Logits, the margin of each example and the dual norm of its input gradient, in inference mode.

    The one definition behind the monitor's margins, the served ``robustness`` signature and the
    analysis: ``margin / gradient norm`` (:func:`tfrobust.norms.safe_ratio`) is the first-order
    distance to the decision boundary for the threat ``norm``. The gradient is that of the summed
    margins, which is each example's own because inference mode couples no examples.

    Args:
        model: a classifier returning logits.
        x: inputs ``[batch, ...]``.
        y: integer labels: the decision margin (correct minus largest wrong logit, :func:`decision_margin`);
            ``None``: the margin of the predicted class (:func:`top2_margin`).
        norm: the threat norm; the gradient's dual norm is taken (L1 for L∞, L2 for L2).
        dtype: cast the logits to this dtype first (the served signature's float32).

    Returns:
        ``(logits [batch, classes], margin [batch], gradient dual norm [batch])``; a margin that
        does not depend on ``x`` has gradient norm 0.
    """
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        if dtype is not None:
            logits = tf.cast(logits, dtype)
        margin = top2_margin(logits) if y is None else decision_margin(logits, y)
    grad = tape.gradient(margin, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return logits, margin, norms.dual_norm(grad, norm)
