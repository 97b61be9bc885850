"""The one margin-and-gradient-norm definition (losses.margin_and_gradient_norm) on a linear model."""

import numpy as np
import pytest
import tensorflow as tf

from tfrobust import losses, norms


def _linear(w, b):
    w, b = tf.constant(w), tf.constant(b)
    return lambda x, training=False: tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), w) + b


@pytest.mark.parametrize("norm,dual", [("linf", 1), ("l2", 2)])
@pytest.mark.parametrize("labelled", [True, False])
def test_closed_form_on_a_linear_model(norm, dual, labelled):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 4)), rng.normal(size=4)
    x = rng.normal(size=(5, 2, 3))
    z = x.reshape(5, -1) @ w + b
    y = z.argsort(-1)[:, -2] if labelled else z.argmax(-1)  # labelled: the runner-up, so some margins < 0
    wrong = np.where(np.arange(4)[None] == y[:, None], -np.inf, z).argmax(-1)
    margin = z[np.arange(5), y] - z[np.arange(5), wrong]
    grad_norm = np.linalg.norm((w[:, y] - w[:, wrong]).T, ord=dual, axis=-1)
    logits, m, g = losses.margin_and_gradient_norm(_linear(w, b), tf.constant(x), tf.constant(y) if labelled
                                                    else None, norm=norm)
    np.testing.assert_allclose(logits.numpy(), z, rtol=1e-12)
    np.testing.assert_allclose(m.numpy(), margin, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), grad_norm, rtol=1e-12)
    assert (m.numpy() < 0).any() == labelled
    # The first-order distance to the boundary: exact for a linear model.
    np.testing.assert_allclose(norms.safe_ratio(m, g).numpy(), margin / grad_norm, rtol=1e-12)


def test_a_flat_model_has_gradient_norm_zero_and_a_finite_ratio():
    flat = lambda x, training=False: tf.tile(tf.constant([[2.0, 0.5]]), [tf.shape(x)[0], 1])  # noqa: E731
    logits, m, g = losses.margin_and_gradient_norm(flat, tf.ones([3, 4]), dtype=tf.float32)
    assert logits.dtype == tf.float32
    np.testing.assert_array_equal(g.numpy(), 0.0)
    np.testing.assert_allclose(norms.safe_ratio(m, g).numpy(), 1.5 / norms.TINY, rtol=1e-6)
