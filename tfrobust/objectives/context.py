"""What one training step knows: the :class:`StepContext` and its cached forward passes."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfrobust import losses
from tfrobust.attacks import AttackConfig
from tfrobust.utils import as_labels

__all__ = [
    "CLEAN",
    "StepContext",
]


CLEAN = "clean"
"""Key of the clean input in a :class:`StepContext`."""



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
        penalty_scale: multiplies every penalty term (``Term.penalty``; the penalty
            warm-up); ``None`` leaves them at their coefficients.
        share_forward: the model's logits do not depend on its ``training`` flag
            (:func:`tfrobust.models.responds_to_training` is ``False``), so terms asking for
            either flag at a point share one forward pass.
    """

    def __init__(self, model: Callable, x, y, *, training: bool, clip=(0.0, 1.0),
                 attack_training: bool = False, eps_scale: tf.Tensor | float | None = None,
                 penalty_scale: tf.Tensor | float | None = None, share_forward: bool = False):
        self.model = model
        self.x = tf.convert_to_tensor(x)
        self.y = as_labels(y, num_examples=self.x.shape[0])
        self.training = training
        self.clip = clip
        self.attack_training = attack_training
        self.eps_scale = eps_scale
        self.penalty_scale = penalty_scale
        self.share_forward = bool(share_forward)
        self._points: dict = {CLEAN: self.x}
        self._forward: dict = {}
        self._gradients: dict = {}
        self._model_losses: dict = {}

    @staticmethod
    def key(point: str | AttackConfig):
        """Hashable key of a point: ``"clean"`` or an attack config."""
        return point

    def prepare(self, objective) -> None:
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
        if training is None or self.share_forward or (
                isinstance(self.training, bool) and bool(training) == self.training):
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
                logits = self.forward(xp, training)
            self._forward[key] = (logits, tape)
            # Keras keeps the add_loss terms of the model's last call only: read them now.
            self._model_losses[key] = list(getattr(self.model, "losses", None) or [])
        return self._forward[key][0]

    def model_losses(self) -> tf.Tensor:
        """The sum of the model's ``losses`` as a float32 scalar (0 if it has none).

        Keras' ``model.losses``: the ``add_loss`` terms and activity regularisers of a forward
        pass, and every weight regulariser. They are read after the clean forward pass with the
        step's flag if a term made one, else after the first forward pass a term made (the
        adversarial one for adversarial training with ``mix=1``), so that they never cost a
        forward pass of their own; weight regularisers are the same in every pass. Each loss is
        summed and cast to float32 (a ``mixed_float16`` layer adds float16 ones), as Keras'
        ``compute_loss`` does. Differentiable with respect to the weights when the forward pass
        ran inside the weight tape.
        """
        key = self._forward_key(CLEAN, None)
        if key not in self._model_losses:
            if self._model_losses:
                key = next(iter(self._model_losses))
            else:
                self.logits(CLEAN)
        losses = self._model_losses[key]
        if not losses:
            return tf.zeros((), tf.float32)
        return tf.add_n([tf.cast(tf.reduce_sum(loss), tf.float32) for loss in losses])

    def forward(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """The model's logits at ``x`` in at least float32 (``training=None``: the step's flag).

        Under a ``mixed_float16`` policy the model computes in float16; every loss and
        penalty is computed from these float32 logits, so the terms add up in one dtype.
        """
        return losses.logits_of(self.model, x, self.training if training is None else training)

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
