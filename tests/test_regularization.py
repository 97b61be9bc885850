"""Layer regularisers and add_loss terms count in RobustModel's loss, as in a plain Keras model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import models
from tfrobust import objectives as O
from test_models import OBJECTIVES, data

L2 = 0.05  # kernel_regularizer of the dense layer
ADDED = 0.2  # Scaled's add_loss coefficient
ACTIVITY = 0.01  # activity_regularizer (L1) on the logits


@keras.saving.register_keras_serializable(package="tfrobust_tests")
class Scaled(keras.layers.Layer):
    """``x * s`` with a weight ``s`` (ones at first) that adds ``coef * sum(s²)`` by ``add_loss``."""

    def __init__(self, coef=0.0, **kwargs):
        super().__init__(**kwargs)
        self.coef = coef

    def build(self, input_shape):
        self.s = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="s")

    def call(self, x):
        self.add_loss(self.coef * keras.ops.sum(keras.ops.square(self.s)))
        return x * self.s

    def get_config(self):
        return {**super().get_config(), "coef": self.coef}


def regularised_cnn(l2=L2, added=ADDED, activity=None, seed=0, bounded=False):
    """tiny_cnn of test_models with an L2 kernel regulariser, a Scaled layer and optionally an
    activity regulariser; l2=added=0 and activity=None give the same network unregularised.

    ``bounded``: instead of Scaled (a custom layer, which bound propagation refuses), an identity
    Dense whose kernel carries an L2 regulariser of ``added``, for the certified objectives."""
    keras.utils.set_random_seed(seed)
    last = Scaled(added) if not bounded else keras.layers.Dense(
        3, use_bias=False, kernel_initializer="identity", name="scaled",
        kernel_regularizer=keras.regularizers.L2(added) if added else None)
    return keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, activation="tanh"), keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
                           activity_regularizer=keras.regularizers.L1(activity) if activity else None),
        last], name="regularised")


def penalty_at(classifier):
    """The closed form of the weight-only losses: L2 * sum(W²) + ADDED * sum(s²)."""
    last = classifier.layers[3]
    kernel, s = classifier.layers[2].kernel.numpy(), (last.s if isinstance(last, Scaled) else last.kernel).numpy()
    return L2 * float((kernel.astype(np.float64) ** 2).sum()) + ADDED * float((s.astype(np.float64) ** 2).sum())


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_reported_loss_is_the_objective_plus_the_regularisers(name, no_random_start):
    x, y = data(8)
    bounded = isinstance(OBJECTIVES[name](), O.CertifiedTraining)
    reg_clf, plain_clf = regularised_cnn(bounded=bounded), regularised_cnn(l2=0.0, added=0.0, bounded=bounded)
    plain_clf.set_weights(reg_clf.get_weights())
    expected = penalty_at(reg_clf)
    assert expected > 0.1  # large enough to see next to the objective
    results = {}
    for key, clf in (("reg", reg_clf), ("plain", plain_clf)):
        model = models.RobustModel(clf, OBJECTIVES[name]())
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        evaluated = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
        fitted = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
        results[key] = (evaluated, {k: v[0] for k, v in fitted.items()})
    for (reg, plain), step in zip(zip(*results.values()), ("test_step", "train_step")):
        np.testing.assert_allclose(reg["loss"], plain["loss"] + expected, rtol=1e-5, err_msg=step)
        terms = OBJECTIVES[name]()
        for term in O.as_objective(terms).metric_names:  # the term metrics are the objective's alone
            np.testing.assert_allclose(reg[term], plain[term], rtol=1e-5, err_msg=f"{step} {term}")


def _keras_step(classifier, x, y):
    classifier.compile(optimizer=keras.optimizers.SGD(0.5),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return classifier.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history["loss"][0]


def _robust_step(classifier, x, y, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        model = models.RobustModel(classifier, O.CrossEntropy())
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    return model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history["loss"][0]


def test_cross_entropy_step_equals_plain_keras_with_regularisers():
    """Kernel L2, activity L1 on the logits and an add_loss layer: RobustModel(CrossEntropy())
    reports the loss and takes the SGD step of a plain compiled Keras model."""
    x, y = data(16)
    init = regularised_cnn(activity=ACTIVITY).get_weights()
    ours, theirs = regularised_cnn(activity=ACTIVITY), regularised_cnn(activity=ACTIVITY)
    ours.set_weights(init)
    theirs.set_weights(init)
    loss = _robust_step(ours, x, y)
    keras_loss = _keras_step(theirs, x, y)
    np.testing.assert_allclose(loss, keras_loss, rtol=1e-6)
    # By hand: mean CE + L2 sum W² + ADDED sum s² + ACTIVITY * sum|logits| / batch (Keras' activity
    # regulariser is the batch mean).
    start = regularised_cnn(activity=ACTIVITY)
    start.set_weights(init)
    logits = start(x).numpy().astype(np.float64)
    ce = float(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True).numpy().mean())
    activity = ACTIVITY * np.abs(start.layers[2](start.layers[1](start.layers[0](x))).numpy()).sum() / len(x)
    np.testing.assert_allclose(loss, ce + penalty_at(start) + activity, rtol=1e-5)
    moved = max(np.abs(a - b).max() for a, b in zip(ours.get_weights(), init))
    assert moved > 1e-3
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The regulariser moved the weights: without it the step differs.
    bare = regularised_cnn(l2=0.0, added=0.0)
    bare.set_weights(init)
    _robust_step(bare, x, y)
    assert max(np.abs(a - b).max() for a, b in zip(bare.get_weights(), ours.get_weights())) > 1e-3


def test_regularisers_are_scaled_for_distribution():
    """DESIGN §3.5 with regularisers: one step on two logical CPUs equals the one-device step."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, "conftest should create two logical CPU devices"
    x, y = data(8)
    init = regularised_cnn(activity=ACTIVITY).get_weights()
    steps = []
    # ReductionToOneDevice, as training.build_strategy on CPUs: the default collectives number their
    # instances per process, and a second MirroredStrategy whose gradients have other shapes than an
    # earlier one's (test_models' tiny_cnn has 177 weights, this model 180) aborts on a shape mismatch.
    mirrored = tf.distribute.MirroredStrategy(devices[:2], cross_device_ops=tf.distribute.ReductionToOneDevice())
    for strategy in (tf.distribute.OneDeviceStrategy(devices[0]), mirrored):
        with strategy.scope():
            clf = regularised_cnn(activity=ACTIVITY)
            clf.set_weights(init)
        loss = _robust_step(clf, x, y, strategy)
        steps.append((loss, clf.get_weights()))
    (loss_1, weights_1), (loss_2, weights_2) = steps
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
    for a, b in zip(weights_1, weights_2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mixed_float16_regularisers_are_added_in_float32():
    """Under mixed_float16 the activity and add_loss terms are float16 tensors; RobustModel casts
    them (Keras 3.15's own compute_loss fails on them: it casts only non-float losses, then
    cannot sum float16 with float32). The loss matches float32 Keras to float16's 3 digits."""
    x, y = data(16)
    init = regularised_cnn(activity=ACTIVITY).get_weights()
    theirs = regularised_cnn(activity=ACTIVITY)
    theirs.set_weights(init)
    keras_loss = _keras_step(theirs, x, y)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        ours = regularised_cnn(activity=ACTIVITY)
        ours.set_weights(init)
        loss = _robust_step(ours, x, y)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    np.testing.assert_allclose(loss, keras_loss, rtol=2e-3)  # the penalties are 0.87 of a loss of 1.75
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3)
