"""Objectives against closed forms and a float64 finite-difference reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import objectives as O
from tfrobust.attacks import AttackConfig

D, K = 5, 3


def test_penalty_norms():
    g = tf.constant([[3.0, -4.0], [0.0, 0.0]])
    np.testing.assert_allclose(O.penalty_norm(g, "l1").numpy(), [7.0, 0.0])
    np.testing.assert_allclose(O.penalty_norm(g, "l2").numpy(), [5.0, 1e-6], rtol=1e-5)
    np.testing.assert_allclose(O.penalty_norm(g, "l2_squared").numpy(), [25.0, 0.0])
    np.testing.assert_allclose(O.penalty_norm(g, "linf").numpy(), [4.0, 0.0])
    with pytest.raises(ValueError, match="'l7'"):
        O.penalty_norm(g, "l7")


def linear(dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(D, K)), rng.normal(size=K)
    m = keras.Sequential([keras.Input((D,), dtype=dtype), keras.layers.Dense(K, dtype=dtype)])
    m.layers[0].set_weights([w, b])
    return m, w, b


@pytest.mark.parametrize("norm", O.PENALTY_NORMS)
def test_jacobian_penalty_on_linear_model_is_weight_difference_norm(norm):
    model, w, b = linear()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(6, D)), rng.integers(0, K, 6)
    ctx = O.StepContext(model, x, y, training=False)
    got = O.DecisionJacobian(c=3.0, norm=norm)(ctx).numpy()
    z = x @ w + b
    j = np.where(np.eye(K)[y] > 0, -np.inf, z).argmax(-1)
    g = w[:, y].T - w[:, j].T  # the closed form: w_y - w_j
    ref = {"l1": np.abs(g).sum(1), "l2": np.sqrt((g ** 2).sum(1) + 1e-12),
           "l2_squared": (g ** 2).sum(1), "linf": np.abs(g).max(1)}[norm]
    np.testing.assert_allclose(got, 3.0 * ref, rtol=1e-12)


def tanh_net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((D,), dtype="float64"),
                             keras.layers.Dense(7, activation="tanh", dtype="float64"),
                             keras.layers.Dense(K, dtype="float64")])


def _penalty(model, term, x, y):
    ctx = O.StepContext(model, x, y, training=True)
    return tf.reduce_mean(term(ctx))


@pytest.mark.parametrize("term", [O.DecisionJacobian(c=2.0, norm="l2"),
                                  O.DecisionJacobian(c=2.0, norm="l2_squared"),
                                  O.DecisionJacobian(c=2.0),  # the dual of L∞: l1
                                  O.InputGradient(c=2.0, norm="l2_squared")])
def test_penalty_and_weight_gradient_match_float64_finite_differences(term):
    model = tanh_net()
    rng = np.random.default_rng(2)
    x, y = rng.uniform(size=(4, D)), rng.integers(0, K, 4)

    # 1. The penalty value against an input gradient by central differences.
    from tfrobust import losses
    f = losses.cross_entropy if isinstance(term, O.InputGradient) else losses.decision_margin
    h = 1e-6
    grads = np.zeros_like(x)
    for i in range(D):
        e = np.zeros(D)
        e[i] = h
        grads[:, i] = (f(model(x + e), y).numpy() - f(model(x - e), y).numpy()) / (2 * h)
    r = {"l2": np.sqrt((grads ** 2).sum(1) + 1e-12), "l2_squared": (grads ** 2).sum(1),
         "l1": np.abs(grads).sum(1)}[term.norm]
    np.testing.assert_allclose(_penalty(model, term, x, y).numpy(), 2.0 * r.mean(), rtol=1e-6)

    # 2. Its gradient w.r.t. the weights (double backprop) against central differences.
    with tf.GradientTape() as tape:
        p = _penalty(model, term, x, y)
    analytic = tape.gradient(p, model.trainable_weights)
    for var, grad in zip(model.trainable_weights, analytic):
        # None: the penalty does not depend on this variable (e.g. the last bias
        # for the decision Jacobian); the finite difference must then be zero.
        grad = tf.zeros_like(var) if grad is None else grad
        flat = var.numpy().ravel()
        for idx in range(0, flat.size, max(1, flat.size // 6)):
            old = flat.copy()
            vals = []
            for s in (+1, -1):
                new = old.copy()
                new[idx] += s * 1e-6
                var.assign(new.reshape(var.shape))
                vals.append(_penalty(model, term, x, y).numpy())
            var.assign(old.reshape(var.shape))
            numeric = (vals[0] - vals[1]) / 2e-6
            np.testing.assert_allclose(grad.numpy().ravel()[idx], numeric, rtol=1e-5, atol=1e-8)


def test_adversarial_training_mix_is_a_convex_combination():
    model, w, b = linear()
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0.2, 0.8, size=(6, D)), rng.integers(0, K, 6)
    attack = AttackConfig(name="fgsm", eps=0.1)
    from tfrobust import attacks, losses
    ctx = O.StepContext(model, x, y, training=False)
    term = O.AdversarialTraining(attack, mix=0.25)
    ctx.prepare(O.Objective([term]))
    x_adv = attacks.fgsm(model, x, y, eps=0.1)
    want = 0.75 * losses.cross_entropy(model(x), y) + 0.25 * losses.cross_entropy(model(x_adv), y)
    np.testing.assert_allclose(term(ctx).numpy(), want.numpy(), rtol=1e-12)


def test_shared_adversarial_point_is_generated_once():
    attack = AttackConfig(eps=0.1, steps=2)
    obj = O.AdversarialTraining(attack) + O.DecisionJacobian(c=1.0, at=attack)
    assert obj.attacks() == [attack]


def test_objective_sums_terms_and_reports_each():
    model, _, _ = linear()
    rng = np.random.default_rng(4)
    x, y = rng.uniform(size=(6, D)), rng.integers(0, K, 6)
    obj = O.CrossEntropy() + O.DecisionJacobian(c=0.5) + O.InputGradient(c=0.1)
    total, parts = obj(O.StepContext(model, x, y, training=False))
    assert set(parts) == {"ce", "jacobian_penalty", "input_grad_penalty"}
    np.testing.assert_allclose(total.numpy(), sum(v.numpy() for v in parts.values()), rtol=1e-12)


def test_objectives_round_trip_through_keras_serialisation():
    obj = (O.AdversarialTraining(AttackConfig(name="cw", eps=0.3, steps=10, step_size=0.1), mix=0.5)
           + O.DecisionJacobian(c=500.0, norm="l1") + O.FastAdversarialTraining(eps=0.3))
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert [t.get_config() for t in back.terms] == [t.get_config() for t in obj.terms]
    assert [type(t) for t in back.terms] == [type(t) for t in obj.terms]


@pytest.mark.parametrize("make,match", [
    (lambda: O.DecisionJacobian(c=-1.0), "c=-1.0"),
    (lambda: O.DecisionJacobian(norm="l3"), "'l3'"),
    (lambda: O.AdversarialTraining(mix=1.5), "mix=1.5"),
    (lambda: O.CrossEntropy() + O.CrossEntropy(), "distinct"),
    (lambda: O.AdversarialTraining({"eps": -2.0}), "eps=-2.0"),
])
def test_bad_objective_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
