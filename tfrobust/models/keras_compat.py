"""Every place where :class:`~tfrobust.models.RobustModel` touches private Keras 3 internals.

Keras 3's trainer builds metrics and reduces logs in ways that fail under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), and a model whose
loss is its own objective must read the loss tracker that ``compile()``
creates. These hooks are private, so they are kept here, in one place, and
``setup.cfg`` bounds ``keras`` to the versions they are tested with
(:data:`TESTED_KERAS`; the distribution and model tests exercise each hook).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["TESTED_KERAS", "loss_tracker", "symbolic_build_on_local_batch", "logs_with_batch_axis"]

TESTED_KERAS = ">=3.3,<3.16"
"""The Keras versions these hooks are tested with (keep in step with ``setup.cfg``)."""


def loss_tracker(model: keras.Model) -> keras.metrics.Metric:
    """The ``loss`` metric that ``compile()`` creates (Keras' private ``_loss_tracker``).

    A tracker of our own named ``loss`` (the public route: a metric attribute, listed by
    ``Model.metrics``) would sit in ``Model.metrics`` next to this one, which ``compile()``
    always creates; the logs would hold two ``loss`` entries and keep whichever Keras lists
    last. Hiding Keras' one means overriding ``metrics`` around ``_loss_tracker`` anyway, so
    the private tracker is updated instead (``fit``'s ``loss`` is then the objective plus the
    classifier's ``losses``, like a compiled model's).

    Raises:
        RuntimeError: if the model was not compiled.
    """
    tracker = getattr(model, "_loss_tracker", None)
    if tracker is None:
        raise RuntimeError("compile the RobustModel before fit/evaluate, e.g. "
                           "model.compile(optimizer='adam', metrics=['accuracy'])")
    return tracker


def symbolic_build_on_local_batch(model: keras.Model, iterator) -> bool:
    """Builds metrics from this worker's first local batch under ``MultiWorkerMirroredStrategy``.

    Keras 3's ``_maybe_symbolic_build`` builds them from a batch reduced with
    ``strategy.reduce("MEAN")``, which fails under that strategy
    (keras-team/keras#20585); only the shapes matter, so a local batch does.

    Returns:
        ``True`` if it built the model, ``False`` if Keras' own build applies.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    for _, _, it in iterator:
        batch = next(it)
        local = tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0]
            if isinstance(v, tf.distribute.DistributedValues) else v, batch)
        break
    with strategy.scope():
        model._symbolic_build(data_batch=local)  # pylint: disable=protected-access
    return True


def logs_with_batch_axis(logs: dict) -> dict:
    """Under ``MultiWorkerMirroredStrategy``, each log scalar with a batch axis of 1.

    Keras 3 reduces multi-worker logs with ``reduce("MEAN", axis=0)``, which
    needs a batch axis (keras-team/keras#20585). Other strategies: unchanged.
    """
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs
