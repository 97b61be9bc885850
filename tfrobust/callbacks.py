"""Keras callbacks: robustness monitoring in TensorBoard and in the epoch logs.

:class:`RobustnessMonitor` evaluates a fixed validation subset every few
epochs with one compiled ``tf.function`` per batch (attacks included),
writes ``tf.summary`` scalars and histograms that TensorBoard reads, and puts
its accuracies into the epoch's logs (:data:`CLEAN_ACCURACY_KEY`,
:func:`robust_accuracy_key`), where ``History``, ``ModelCheckpoint`` and
``EarlyStopping`` listed after it see them.

Example::

    monitor = RobustnessMonitor(x_val[:512], y_val[:512],
                                {"fgsm_0.1": AttackConfig("fgsm", eps=0.1),
                                 "pgd_0.1": AttackConfig("pgd", eps=0.1, steps=10)},
                                log_dir="runs/mnist/tensorboard/robustness")
    best = keras.callbacks.ModelCheckpoint("best.keras", monitor=robust_accuracy_key("pgd_0.1"),
                                           mode="max", save_best_only=True)
    model.fit(x, y, epochs=10, callbacks=[monitor, best])  # the monitor first
"""

from __future__ import annotations

import numbers
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks import AttackConfig, as_attack

__all__ = ["RobustnessMonitor", "CLEAN_ACCURACY_KEY", "robust_accuracy_key", "log_values"]

CLEAN_ACCURACY_KEY = "val_clean_accuracy"
"""The epoch-log key of the monitor's clean accuracy (on its subset, inference mode)."""


def robust_accuracy_key(attack: str) -> str:
    """The epoch-log key of :class:`RobustnessMonitor`'s accuracy under ``attack`` (its name in
    ``attacks``): ``val_robust_accuracy_<attack>``, e.g. ``val_robust_accuracy_pgd_0.3``."""
    return f"val_robust_accuracy_{attack}"


def _as_attack(name: str, attack):
    if isinstance(attack, dict):
        return as_attack(attack)
    if not callable(attack):
        raise ValueError(f"attack {name!r}={attack!r} must be an AttackConfig or a dict of its fields")
    return attack


def log_values(result: dict) -> dict[str, float]:
    """The epoch-log entries of one evaluation (from :meth:`RobustnessMonitor.evaluate`)."""
    values = {CLEAN_ACCURACY_KEY: float(result["clean_accuracy"])}
    values.update({robust_accuracy_key(name): float(value) for name, value in result["robust_accuracy"].items()})
    return values


class RobustnessMonitor(keras.callbacks.Callback):
    """Logs robustness statistics of a fixed validation subset to TensorBoard.

    At the end of the first epoch of each ``fit`` and then every ``every_n_epochs``
    epochs (the ends of epochs ``N-1, 2N-1, ...``, with the epoch index as the
    summary step, like Keras' TensorBoard callback) it writes, under ``log_dir``:

    - ``robustness/clean_accuracy`` and ``robustness/accuracy/<name>``: the
      accuracy on the attacked inputs for each attack in ``attacks``;
    - ``robustness/margin`` (histogram) and ``robustness/margin_mean``: the
      decision margin ``d = z_y - max_{i≠y} z_i`` at the clean inputs;
    - ``robustness/grad_norm`` (histogram) and ``robustness/grad_norm_mean``:
      the dual norm (for ``norm``) of ``∇_x d``;
    - ``terms/<name>`` and ``terms/val_<name>``: the model's ``loss`` and, for
      a :class:`~tfrobust.models.RobustModel`, each objective term, as found
      in the epoch's logs.

    The classifier runs in inference mode. Results are also kept in
    :attr:`history` (one dict per evaluation).

    **Epoch logs.** At every epoch end it also writes into the epoch's ``logs``
    ``val_clean_accuracy`` and ``val_robust_accuracy_<name>`` for each attack
    (:data:`CLEAN_ACCURACY_KEY`, :func:`robust_accuracy_key`), so that Keras'
    ``History``, ``ModelCheckpoint(monitor=..., save_best_only=True,
    mode="max")`` and ``EarlyStopping`` can select on them. Keras calls callbacks
    in list order: put the monitor before them (``fit`` puts ``History`` last). On
    the epochs it does not evaluate, the keys hold the last measured values
    (carried forward, so every epoch has them and ``History``'s lists stay one
    value per epoch; a carried value never improves on itself, so
    ``ModelCheckpoint`` does not save on it, while ``EarlyStopping``'s patience
    counts those epochs). The first epoch of each ``fit`` is always measured, so no
    epoch, resumed runs included, logs a placeholder: Keras' ``ModelCheckpoint`` and
    ``EarlyStopping`` take the first value they see as the best so far, and a NaN there
    would never be beaten. With ``every_n_epochs=1`` every value is measured.

    Args:
        x_val: validation inputs (the fixed subset; or see ``n``).
        y_val: integer (or one-hot) labels.
        attacks: name -> :class:`~tfrobust.attacks.AttackConfig` (or a dict of
            its fields, or any object called as ``attack(model, x, y, clip=, training=)``).
        log_dir: directory of the summary event files.
        every_n_epochs: evaluation period in epochs.
        batch_size: examples per compiled evaluation call.
        norm: threat norm whose dual norm measures ``∇_x d`` (``"linf"``: L1,
            ``"l2"``: L2); default the first attack's norm, else ``"linf"``.
        clip: valid input range for the attacks.
        n: use only the first ``n`` examples of ``x_val``.
        surface_eps: if set, also log ``robustness/decision_surface``: an image of
            the decision surface around the first validation example along the CE
            attack direction, with the eps ball of this radius marked.

    Raises:
        ValueError: naming a bad argument.
    """

    def __init__(self, x_val, y_val, attacks: Mapping[str, AttackConfig], log_dir: str, *,
                 every_n_epochs: int = 1, batch_size: int = 256, norm: str | None = None,
                 clip: tuple[float, float] | None = (0.0, 1.0), n: int | None = None,
                 surface_eps: float | None = None):
        super().__init__()
        if surface_eps is not None and not float(surface_eps) > 0:
            raise ValueError(f"surface_eps={surface_eps!r} must be positive")
        self.surface_eps = None if surface_eps is None else float(surface_eps)
        for arg, value in (("every_n_epochs", every_n_epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{arg}={value!r} must be a positive integer")
        if not isinstance(attacks, Mapping):
            raise ValueError(f"attacks={attacks!r} must be a dict name -> AttackConfig")
        self.attacks = {str(k): _as_attack(k, v) for k, v in attacks.items()}
        if norm is None:
            norm = next((getattr(a, "norm", None) for a in self.attacks.values()), None) or "linf"
        self.norm = norms.validate_norm(norm)
        x_val, y_val = np.asarray(x_val), np.asarray(y_val)
        if y_val.ndim == 2 and y_val.shape[-1] > 1:
            y_val = y_val.argmax(-1)
        y_val = y_val.reshape(-1)
        if len(x_val) != len(y_val) or len(x_val) == 0:
            raise ValueError(f"x_val and y_val must be non-empty and of equal length, "
                             f"got {len(x_val)} and {len(y_val)}")
        if n is not None:
            x_val, y_val = x_val[:n], y_val[:n]
        if not np.issubdtype(x_val.dtype, np.floating):
            x_val = x_val.astype("float32")
        self.x_val = x_val
        self.y_val = y_val.astype("int32")
        self.log_dir = str(log_dir)
        self.every_n_epochs = int(every_n_epochs)
        self.batch_size = int(batch_size)
        self.clip = clip
        self.history: list[dict] = []
        self._last: dict[str, float] = {}
        self._writer = None
        self._fn = None
        self._fn_owner = None

    # -- evaluation ------------------------------------------------------------

    def _classifier(self, model=None):
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("RobustnessMonitor has no model: pass one to evaluate() or use it in fit()")
        return getattr(model, "classifier", model)

    def _compiled(self, classifier):
        if self._fn is not None and self._fn_owner is classifier:
            return self._fn
        attacks, norm, clip = list(self.attacks.values()), self.norm, self.clip
        spec = [tf.TensorSpec([None, *self.x_val.shape[1:]], tf.as_dtype(self.x_val.dtype)),
                tf.TensorSpec([None], tf.int32)]

        @tf.function(input_signature=spec)
        def batch_stats(x, y):
            logits, margin, grad_norm = losses.margin_and_gradient_norm(classifier, x, y, norm=norm)
            correct = [tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y)]
            for attack in attacks:
                x_adv = attack(classifier, x, y, clip=clip, training=False)
                adv_logits = classifier(x_adv, training=False)
                correct.append(tf.equal(tf.argmax(adv_logits, -1, output_type=tf.int32), y))
            return tf.stack(correct, axis=0), margin, grad_norm

        self._fn, self._fn_owner = batch_stats, classifier
        return batch_stats

    def evaluate(self, model=None) -> dict:
        """Runs the evaluation now and returns its results (nothing is written).

        Returns:
            ``{"clean_accuracy": float, "robust_accuracy": {name: float},
            "margin": ndarray, "grad_norm": ndarray}`` (arrays per example).
        """
        fn = self._compiled(self._classifier(model))
        correct, margins, grad_norms = [], [], []
        for start in range(0, len(self.x_val), self.batch_size):
            c, m, g = fn(tf.constant(self.x_val[start:start + self.batch_size]),
                         tf.constant(self.y_val[start:start + self.batch_size]))
            correct.append(c.numpy())
            margins.append(m.numpy())
            grad_norms.append(g.numpy())
        accuracy = np.concatenate(correct, axis=1).mean(axis=1)
        return {"clean_accuracy": float(accuracy[0]),
                "robust_accuracy": {name: float(a) for name, a in zip(self.attacks, accuracy[1:])},
                "margin": np.concatenate(margins), "grad_norm": np.concatenate(grad_norms)}

    # -- Keras hooks -------------------------------------------------------------

    @property
    def writer(self):
        """The summary writer of ``log_dir`` (created on first use)."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def on_train_begin(self, logs=None):
        self._last = {}

    def on_epoch_end(self, epoch, logs=None):
        if not self._last or not (epoch + 1) % self.every_n_epochs:
            result = self.evaluate()
            self.write(result, epoch, logs)
            self._last = log_values(result)
        if logs is not None:
            logs.update(self._last)

    @property
    def log_keys(self) -> list[str]:
        """The keys this monitor adds to the epoch logs, clean accuracy first."""
        return [CLEAN_ACCURACY_KEY] + [robust_accuracy_key(name) for name in self.attacks]

    def write(self, result: dict, step: int, logs: dict | None = None) -> None:
        """Writes one evaluation (from :meth:`evaluate`) and the epoch's term logs at ``step``."""
        terms = {}
        names = ["loss"] + list(getattr(getattr(self.model, "objective", None), "metric_names", []))
        for name in names:
            for key in (name, f"val_{name}"):
                if logs and key in logs:
                    terms[key] = float(logs[key])
        with self.writer.as_default(step=int(step)):
            tf.summary.scalar("robustness/clean_accuracy", result["clean_accuracy"])
            for name, value in result["robust_accuracy"].items():
                tf.summary.scalar(f"robustness/accuracy/{name}", value)
            for key in ("margin", "grad_norm"):
                tf.summary.scalar(f"robustness/{key}_mean", float(np.mean(result[key])))
                tf.summary.histogram(f"robustness/{key}", result[key])
            for key, value in terms.items():
                tf.summary.scalar(f"terms/{key}", value)
            if self.surface_eps is not None:
                from tfrobust.analysis.plots import surface_image  # matplotlib only when asked
                image = surface_image(self._classifier(), self.x_val[:1], self.y_val[:1],
                                      eps=self.surface_eps, norm=self.norm,
                                      title=f"decision surface, epoch {int(step)}")
                tf.summary.image("robustness/decision_surface", image)
        self.writer.flush()
        self.history.append({"epoch": int(step), "clean_accuracy": result["clean_accuracy"],
                             "robust_accuracy": dict(result["robust_accuracy"]),
                             "margin_mean": float(np.mean(result["margin"])),
                             "grad_norm_mean": float(np.mean(result["grad_norm"])), "terms": terms})

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
