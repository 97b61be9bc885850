"""Dual-norm Jacobian penalties and the finite-step curvature term, against closed forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import objectives as O

D, K = 5, 3


class Quadratic(keras.layers.Layer):
    """Logits ``z_k(x) = x^T A_k x / 2 + w_k^T x``, float64."""

    def __init__(self, a, w, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.a = tf.constant(a)
        self.w = tf.constant(w)

    def call(self, x):
        quad = 0.5 * tf.einsum("ni,kij,nj->nk", x, self.a, x)
        return quad + x @ self.w


def quadratic_model(seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(K, D, D)) * scale
    a = 0.5 * (a + a.transpose(0, 2, 1))
    w = rng.normal(size=(D, K)) * 3.0
    return keras.Sequential([keras.Input((D,), dtype="float64"), Quadratic(a, w)]), a, w


def logits_np(x, a, w):
    return 0.5 * np.einsum("ni,kij,nj->nk", x, a, x) + x @ w


def margin_np(z, y):
    other = np.where(np.eye(K)[y] > 0, -np.inf, z)
    return z[np.arange(len(y)), y] - other.max(-1), other.argmax(-1)


@pytest.mark.parametrize("threat,dual", [("linf", "l1"), ("l2", "l2")])
def test_jacobian_penalty_defaults_to_the_dual_of_the_threat(threat, dual):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(D, K)), rng.normal(size=K)
    model = keras.Sequential([keras.Input((D,), dtype="float64"), keras.layers.Dense(K, dtype="float64")])
    model.layers[0].set_weights([w, b])
    x, y = rng.uniform(size=(6, D)), rng.integers(0, K, 6)
    term = O.DecisionJacobian(c=0.7, threat=threat)
    assert term.norm == dual and O.InputGradient(threat=threat).norm == dual
    _, j = margin_np(x @ w + b, y)
    g = w[:, y].T - w[:, j].T  # closed form of ∇x d: w_y - w_j
    want = np.abs(g).sum(1) if dual == "l1" else np.sqrt((g ** 2).sum(1) + 1e-12)
    got = term(O.StepContext(model, x, y, training=False)).numpy()
    np.testing.assert_allclose(got, 0.7 * want, rtol=1e-12)
    # An explicit norm still wins, and a bad threat is named.
    assert O.DecisionJacobian(threat=threat, norm="l2_squared").norm == "l2_squared"
    with pytest.raises(ValueError, match="'l3'"):
        O.DecisionJacobian(threat="l3")


@pytest.mark.parametrize("threat", ["linf", "l2"])
def test_curvature_gap_is_the_quadratic_form_on_a_quadratic_model(threat):
    model, a, w = quadratic_model()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0.3, 0.7, size=(8, D)), rng.integers(0, K, 8)
    h = 0.05
    ctx = O.StepContext(model, x, y, training=False, clip=None)
    got = O.DecisionCurvature(c=2.0, h=h, threat=threat)(ctx).numpy()

    # Reference in float64 numpy: ∇x d = (A_y - A_j) x + (w_y - w_j), a step of h
    # against its steepest direction, and the exact gap ½ δᵀ (A_y - A_j) δ.
    d0, j = margin_np(logits_np(x, a, w), y)
    diff_a = a[y] - a[j]
    g = np.einsum("nij,nj->ni", diff_a, x) + (w[:, y] - w[:, j]).T
    u = np.sign(g) if threat == "linf" else g / np.linalg.norm(g, axis=1, keepdims=True)
    delta = -h * u
    d1, j1 = margin_np(logits_np(x + delta, a, w), y)
    assert (j1 == j).all(), "test data must keep the runner-up class over the step"
    quad = 0.5 * np.einsum("ni,nij,nj->n", delta, diff_a, delta)
    np.testing.assert_allclose(d1 - d0 - (delta * g).sum(1), quad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got, 2.0 * np.abs(quad), rtol=1e-9, atol=1e-12)


def test_curvature_vanishes_on_a_linear_model_with_a_fixed_runner_up():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(D, K)) * 5, np.array([10.0, 0.0, 0.0])
    model = keras.Sequential([keras.Input((D,), dtype="float64"), keras.layers.Dense(K, dtype="float64")])
    model.layers[0].set_weights([w, b])
    x, y = rng.uniform(0.0, 1.0, size=(6, D)), np.zeros(6, int)
    x[:, 0] = 0.0  # on the clip boundary: the clipped step keeps the gap exact
    ctx = O.StepContext(model, x, y, training=False, clip=(0.0, 1.0))
    gap = O.linearity_gap(ctx, 0.2, "linf").numpy()
    z0 = x @ w + b
    assert (np.sort(z0[:, 1:], axis=1)[:, -1] - np.sort(z0[:, 1:], axis=1)[:, -2] > 0).all()
    np.testing.assert_allclose(gap, 0.0, atol=1e-10)


def test_curvature_weight_gradient_matches_float64_finite_differences():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D,), dtype="float64"),
                              keras.layers.Dense(7, activation="tanh", dtype="float64"),
                              keras.layers.Dense(K, dtype="float64")])
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0.2, 0.8, size=(4, D)), rng.integers(0, K, 4)
    term = O.DecisionCurvature(c=1.5, h=0.1)

    def value():
        return tf.reduce_mean(term(O.StepContext(model, x, y, training=True)))

    with tf.GradientTape() as tape:
        v = value()
    grads = tape.gradient(v, model.trainable_weights)
    for var, grad in zip(model.trainable_weights, grads):
        flat = var.numpy().ravel()
        for idx in range(0, flat.size, max(1, flat.size // 5)):
            vals = []
            for s in (+1, -1):
                new = flat.copy()
                new[idx] += s * 1e-6
                var.assign(new.reshape(var.shape))
                vals.append(value().numpy())
            var.assign(flat.reshape(var.shape))
            numeric = (vals[0] - vals[1]) / 2e-6
            np.testing.assert_allclose(grad.numpy().ravel()[idx], numeric, rtol=1e-5, atol=1e-8)


def test_curvature_shares_the_jacobian_input_gradient_and_round_trips():
    model, _, _ = quadratic_model()
    x, y = np.random.default_rng(4).uniform(size=(3, D)), np.array([0, 1, 2])
    ctx = O.StepContext(model, x, y, training=False)
    obj = O.CrossEntropy() + O.DecisionJacobian(c=0.01) + O.DecisionCurvature(c=0.3, h=0.2)
    _, parts = obj(ctx)
    assert set(parts) == {"ce", "jacobian_penalty", "curvature_penalty"}
    from tfrobust import losses
    first = ctx.input_gradient(O.CLEAN, losses.decision_margin)
    assert ctx.input_gradient(O.CLEAN, losses.decision_margin) is first  # computed once per step
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert [t.get_config() for t in back.terms] == [t.get_config() for t in obj.terms]
    for make, match in ((lambda: O.DecisionCurvature(h=0.0), "h=0.0"),
                        (lambda: O.DecisionCurvature(c=-1), "c=-1"),
                        (lambda: O.DecisionCurvature(threat="l1"), "'l1'")):
        with pytest.raises(ValueError, match=match):
            make()
