"""Bound propagation: closed forms, soundness over generated nets, enumeration in float64, certificates."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfrobust import attacks, bounds, models
from tfrobust import objectives as O

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def margins(logits, y):
    logits = np.asarray(logits, np.float64)
    return logits[np.arange(len(y)), y][:, None] - logits


def affine_min(v, c, lower, upper):
    """min of v·x + c over the box [lower, upper], per row of v: the closed form."""
    return np.minimum(v * lower, v * upper).sum(-1) + c


@pytest.mark.parametrize("method", bounds.BOUND_METHODS)
@pytest.mark.parametrize("center", [0.5, 0.97])  # far from the clip range, and cut by it
def test_one_affine_layer_is_exact(method, center):
    keras.utils.set_random_seed(1)
    net = models.linear_classifier((3, 2), num_classes=4)
    rng = np.random.default_rng(0)
    x = (center + 0.02 * rng.standard_normal((5, 3, 2))).clip(0, 1)
    y = np.array([0, 1, 2, 3, 0])
    eps = 0.1
    lb = bounds.margin_lower_bounds(net, x, y, eps, method=method).numpy()
    w, b = (v.numpy().astype(np.float64) for v in net.layers[-1].weights)
    flat = x.reshape(5, -1)
    lower, upper = np.maximum(flat - eps, 0), np.minimum(flat + eps, 1)
    for i, j in itertools.product(range(5), range(4)):
        v, c = w[:, y[i]] - w[:, j], b[y[i]] - b[j]
        expected = affine_min(v, c, lower[i], upper[i])
        if center == 0.5:  # no clipping: w·x + b − eps·‖w‖₁
            np.testing.assert_allclose(expected, v @ flat[i] + c - eps * np.abs(v).sum(), atol=1e-12)
        np.testing.assert_allclose(lb[i, j], expected, rtol=1e-12, atol=1e-12)
    assert lb.dtype == np.float64  # float64 inputs are bounded in float64


def tiny_relu_net(seed, hidden=(4, 4)):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((2,))] + [keras.layers.Dense(h, activation="relu") for h in hidden]
    return keras.Sequential(layers + [keras.layers.Dense(3)])


def grid_margin_min(net, x0, y, eps, points=201):
    """Exhaustive float64 minimum of z_y − z_j over a grid of the box (corners included)."""
    weights = [w.numpy().astype(np.float64) for w in net.weights]
    a = np.linspace(x0[0] - eps, x0[0] + eps, points)
    b = np.linspace(x0[1] - eps, x0[1] + eps, points)
    h = np.stack(np.meshgrid(a, b), -1).reshape(-1, 2)
    for k in range(0, len(weights) - 2, 2):
        h = np.maximum(h @ weights[k] + weights[k + 1], 0)
    z = h @ weights[-2] + weights[-1]
    return (z[:, [y]] - z).min(0)


@pytest.mark.parametrize("seed", range(4))
def test_tiny_net_against_enumeration_in_float64(seed):
    net = tiny_relu_net(seed)
    x0 = np.array([0.3, -0.2])
    y = int(np.argmax(net(x0[None].astype(np.float32))))
    for eps in (0.05, 0.5):
        exact = grid_margin_min(net, x0, y, eps)
        ibp = bounds.margin_lower_bounds(net, x0[None], [y], eps, method="ibp", clip=None).numpy()[0]
        crown = bounds.margin_lower_bounds(net, x0[None], [y], eps, method="crown-ibp", clip=None).numpy()[0]
        assert np.all(ibp <= exact + 1e-12) and np.all(crown <= exact + 1e-12)
        assert np.all(crown >= ibp)


def test_stable_relus_make_the_linear_bound_exact():
    net = tiny_relu_net(0)
    x0 = np.array([0.3, -0.2])
    y = int(np.argmax(net(x0[None].astype(np.float32))))
    eps = 1e-4  # small enough that no ReLU changes sign in the box: the net is affine there
    boxes = bounds.interval_bounds(bounds.graph_of(net), *bounds.input_box(x0[None], eps, None))
    pre = [boxes[n.inputs[0]] for n in bounds.graph_of(net).nodes if n.relu]
    assert all(np.all((lo.numpy() > 0) | (hi.numpy() < 0)) for lo, hi in pre)
    exact = grid_margin_min(net, x0, y, eps, points=3)  # an affine minimum lies at a corner
    crown = bounds.margin_lower_bounds(net, x0[None], [y], eps, method="crown-ibp", clip=None).numpy()[0]
    np.testing.assert_allclose(crown, exact, atol=1e-12)


def test_linear_bound_is_tighter_than_ibp_on_a_deeper_net():
    net = tiny_relu_net(3, hidden=(16, 16, 16))
    x = np.random.default_rng(0).uniform(-1, 1, (32, 2))
    y = np.argmax(net(x.astype(np.float32)), -1)
    ibp = bounds.margin_lower_bounds(net, x, y, 0.05, method="ibp", clip=None).numpy()
    crown = bounds.margin_lower_bounds(net, x, y, 0.05, method="crown-ibp", clip=None).numpy()
    others = ~np.eye(3, dtype=bool)[y]
    assert np.all(crown >= ibp) and np.mean(crown[others] - ibp[others]) > 0.1 * np.mean(np.abs(ibp[others]))


def random_net(draw_layers, seed):
    """A small net of the supported layers, drawn from a list of names."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for name in draw_layers:
        if name == "conv":
            h = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(h)
        elif name == "conv_strided":
            h = keras.layers.Conv2D(3, 3, strides=2, padding="valid")(h)
            h = keras.layers.ReLU()(h)
        elif name == "maxpool" and h.shape[1] >= 2:
            h = keras.layers.MaxPooling2D(2)(h)
        elif name == "avgpool" and h.shape[1] >= 2:
            h = keras.layers.AveragePooling2D(2)(h)
        elif name == "batchnorm":
            bn = keras.layers.BatchNormalization()
            h = bn(h)
            bn.moving_mean.assign(np.random.default_rng(seed).normal(0, 0.3, bn.moving_mean.shape))
            bn.moving_variance.assign(np.random.default_rng(seed + 1).uniform(0.5, 2, bn.moving_variance.shape))
        elif name == "residual":
            r = keras.layers.Conv2D(h.shape[-1], 3, padding="same", activation="relu")(h)
            h = keras.layers.Add()([h, r])
        elif name == "tanh":
            h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.5)(keras.layers.Dense(6, activation="relu")(h))
    return keras.Model(inputs, keras.layers.Dense(4)(h))


LAYERS = st.lists(st.sampled_from(["conv", "conv_strided", "maxpool", "avgpool", "batchnorm", "residual",
                                   "tanh"]), min_size=1, max_size=4)


@SETTINGS
@given(layers=LAYERS, seed=st.integers(0, 1000), eps=st.sampled_from([0.01, 0.05, 0.2]),
       method=st.sampled_from(bounds.BOUND_METHODS))
def test_bounds_contain_sampled_and_attacked_points(layers, seed, eps, method):
    net = random_net(layers, seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (6, 8, 8, 1)).astype(np.float32)
    y = np.argmax(net(x), -1)
    lb = bounds.margin_lower_bounds(net, x, y, eps, method=method).numpy()
    lo_logit, hi_logit = (b.numpy() for b in bounds.logit_bounds(net, x, eps))
    lower, upper = (b.numpy() for b in bounds.input_box(x, eps, (0.0, 1.0)))
    points = [rng.uniform(lower, upper).astype(np.float32) for _ in range(20)]
    points += [lower, upper, attacks.pgd(net, x, y, eps=eps, steps=10, step_size=eps / 4).numpy(),
               attacks.cw(net, x, y, eps=eps, steps=10, step_size=eps / 4).numpy()]
    slack = 1e-4 * (1 + np.abs(lb))  # float32 rounding of the bounds and of the forward pass
    for p in points:
        assert np.all(p >= lower - 1e-7) and np.all(p <= upper + 1e-7)
        z = net(p).numpy()
        assert np.all(margins(z, y) >= lb - slack)
        assert np.all(z >= lo_logit - 1e-4 * (1 + np.abs(lo_logit)))
        assert np.all(z <= hi_logit + 1e-4 * (1 + np.abs(hi_logit)))


@pytest.mark.parametrize("build", [
    lambda: models.mnist_cnn(width=0.25), lambda: models.cifar_cnn(width=0.25), lambda: models.ibp_cnn(),
    lambda: models.ibp_cnn(size="medium"), lambda: models.wide_resnet(depth=10, widen=1),
    lambda: models.linear_classifier((28, 28, 1))], ids=["mnist_cnn", "cifar_cnn", "ibp_small", "ibp_medium",
                                                         "wide_resnet", "linear"])
def test_every_zoo_model_is_bounded_in_a_graph(build):
    net = build()
    x = np.random.default_rng(0).uniform(0, 1, (3,) + net.input_shape[1:]).astype(np.float32)
    y = np.argmax(net(x), -1)
    fn = tf.function(lambda x, y: bounds.margin_lower_bounds(net, x, y, 0.0, method="crown-ibp"),
                     input_signature=[tf.TensorSpec([None] + list(x.shape[1:])), tf.TensorSpec([None], tf.int64)])
    lb = fn(x, y).numpy()
    # At eps 0 the bound is the margin itself (up to float32 rounding of a long sum).
    np.testing.assert_allclose(lb, margins(net(x), y), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("layer,message", [
    (keras.layers.LayerNormalization(), "LayerNormalization"),
    (keras.layers.Activation("gelu"), "gelu"),
    (keras.layers.Dense(4, activation="swish"), "silu"),
])
def test_unsupported_layers_are_refused_by_name(layer, message):
    net = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=message):
        bounds.margin_lower_bounds(net, np.zeros((1, 4), np.float32), [0], 0.1)


def test_subclassed_model_and_bad_method_are_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)
    net = Net()
    net(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="subclassed"):
        bounds.margin_lower_bounds(net, np.zeros((1, 4), np.float32), [0], 0.1)
    with pytest.raises(ValueError, match="'crown'"):
        bounds.margin_lower_bounds(tiny_relu_net(0), np.zeros((1, 2), np.float32), [0], 0.1, method="crown")


def test_certified_radius_matches_the_linear_closed_form():
    keras.utils.set_random_seed(2)
    net = models.linear_classifier((4,), num_classes=3)
    x = np.random.default_rng(1).uniform(0.4, 0.6, (16, 4)).astype(np.float32)
    tol = 1e-3
    radius, predicted = bounds.certified_radius(net, x, clip=None, max_eps=1.0, tolerance=tol)
    w, b = (v.numpy().astype(np.float64) for v in net.layers[-1].weights)
    z = x.astype(np.float64) @ w + b
    p = z.argmax(-1)
    np.testing.assert_array_equal(predicted.numpy(), p)
    for i in range(16):
        exact = min((z[i, p[i]] - z[i, j]) / np.abs(w[:, p[i]] - w[:, j]).sum() for j in range(3) if j != p[i])
        exact = min(exact, 1.0)
        assert exact - tol - 1e-6 <= radius[i] <= exact + 1e-6
    assert np.all(bounds.verified(net, x, p, radius, clip=None).numpy()[radius.numpy() > 0])


def test_certified_radius_is_proven_and_cut_to_the_clip_box():
    net = tiny_relu_net(1)
    x = np.random.default_rng(2).uniform(0, 1, (8, 2)).astype(np.float32)
    radius, predicted = bounds.certified_radius(net, x, method="crown-ibp", tolerance=1 / 64)
    r = radius.numpy()
    assert np.all((r >= 0) & (r <= 1.0))
    ok = bounds.verified(net, x, predicted, radius, method="crown-ibp").numpy()
    assert np.all(ok[r > 0])
    assert not np.any(bounds.verified(net, x, predicted, radius + 1 / 64 + 1e-6, method="crown-ibp").numpy()
                      [r + 1 / 64 < 1.0])
    with pytest.raises(ValueError, match="tolerance=0"):
        bounds.certified_radius(net, x, tolerance=0)


def test_certified_training_objective_closed_forms():
    keras.utils.set_random_seed(3)
    net = models.linear_classifier((4,), num_classes=3)
    x = np.random.default_rng(3).uniform(0.3, 0.7, (8, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    ctx = O.StepContext(net, x, y, training=False)
    clean = tf.nn.sparse_softmax_cross_entropy_with_logits(y, net(x)).numpy()
    np.testing.assert_allclose(O.CertifiedTraining(eps=0.1, kappa=1.0)(ctx).numpy(), clean, rtol=1e-6)
    lb = bounds.margin_lower_bounds(net, x, y, 0.1).numpy()
    worst = tf.nn.sparse_softmax_cross_entropy_with_logits(y, -lb).numpy()
    np.testing.assert_allclose(O.CertifiedTraining(eps=0.1, kappa=0.0)(ctx).numpy(), worst, rtol=1e-6)
    mixed = O.CertifiedTraining(eps=0.1, kappa=0.25, kappa_start=1.0)(ctx).numpy()
    np.testing.assert_allclose(mixed, 0.25 * clean + 0.75 * worst, rtol=1e-6)
    # Halfway through the eps warm-up: eps 0.05, kappa halfway from 1 to 0.25.
    half = O.StepContext(net, x, y, training=False, eps_scale=tf.constant(0.5))
    lb_half = bounds.margin_lower_bounds(net, x, y, 0.05).numpy()
    worst_half = tf.nn.sparse_softmax_cross_entropy_with_logits(y, -lb_half).numpy()
    np.testing.assert_allclose(O.CertifiedTraining(eps=0.1, kappa=0.25, kappa_start=1.0)(half).numpy(),
                               0.625 * clean + 0.375 * worst_half, rtol=1e-5)
    assert np.all(worst >= clean)  # the worst case in the ball is never better than the clean point


def test_certified_training_raises_verified_accuracy():
    # 20 inputs, one of which decides the label with an L∞ margin of 0.1: natural training spreads
    # weight over the other 19, which IBP's bound pays for; IBP training learns to ignore them.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (1024, 20)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int32)
    keep = np.abs(x[:, 0] - 0.5) > 0.1
    x, y = x[keep], y[keep]
    result = {}
    for name, objective in [("natural", O.CrossEntropy()),
                            ("ibp", O.CertifiedTraining(eps=0.08, kappa=0.0, kappa_start=0.0))]:
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((20,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
        model = models.RobustModel(net, objective)
        model.compile(optimizer=keras.optimizers.Adam(0.01))
        model.fit(x, y, epochs=10, batch_size=64, verbose=0)
        result[name] = bounds.verified(model.classifier, x, y, 0.08).numpy().mean()
    # Measured: natural 0.41, IBP 0.89 of the training points verified at 0.08.
    assert result["ibp"] > 0.8 and result["ibp"] > result["natural"] + 0.3, result


def test_certified_training_config_round_trip_and_bad_values():
    term = O.CertifiedTraining(eps=0.4, method="crown-ibp", kappa=0.0, beta=0.5)
    assert O.CertifiedTraining.from_config(term.get_config()) == term
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
    assert restored == term
    for kwargs, message in [({"method": "crown"}, "'crown'"), ({"kappa": 1.5}, "kappa=1.5"),
                            ({"eps": -1.0}, "eps=-1.0"), ({"beta_start": -0.1}, "beta_start=-0.1")]:
        with pytest.raises(ValueError, match=message):
            O.CertifiedTraining(**kwargs)
