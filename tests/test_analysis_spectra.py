"""Layer spectra (weights and Jacobians) and sample margins, against closed forms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import models
from tfrobust.analysis import margins, spectra


def mlp():
    return keras.Sequential([
        keras.Input((3, 3, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="linear"),
        keras.layers.Dense(4, activation="relu", name="relu"),
        keras.layers.Dense(3, name="logits"),
    ], name="mlp")


def test_dense_weight_spectrum_is_the_svd_of_the_kernel():
    model = mlp()
    spec = spectra.weight_spectra(model)
    assert list(spec) == ["linear", "relu", "logits"]
    for layer in model.layers[1:]:
        np.testing.assert_allclose(spec[layer.name], np.linalg.svd(layer.kernel.numpy(), compute_uv=False),
                                   rtol=1e-6)


def test_jacobian_spectrum_of_a_linear_layer_is_the_svd_of_its_kernel():
    model = mlp()
    x = np.random.default_rng(0).uniform(size=(6, 3, 3, 1)).astype("float32")
    layer = model.get_layer("linear")
    values = spectra.layer_jacobian_spectrum(model, layer, x, k=9, steps=9, batch_size=4)
    assert values.shape == (6, 9)
    exact = np.linalg.svd(layer.kernel.numpy(), compute_uv=False)
    np.testing.assert_allclose(values[:, :5], np.tile(exact, (6, 1)), rtol=1e-4)
    assert np.all(values[:, 5:] < 1e-2 * exact[0])  # rank 5 of 9
    # A ReLU layer's Jacobian is diag(active) W^T: the SVD of W restricted to the active units.
    relu = model.get_layer("relu")
    values = spectra.layer_jacobian_spectrum(model, relu, x, k=5)
    h = model.get_layer("linear")(model.layers[0](x)).numpy()
    active = (h @ relu.kernel.numpy() + relu.bias.numpy()) > 0
    for i in range(6):
        w = relu.kernel.numpy()[:, active[i]]
        exact = np.linalg.svd(w, compute_uv=False) if w.size else np.zeros(0)
        np.testing.assert_allclose(values[i, :exact.size], exact, rtol=1e-4, atol=1e-5)


def test_conv_operator_spectrum_equals_the_explicit_circular_convolution_matrix():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 2, 4))
    size = 5
    eye = np.eye(size * size * 2).reshape(-1, size, size, 2)
    padded = np.pad(eye, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    matrix = tf.nn.conv2d(padded, kernel, 1, "VALID").numpy().reshape(eye.shape[0], -1)
    layer = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    layer.build((None, size, size, 2))
    layer.kernel.assign(kernel.astype("float32"))
    values = spectra.weight_spectrum(layer, input_shape=(size, size, 2))
    np.testing.assert_allclose(values, np.sort(np.linalg.svd(matrix, compute_uv=False))[::-1], rtol=1e-5)
    flat = spectra.weight_spectrum(layer, conv="kernel")
    np.testing.assert_allclose(flat, np.linalg.svd(kernel.reshape(-1, 4), compute_uv=False), rtol=1e-5)
    with pytest.raises(ValueError, match="'fourier'"):
        spectra.weight_spectrum(layer, conv="fourier")


def test_spread_and_jacobian_spectra_of_the_zoo_cnn():
    assert spectra.spread([1.0, 1.0, 1.0])["cv"] == 0.0
    s = spectra.spread([4.0, 2.0, 1.0, 1.0])
    assert s["max"] == 4.0 and s["max_over_median"] == pytest.approx(4.0 / 1.5)
    model = models.mnist_cnn(input_shape=(8, 8, 1), width=0.25)
    x = np.random.default_rng(2).uniform(size=(3, 8, 8, 1)).astype("float32")
    result = spectra.jacobian_spectra(model, x, k=4, steps=4)
    assert list(result) == [layer.name for layer in spectra.spectral_layers(model)]
    for values in result.values():
        assert values.shape == (3, 4)
        assert np.all(np.diff(values, axis=1) <= 1e-5)  # descending
    # The logits layer is linear: with k past its rank (10) Lanczos gives its kernel's spectrum exactly;
    # with k = 4 < rank the Ritz values are only bounds (they interlace: never above σ_max).
    last = spectra.spectral_layers(model)[-1]
    exact = np.linalg.svd(last.kernel.numpy(), compute_uv=False)
    full = spectra.layer_jacobian_spectrum(model, last, x, k=10)  # 22 steps by default
    np.testing.assert_allclose(full, np.tile(exact, (3, 1)), rtol=1e-4)
    assert np.all(result[last.name] <= exact[0] * (1 + 1e-5))
    with pytest.raises(ValueError, match="steps=2"):
        spectra.jacobian_spectra(model, x, k=4, steps=2)


def test_sample_margins_of_a_linear_model():
    model = models.linear_classifier((2, 2, 1), num_classes=3)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3)).astype("float32")
    model.layers[-1].set_weights([w, np.zeros(3, "float32")])
    x = rng.uniform(size=(10, 2, 2, 1)).astype("float32")
    y = rng.integers(0, 3, size=10)
    z = x.reshape(10, 4) @ w
    other = z.copy()
    other[np.arange(10), y] = -np.inf
    j = other.argmax(1)
    d = z[np.arange(10), y] - z[np.arange(10), j]
    diff = (w[:, y] - w[:, j]).T
    m = margins.sample_margins(model, x, y, norm="l2", batch_size=3)
    np.testing.assert_allclose(m.raw, d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.grad_norm, np.linalg.norm(diff, axis=1), rtol=1e-5)
    np.testing.assert_allclose(m.normalised, d / np.linalg.norm(diff, axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(m.correct, d > 0)
    summary = m.summary()
    assert summary["raw"]["median"] == pytest.approx(float(np.median(d)), rel=1e-5)
    with pytest.raises(ValueError, match="'l7'"):
        margins.sample_margins(model, x, y, norm="l7")
