"""Decision surfaces: grid values equal the model's, directions, trajectories, parameter space."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, losses, models
from tfrobust.analysis import surface


def small_cnn():
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(3, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(4),
    ], name="small_cnn")


@pytest.fixture
def case():
    model = small_cnn()
    x = tf.random.stateless_uniform((1, 6, 6, 1), seed=[0, 1])
    y = tf.constant([2])
    return model, x, y


def d_of(model, points, label):
    return losses.decision_margin(model(points), tf.fill([points.shape[0]], label)).numpy()


def test_surface_at_origin_is_the_decision_function(case):
    model, x, y = case
    for direction in surface.DIRECTIONS:
        s = surface.input_surface(model, x, y, direction=direction, steps=11, eps=0.2, trajectory=False)
        assert s.alphas[5] == 0.0 and s.betas[5] == 0.0
        np.testing.assert_allclose(s.decision[5, 5], d_of(model, x, 2)[0], rtol=1e-5)
        np.testing.assert_allclose(s.loss[5, 5], losses.cross_entropy(model(x), y).numpy()[0], rtol=1e-5)
        np.testing.assert_allclose(s.value_at(0.0, 0.0), s.decision[5, 5])
    # A RobustModel and a single un-batched example are accepted too.
    s = surface.input_surface(models.RobustModel(model), x[0], 2, steps=3, trajectory=False)
    np.testing.assert_allclose(s.decision[1, 1], d_of(model, x, 2)[0], rtol=1e-5)


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
def test_grid_evaluation_equals_per_point_evaluation(case, clip):
    model, x, y = case
    u, v = surface.input_directions(model, x, y, "ce", seed=3)
    alphas = np.linspace(-0.5, 0.4, 7)
    betas = np.linspace(-0.3, 0.6, 5)
    dec, ce = surface.evaluate_plane(model, x, y, u, v, alphas, betas, clip=clip, batch_size=4)
    assert dec.shape == (5, 7)
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            point = x + float(a) * u + float(b) * v
            if clip is not None:
                point = tf.clip_by_value(point, *clip)
            np.testing.assert_allclose(dec[j, i], d_of(model, point, 2)[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ce[j, i], losses.cross_entropy(model(point), y).numpy()[0],
                                       rtol=1e-5, atol=1e-6)
    # The batch size does not change the values.
    dec_big, _ = surface.evaluate_plane(model, x, y, u, v, alphas, betas, clip=clip, batch_size=1000)
    np.testing.assert_allclose(dec_big, dec, rtol=1e-6, atol=1e-6)


def test_directions_and_the_eps_ball(case):
    model, x, y = case
    with tf.GradientTape() as tape:
        tape.watch(x)
        ce = losses.cross_entropy(model(x), y)
    u, v = surface.input_directions(model, x, y, "ce", norm="linf")
    np.testing.assert_array_equal(u.numpy(), np.sign(tape.gradient(ce, x).numpy()))
    assert set(np.unique(np.abs(v.numpy()))) == {1.0}
    with tf.GradientTape() as tape:
        tape.watch(x)
        d = losses.decision_margin(model(x), y)
    u_cw, _ = surface.input_directions(model, x, y, "cw")
    np.testing.assert_array_equal(u_cw.numpy(), -np.sign(tape.gradient(d, x).numpy()))
    # L2: orthonormal directions, so the ball's section is a disc of radius eps.
    u2, v2 = surface.input_directions(model, x, y, "ll", norm="l2")
    gram = np.array([[np.vdot(a, b) for b in (u2.numpy(), v2.numpy())] for a in (u2.numpy(), v2.numpy())])
    np.testing.assert_allclose(gram, np.eye(2), atol=1e-6)
    s = surface.input_surface(model, x, y, direction="ll", norm="l2", steps=9, eps=0.2, trajectory=False)
    aa, bb = np.meshgrid(s.alphas, s.betas)
    np.testing.assert_allclose(s.ball, np.hypot(aa, bb), rtol=1e-5, atol=1e-6)
    # L∞ sign vectors: the section is the diamond |a| + |b| (all sign pairs occur).
    s = surface.input_surface(model, x, y, direction="random", steps=9, eps=0.2, trajectory=False)
    aa, bb = np.meshgrid(s.alphas, s.betas)
    np.testing.assert_allclose(s.ball, np.abs(aa) + np.abs(bb), rtol=1e-5, atol=1e-6)


def test_trajectory_is_bim_and_starts_on_the_plane(case):
    model, x, y = case
    s = surface.input_surface(model, x, y, direction="ce", steps=5, eps=0.3, attack_steps=6)
    step = 2.5 * 0.3 / 6
    np.testing.assert_allclose(s.trajectory[0], [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(s.trajectory[1], [step, 0.0], atol=1e-6)  # first BIM step is step * u
    assert s.trajectory_offplane[1] < 1e-5
    points = surface.attack_trajectory(model, x, y, attack="ce", eps=0.3, steps=6, clip=None)
    bim = attacks.bim(model, x, y, eps=0.3, steps=6, clip=None)
    np.testing.assert_allclose(points[-1:].numpy(), bim.numpy(), atol=1e-6)
    np.testing.assert_allclose(s.trajectory_decision[-1], d_of(model, bim, 2)[0], rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(points.numpy() - x.numpy())) <= 0.3 + 1e-6


def test_filter_normalised_directions_have_the_weights_filter_norms(case):
    model, _, _ = case
    dirs = surface.filter_normalized_directions(model, seed=4)
    for var, d in zip(model.trainable_variables, dirs):
        w = var.numpy()
        d = d.numpy()
        assert d.shape == w.shape
        if w.ndim == 1:
            np.testing.assert_array_equal(d, 0.0)
            continue
        axes = tuple(range(w.ndim - 1))
        np.testing.assert_allclose(np.sqrt((d ** 2).sum(axes)), np.sqrt((w ** 2).sum(axes)), rtol=1e-5)
        assert not np.allclose(d, w)
    with_bias = surface.filter_normalized_directions(model, seed=4, include_biases=True)
    np.testing.assert_array_equal(with_bias[1].numpy(), model.trainable_variables[1].numpy())
    other = surface.filter_normalized_directions(model, seed=5)
    assert not np.allclose(other[0].numpy(), dirs[0].numpy())


def test_parameter_grid_equals_evaluation_with_assigned_weights():
    model = models.mnist_cnn(input_shape=(8, 8, 1), width=0.25)
    x = tf.random.stateless_uniform((12, 8, 8, 1), seed=[7, 8])
    y = tf.constant(np.arange(12) % 4)
    d1 = surface.filter_normalized_directions(model, seed=0)
    d2 = surface.filter_normalized_directions(model, seed=1)
    alphas = np.array([-0.5, 0.0, 0.25])
    betas = np.array([0.0, 0.75])
    # 6 points in batches of 4 then of 5 (whose last call holds a single point): different batch
    # shapes make the traced graph shape-generic, where tf.vectorized_map mishandles one point.
    first = surface.evaluate_parameter_plane(model, x, y, d1, d2, alphas, betas, grid_batch=4)
    dec, ce, acc = surface.evaluate_parameter_plane(model, x, y, d1, d2, alphas, betas, grid_batch=5)
    np.testing.assert_allclose(first[1], ce, rtol=1e-5)
    original = [v.numpy() for v in model.trainable_variables]
    try:
        for j, b in enumerate(betas):
            for i, a in enumerate(alphas):
                for var, w, e1, e2 in zip(model.trainable_variables, original, d1, d2):
                    var.assign(w + a * e1.numpy() + b * e2.numpy())
                logits = model(x)
                np.testing.assert_allclose(dec[j, i], np.mean(losses.decision_margin(logits, y)), rtol=1e-4,
                                           atol=1e-5)
                np.testing.assert_allclose(ce[j, i], np.mean(losses.cross_entropy(logits, y)), rtol=1e-4)
                np.testing.assert_allclose(acc[j, i], np.mean(np.argmax(logits, -1) == y.numpy()))
    finally:
        for var, w in zip(model.trainable_variables, original):
            var.assign(w)
    # Evaluating the plane did not touch the model's own weights.
    s = surface.parameter_surface(model, x, y, steps=3, span=0.5)
    np.testing.assert_allclose(s.loss[1, 1], np.mean(losses.cross_entropy(model(x), y)), rtol=1e-5)
    assert s.space == "parameter" and s.accuracy.shape == (3, 3)


def test_surface_json_round_trip_and_bad_arguments(case, tmp_path):
    model, x, y = case
    s = surface.input_surface(model, x, y, direction="cw", steps=5, attack_steps=2)
    s.to_json(tmp_path / "s.json")
    import json
    back = surface.Surface.from_dict(json.loads((tmp_path / "s.json").read_text()))
    np.testing.assert_allclose(back.decision, s.decision)
    np.testing.assert_allclose(back.trajectory, s.trajectory)
    assert back.direction == "cw" and back.label == 2
    with pytest.raises(ValueError, match="'sideways'"):
        surface.input_surface(model, x, y, direction="sideways")
    with pytest.raises(ValueError, match="'l3'"):
        surface.input_surface(model, x, y, norm="l3")
    with pytest.raises(ValueError, match="steps=0"):
        surface.input_surface(model, x, y, steps=0)
    with pytest.raises(ValueError, match="batch of 2"):
        surface.input_surface(model, tf.concat([x, x], 0), [1, 2])
