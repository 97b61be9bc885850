"""Robustness indicator: HVPs, Lanczos and power iteration against explicit float64 Hessians; Jacobian norms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import losses, models
from tfrobust.analysis import indicator, linalg


def tiny_tanh_model(dtype="float64", shape=(4, 4, 1), hidden=6, classes=3):
    return keras.Sequential([
        keras.Input(shape, dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(hidden, activation="tanh", dtype=dtype),
        keras.layers.Dense(classes, dtype=dtype),
    ], name="tiny_tanh")


def explicit_hessians(fn, x):
    """Per-example D x D Hessians of a per-example scalar fn, by nested tapes (float64)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        with tf.GradientTape() as outer:
            outer.watch(xi)
            with tf.GradientTape() as inner:
                inner.watch(xi)
                value = tf.reduce_sum(fn(xi, i))
            grad = inner.gradient(value, xi)
        d = int(np.prod(xi.shape))
        out.append(tf.reshape(outer.jacobian(grad, xi), [d, d]).numpy())
    return out


@pytest.fixture
def tanh_case():
    model = tiny_tanh_model()
    x = tf.random.stateless_uniform((3, 4, 4, 1), seed=[1, 2], dtype=tf.float64)
    y = tf.constant([0, 1, 2])
    return model, x, y


def test_hvp_is_the_explicit_hessian_times_v(tanh_case):
    model, x, y = tanh_case
    hs = explicit_hessians(lambda xi, i: losses.decision_margin(model(xi), y[i:i + 1]), x)
    v = tf.random.stateless_normal(x.shape, seed=[3, 4], dtype=tf.float64)
    hv = linalg.hessian_vector_product(lambda t: losses.decision_margin(model(t), y), x, v).numpy()
    for i, h in enumerate(hs):
        np.testing.assert_allclose(hv[i].reshape(-1), h @ v.numpy()[i].reshape(-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("of", ["decision", "loss"])
def test_lanczos_eigenvalues_equal_explicit_hessian_float64(tanh_case, of):
    model, x, y = tanh_case
    fn = losses.decision_margin if of == "decision" else losses.cross_entropy
    hs = explicit_hessians(lambda xi, i: fn(model(xi), y[i:i + 1]), x)
    spec = indicator.hessian_eigenvalues(model, x, y, of=of, k=16, top_k=4)
    assert spec.top.dtype == tf.float64
    for i, h in enumerate(hs):
        exact = np.linalg.eigvalsh(h)
        top_exact = exact[np.argsort(-np.abs(exact))][:4]
        np.testing.assert_allclose(spec.top.numpy()[i], top_exact, rtol=1e-8, atol=1e-10)
        # Every Ritz value is an eigenvalue: the Krylov space is exhausted, no spurious values.
        ritz = spec.ritz.numpy()[i]
        assert np.max(np.min(np.abs(ritz[:, None] - exact[None, :]), axis=1)) < 1e-9
    # The rank of the decision Hessian is at most the hidden width (6 of 16 dimensions).
    if of == "decision":
        assert all(np.sum(np.abs(np.linalg.eigvalsh(h)) > 1e-10) <= 6 for h in hs)


def test_power_iteration_finds_the_dominant_eigenvalue_float64(tanh_case):
    model, x, y = tanh_case
    hs = explicit_hessians(lambda xi, i: losses.cross_entropy(model(xi), y[i:i + 1]), x)
    spec = indicator.hessian_eigenvalues(model, x, y, of="loss", method="power", top_k=1, iters=300)
    assert spec.ritz is None and spec.near_zero_share(1e-3) is None
    for i, h in enumerate(hs):
        exact = np.linalg.eigvalsh(h)
        dominant = exact[np.argmax(np.abs(exact))]
        np.testing.assert_allclose(spec.top.numpy()[i, 0], dominant, rtol=1e-6)


def test_power_iteration_with_deflation_on_a_diagonal_operator():
    diag = tf.constant([[5.0, -3.0, 1.0, 0.5, 0.0, 0.0]], tf.float64)
    values = linalg.power_iteration(lambda v: diag * v, tf.ones((1, 6), tf.float64), iters=200, k=3)
    np.testing.assert_allclose(values.numpy()[0], [5.0, -3.0, 1.0], rtol=1e-8)


def test_lanczos_breaks_down_cleanly_and_slq_estimates_the_near_zero_share():
    # 40-dimensional operator with 3 distinct non-zero eigenvalues and 30 zeros (75 %).
    eig = np.zeros(40)
    eig[:4], eig[4:7], eig[7:10] = 2.0, -1.0, 0.5
    diag = tf.constant(eig[None], tf.float64)
    v0 = tf.random.stateless_normal((400, 40), seed=[0, 1], dtype=tf.float64)
    result = linalg.lanczos(lambda v: diag * v, v0, k=10)
    # Krylov space: 4 distinct eigenvalues -> 4 live steps, the rest decoupled zeros.
    np.testing.assert_array_equal(result.steps.numpy(), 4)
    np.testing.assert_allclose(tf.reduce_sum(result.weights, -1).numpy(), 1.0, atol=1e-12)
    top = linalg.top_eigenvalues(result, 3).numpy()
    np.testing.assert_allclose(top, np.tile([2.0, -1.0, 0.5], (400, 1)), atol=1e-10)
    share = linalg.near_zero_share(result, 1e-6).numpy()
    assert abs(share.mean() - 0.75) < 0.02  # unbiased: E[share] = 30 / 40
    assert share.std() > 0.01  # and genuinely stochastic per start vector


def test_relu_network_has_zero_decision_hessian_but_curved_loss():
    model = models.mnist_cnn(input_shape=(8, 8, 1), width=0.25)
    x = tf.random.stateless_uniform((4, 8, 8, 1), seed=[5, 6])
    y = tf.constant([0, 1, 2, 3])
    spec_d = indicator.hessian_eigenvalues(model, x, y, of="decision", k=8)
    spec_l = indicator.hessian_eigenvalues(model, x, y, of="loss", k=8)
    assert np.all(spec_d.top.numpy() == 0.0)
    np.testing.assert_allclose(spec_d.near_zero_share(0.0).numpy(), 1.0)
    assert np.all(np.abs(spec_l.top.numpy()[:, 0]) > 0.0)


def test_jacobian_norm_of_linear_model_is_weight_difference():
    model = models.linear_classifier((3, 3, 1), num_classes=4)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(9, 4)).astype("float32")
    b = rng.normal(size=4).astype("float32")
    model.layers[-1].set_weights([w, b])
    x = rng.uniform(size=(16, 3, 3, 1)).astype("float32")
    y = rng.integers(0, 4, size=16)
    logits = x.reshape(16, 9) @ w + b
    masked = logits.copy()
    masked[np.arange(16), y] = -np.inf
    j = masked.argmax(1)
    diff = (w[:, y] - w[:, j]).T  # [16, 9]: w_y - w_j
    result = indicator.robustness_indicator(model, x, y, batch_size=8, k=4, jacobian_threshold=0.5)
    np.testing.assert_allclose(result.jacobian["l2"], np.linalg.norm(diff, axis=1), rtol=1e-5)
    np.testing.assert_allclose(result.jacobian["l1"], np.abs(diff).sum(1), rtol=1e-5)
    np.testing.assert_allclose(result.jacobian["linf"], np.abs(diff).max(1), rtol=1e-5)
    np.testing.assert_allclose(result.jacobian["near_zero_share"], (np.abs(diff) <= 0.5).mean(1), atol=1e-6)
    d = logits[np.arange(16), y] - logits[np.arange(16), j]
    np.testing.assert_allclose(result.margin, d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.normalised_margin, d / np.abs(diff).sum(1), rtol=1e-4, atol=1e-6)
    # A linear model has no curvature at all.
    assert np.all(result.hessian["decision"]["top"] == 0.0)
    summary = result.summary()
    np.testing.assert_allclose(summary["jacobian"]["l2"]["mean"], np.linalg.norm(diff, axis=1).mean(), rtol=1e-5)
    assert summary["clean_accuracy"] == pytest.approx(float(np.mean(d > 0)))


def test_relative_threshold_and_bad_arguments():
    jac = tf.constant([[1.0, 0.05, -0.2, 0.0]])
    stats = indicator.jacobian_statistics(jac, threshold=0.1, relative=True)
    np.testing.assert_allclose(stats["near_zero_share"].numpy(), [0.5])
    model = models.linear_classifier((2, 2, 1), num_classes=3)
    x = np.zeros((2, 2, 2, 1), "float32")
    with pytest.raises(ValueError, match="'jacobi'"):
        indicator.robustness_indicator(model, x, [0, 1], method="jacobi")
    with pytest.raises(ValueError, match="'hessian'"):
        indicator.robustness_indicator(model, x, [0, 1], hessian_of=["hessian"])
    with pytest.raises(ValueError, match="batch_size=0"):
        indicator.robustness_indicator(model, x, [0, 1], batch_size=0)


def test_power_iteration_over_batches_of_different_sizes_equals_one_batch():
    """7 examples at batch_size 4 retrace for the last 3 (their batch is unknown to the loop); run to
    convergence, the per-example top eigenvalue equals that of one batch of 7 (the start vectors
    differ, the examples do not interact)."""
    model = tiny_tanh_model("float64")
    x = np.random.default_rng(1).uniform(size=(7, 4, 4, 1))
    y = np.arange(7) % 3
    split = indicator.robustness_indicator(model, x, y, batch_size=4, method="power", k=1, iters=500)
    whole = indicator.robustness_indicator(model, x, y, batch_size=7, method="power", k=1, iters=500)
    for of in split.hessian:
        np.testing.assert_allclose(split.hessian[of]["top"], whole.hessian[of]["top"], rtol=1e-6, atol=1e-9)
