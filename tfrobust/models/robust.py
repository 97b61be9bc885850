"""The robust-training model wrapper and a small zoo of classifiers.

:class:`RobustModel` wraps any Keras classifier that outputs logits and
trains it on an :class:`~tfrobust.objectives.Objective` inside an ordinary
``compile``/``fit``/``evaluate``. Keras integration is only through
``train_step`` and ``test_step`` (docs/architecture.md); under ``tf.distribute`` the
objective is scaled like a compiled loss (docs/architecture.md). The classifier's own
``losses`` (layer regularisers, ``add_loss`` terms) are added to the objective, as
Keras' ``compute_loss`` adds them to a compiled loss.

Example::

    model = RobustModel(mnist_cnn(), CrossEntropy() + DecisionJacobian(c=500))
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=5)
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import keras
import tensorflow as tf

from tfrobust import losses
from tfrobust.models import keras_compat
from tfrobust.attacks.base import check_number
from tfrobust.objectives import CLEAN, Objective, StepContext, Term, as_objective

__all__ = [
    "RobustModel",
    "responds_to_training",
    "unwrap",
    "load_model",
    "warmup_scale",
    "scale_loss_for_distribution",
]


_FLAG_BLIND = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
"""Layers whose ``call`` takes ``training`` without using it (quantisation and LoRA hooks)."""


def responds_to_training(model) -> bool:
    """Whether ``model``'s output may depend on its ``training`` flag.

    ``False`` only if no leaf layer's ``call`` takes a ``training`` argument, apart from the
    layers known to ignore it (Dense, EinsumDense, Embedding). Dropout, batch norm, noise
    layers, augmentation, ``Lambda`` and any custom layer that takes the flag count as
    responding. Then a training step may run one forward pass for every term that asks for
    either flag, since both give the same logits.
    """
    stack = [model]
    while stack:
        layer = stack.pop()
        children = getattr(layer, "layers", None)
        if children:
            stack.extend(children)
            continue
        if isinstance(layer, _FLAG_BLIND):
            continue
        try:
            takes_flag = "training" in inspect.signature(layer.call).parameters
        except (TypeError, ValueError):
            takes_flag = True
        if takes_flag:
            return True
    return False


@keras.saving.register_keras_serializable(package="tfrobust")
class RobustModel(keras.Model):
    """A classifier trained on a robustness objective by ``fit``.

    Args:
        classifier: a Keras model mapping inputs to logits (not probabilities).
        objective: an :class:`Objective`, a :class:`Term`, a list of terms, or
            ``None`` for natural cross-entropy training.
        clip: valid input range used by attacks inside the objective, or ``None``.
        attack_training: the ``training`` flag while generating adversarial points.
        eps_warmup_steps: ramp every training attack's radius (and step) linearly from
            ``eps / eps_warmup_steps`` at the first step to ``eps`` at step
            ``eps_warmup_steps``; 0 attacks at full radius from the start. Adversarial
            training at MNIST's eps 0.3 can stall at chance without it. Evaluation
            (``test_step``) always uses the full radius.
        penalty_warmup_steps: ramp every penalty term (``Term.penalty``: the Jacobian,
            curvature, input-gradient and EMR penalties) the same way, from
            ``1 / penalty_warmup_steps`` of its coefficient to all of it; base losses
            (cross-entropy, adversarial CE, TRADES, MART) are never scaled. 0: full
            coefficients from the start. ``test_step`` always uses the full coefficients.
        **kwargs: passed to ``keras.Model`` (e.g. ``name``).

    The loss minimised, and reported as ``loss`` by ``fit`` and ``evaluate``, is the
    objective plus the classifier's ``losses`` (weight and activity regularisers,
    ``add_loss`` terms; see :meth:`StepContext.model_losses` for which forward pass they
    are read after), as for a plain Keras model. The per-term metrics are the objective's
    terms only, so with regularisers they sum to less than ``loss``.

    Raises:
        ValueError: if the classifier ends in a softmax or sigmoid.
    """

    def __init__(self, classifier: keras.Model, objective: Objective | Term | list | None = None,
                 clip: tuple[float, float] | None = (0.0, 1.0), attack_training: bool = False,
                 eps_warmup_steps: int = 0, penalty_warmup_steps: int = 0, **kwargs):
        super().__init__(**kwargs)
        losses.check_logits(classifier, name=f"classifier {classifier.name!r}")
        self.classifier = classifier
        self.objective = as_objective(objective)
        self.clip = tuple(float(c) for c in clip) if clip is not None else None
        self.attack_training = bool(attack_training)
        check_number("eps_warmup_steps", eps_warmup_steps, integer=True)
        self.eps_warmup_steps = int(eps_warmup_steps)
        check_number("penalty_warmup_steps", penalty_warmup_steps, integer=True)
        self.penalty_warmup_steps = int(penalty_warmup_steps)
        self.term_trackers = [keras.metrics.Mean(name=n) for n in self.objective.metric_names]
        self.built = classifier.built
        self._share_forward: bool | None = None

    def call(self, inputs, training=False):
        return self.classifier(inputs, training=training)

    def build(self, input_shape):
        if not self.classifier.built:
            self.classifier.build(input_shape)
        self.built = True

    # -- Keras integration ---------------------------------------------------

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # A private Keras hook: see keras_compat (keras-team/keras#20585).
        if not keras_compat.symbolic_build_on_local_batch(self, iterator):
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _step(self, data, training: bool):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError("RobustModel needs labels: call fit/evaluate with (x, y)")
        if self.loss is not None:  # Keras' public record of compile(loss=...)
            raise ValueError("RobustModel's loss is its objective: call compile() without loss= "
                             "and pass the objective to RobustModel(classifier, objective)")
        scale = penalty_scale = None
        if training and self.eps_warmup_steps and self.optimizer is not None:
            scale = warmup_scale(self.optimizer.iterations, self.eps_warmup_steps)
        if training and self.penalty_warmup_steps and self.optimizer is not None:
            penalty_scale = warmup_scale(self.optimizer.iterations, self.penalty_warmup_steps)
        if self._share_forward is None:
            self._share_forward = not responds_to_training(self.classifier)
        ctx = StepContext(self.classifier, x, y, training=training, clip=self.clip,
                          attack_training=self.attack_training, eps_scale=scale, penalty_scale=penalty_scale,
                          share_forward=self._share_forward)
        ctx.prepare(self.objective)
        return ctx, x, y, sample_weight

    def _finish(self, ctx: StepContext, total, parts, x, y, sample_weight):
        keras_compat.loss_tracker(self).update_state(total, sample_weight=tf.shape(ctx.x)[0])
        for tracker in self.term_trackers:
            tracker.update_state(parts[tracker.name])
        logits = ctx.cached_logits(CLEAN)
        if logits is None:
            logits = self.classifier(ctx.x, training=False)
        logs = self.compute_metrics(x, y, logits, sample_weight=sample_weight)
        return keras_compat.logs_with_batch_axis(logs)

    def train_step(self, data):
        ctx, x, y, sample_weight = self._step(data, training=True)
        weights = self.trainable_weights
        with tf.GradientTape() as tape:
            total, parts = self.objective(ctx, sample_weight)
            total = total + ctx.model_losses()  # regularisers and add_loss terms, as Keras adds them
            scaled = scale_loss_for_distribution(total)
            if self.optimizer is not None:
                scaled = self.optimizer.scale_loss(scaled)
        grads = tape.gradient(scaled, weights)
        self.optimizer.apply_gradients(zip(grads, weights))
        return self._finish(ctx, total, parts, x, y, sample_weight)

    def test_step(self, data):
        ctx, x, y, sample_weight = self._step(data, training=False)
        total, parts = self.objective(ctx, sample_weight)
        return self._finish(ctx, total + ctx.model_losses(), parts, x, y, sample_weight)

    # -- serialisation ---------------------------------------------------------

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "classifier": keras.saving.serialize_keras_object(self.classifier),
            "objective": keras.saving.serialize_keras_object(self.objective),
            "clip": list(self.clip) if self.clip is not None else None,
            "attack_training": self.attack_training,
            "eps_warmup_steps": self.eps_warmup_steps,
            "penalty_warmup_steps": self.penalty_warmup_steps,
        }

    @classmethod
    def from_config(cls, config: dict) -> "RobustModel":
        config = dict(config)
        classifier = keras.saving.deserialize_keras_object(config.pop("classifier"))
        objective = keras.saving.deserialize_keras_object(config.pop("objective"))
        return cls(classifier, objective, **config)


def warmup_scale(step, warmup_steps: int) -> tf.Tensor:
    """Linear warm-up (eps or penalty): ``min(1, (step + 1) / warmup_steps)`` as a float32 scalar.

    ``step`` counts optimizer updates from 0, so the first update attacks at
    ``1 / warmup_steps`` of the radius and update ``warmup_steps - 1`` at the full radius.
    """
    step = tf.cast(step, tf.float32)
    return tf.minimum(1.0, (step + 1.0) / float(max(int(warmup_steps), 1)))


def scale_loss_for_distribution(loss: tf.Tensor) -> tf.Tensor:
    """Divides a per-replica mean loss by the replica count, as Keras does for compiled losses.

    Gradients are summed over replicas, so this makes the update that of the
    global batch mean (docs/architecture.md).
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * tf.cast(1.0 / replicas, loss.dtype)


def unwrap(model):
    """The logits classifier: ``model.classifier`` for a :class:`RobustModel`, else ``model``."""
    inner = getattr(model, "classifier", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    return model


def load_model(path: str | os.PathLike) -> keras.Model:
    """Loads a ``.keras`` model, plain or a :class:`RobustModel` (its objective included), uncompiled.

    Raises:
        FileNotFoundError: naming the missing path.
        ValueError: naming the file if it is not a loadable Keras model.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {str(path)!r} does not exist")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # zip, HDF5 and deserialisation errors of every kind
        raise ValueError(f"model {str(path)!r} could not be loaded: {err}") from err
