"""Attacks against closed forms on linear models, and their invariants."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, losses
from tfrobust.attacks import AttackConfig

D, K = 6, 4


def linear_model(seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, K))
    b = rng.normal(size=K) * 0.1
    model = keras.Sequential([keras.Input((D,), dtype=dtype), keras.layers.Dense(K, dtype=dtype)])
    model.layers[0].set_weights([w, b])
    return model, w, b


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.8, size=(5, D))
    y = rng.integers(0, K, size=5)
    return x, y


def ce_grad(w, b, x, y):
    """Closed-form input gradient of softmax CE for logits x W + b: W (p - e_y)."""
    p = softmax(x @ w + b)
    return (p - np.eye(K)[y]) @ w.T


def margin_grad(w, b, x, y):
    """Closed-form input gradient of d = z_y - max_{j != y} z_j: w_y - w_j."""
    z = x @ w + b
    z_other = np.where(np.eye(K)[y] > 0, -np.inf, z)
    j = z_other.argmax(-1)
    return w[:, y].T - w[:, j].T


def test_fgsm_linf_matches_closed_form(batch):
    model, w, b = linear_model()
    x, y = batch
    eps = 0.05
    got = attacks.fgsm(model, x, y, eps=eps).numpy()
    want = np.clip(x + eps * np.sign(ce_grad(w, b, x, y)), 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_fgsm_l2_matches_closed_form(batch):
    model, w, b = linear_model()
    x, y = batch
    eps = 0.1
    g = ce_grad(w, b, x, y)
    want = np.clip(x + eps * g / np.linalg.norm(g, axis=1, keepdims=True), 0, 1)
    got = attacks.fgsm(model, x, y, eps=eps, norm="l2").numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_cw_step_follows_margin_gradient(batch):
    model, w, b = linear_model()
    x, y = batch
    # Maximising -d moves along -(w_y - w_j).
    want = np.clip(x - 0.05 * np.sign(margin_grad(w, b, x, y)), 0, 1)
    got = attacks.fgsm(model, x, y, eps=0.05, loss="cw").numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    got = attacks.cw(model, x, y, eps=0.05, steps=1, step_size=0.05).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_one_pgd_step_projects_onto_ball(batch):
    model, w, b = linear_model()
    x, y = batch
    # A step of 0.2 projected onto an eps=0.03 cube lands on the face eps*sign(g).
    got = attacks.pgd(model, x, y, eps=0.03, steps=1, step_size=0.2, random_start=False).numpy()
    want = np.clip(x + 0.03 * np.sign(ce_grad(w, b, x, y)), 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-12)
    # L2: the step direction is g/|g|, projected to radius eps.
    got = attacks.pgd(model, x, y, eps=0.03, steps=1, step_size=0.2, norm="l2", random_start=False)
    g = ce_grad(w, b, x, y)
    want = x + 0.03 * g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


def test_targeted_least_likely_descends_towards_that_class(batch):
    model, w, b = linear_model()
    x, _ = batch
    ll = (x @ w + b).argmin(-1)
    want = np.clip(x - 0.05 * np.sign(ce_grad(w, b, x, ll)), 0, 1)
    got = attacks.fgsm(model, x, eps=0.05, targeted=True).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_y_none_attacks_the_prediction(batch):
    model, w, b = linear_model()
    x, _ = batch
    pred = (x @ w + b).argmax(-1)
    np.testing.assert_allclose(attacks.fgsm(model, x, eps=0.05).numpy(),
                               attacks.fgsm(model, x, pred, eps=0.05).numpy())


def test_one_hot_labels_are_accepted(batch):
    model, _, _ = linear_model()
    x, y = batch
    np.testing.assert_allclose(attacks.fgsm(model, x, np.eye(K)[y], eps=0.05).numpy(),
                               attacks.fgsm(model, x, y, eps=0.05).numpy())



# Ball, clip range, eps=0, dtype, seeds and bad fields of every attack: tests/test_attack_contract.py.


def test_pgd_reaches_the_exact_linear_robust_accuracy():
    # For logits x W, the smallest L-inf change that makes class j beat y is
    # (z_y - z_j) / ||w_y - w_j||_1, so the exact robust accuracy without a clip
    # range is the share of points whose smallest such distance exceeds eps.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(512, D)).astype("float32")
    w = rng.normal(size=(D, K)).astype("float32")
    y = (x @ w).argmax(-1)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    model.layers[0].set_weights([w, np.zeros(K, "float32")])
    z = x @ w
    diff = np.abs(w[:, y].T[:, :, None] - w[None]).sum(1)
    diff[np.arange(512), y] = 1.0
    gaps = (z[np.arange(512), y][:, None] - z) / diff
    gaps[np.arange(512), y] = np.inf
    eps = 0.1
    exact = (gaps.min(1) > eps).mean()
    adv = attacks.pgd(model, x, y, eps=eps, steps=20, step_size=0.02, clip=None, loss="cw")
    robust = (model(adv).numpy().argmax(-1) == y).mean()
    # One targeted C&W step towards each class j is the exact worst case for a linear model.
    still = np.ones(512, bool)
    for j in range(K):
        target = np.full(512, j)
        adv_j = attacks.fgsm(model, x, target, eps=eps, clip=None, loss="cw", targeted=True)
        still &= (model(adv_j).numpy().argmax(-1) == y)
    assert 0.2 < exact < 0.9
    assert still.mean() == pytest.approx(exact, abs=1e-9)
    assert exact - 1e-9 <= robust <= exact + 0.05


@pytest.mark.parametrize("bad,match", [
    (dict(eps=-0.1), "eps=-0.1"),
    (dict(eps=0.1, clip=(1.0, 0.0)), "clip"),
    (dict(eps=0.1, norm="l3"), "norm='l3'"),
    (dict(eps=0.1, loss="hinge"), "loss='hinge'"),
    (dict(eps=float("nan")), "eps=nan"),
])
def test_bad_arguments_name_the_value(bad, match):
    model, _, _ = linear_model()
    with pytest.raises(ValueError, match=match):
        attacks.fgsm(model, np.zeros((1, D)), **bad)


def test_bad_steps_and_unknown_attack():
    model, _, _ = linear_model()
    with pytest.raises(ValueError, match="steps=-1"):
        attacks.pgd(model, np.zeros((1, D)), eps=0.1, steps=-1, step_size=0.1)
    with pytest.raises(ValueError, match="'deepfool'"):
        attacks.get_attack("deepfool")


def test_probability_models_are_rejected():
    probs = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, activation="softmax")])
    with pytest.raises(ValueError, match="probabilities"):
        attacks.fgsm(probs, np.zeros((2, D), "float32"), eps=0.1)
    softmax_layer = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K), keras.layers.Softmax()])
    with pytest.raises(ValueError, match="probabilities"):
        attacks.pgd(softmax_layer, np.zeros((2, D), "float32"), eps=0.1, steps=1, step_size=0.1)
    # A plain callable returning probabilities is caught numerically.
    fn = lambda x, training=False: tf.nn.softmax(tf.reshape(x, [-1, D])[:, :K] * 3.0)  # noqa: E731
    with pytest.raises(ValueError, match="probabilities"):
        attacks.fgsm(fn, np.random.rand(3, D).astype("float32"), eps=0.1)


def test_attack_config_runs_like_the_function(batch):
    model, _, _ = linear_model()
    x, y = batch
    cfg = attacks.AttackConfig(name="bim", eps=0.1, steps=3, step_size=0.02)
    np.testing.assert_allclose(cfg(model, x, y).numpy(),
                               attacks.bim(model, x, y, eps=0.1, steps=3, step_size=0.02).numpy())
    assert attacks.AttackConfig(eps=0.3, steps=10).resolved_step_size == pytest.approx(0.075)
    with pytest.raises(ValueError, match="eps=-1"):
        attacks.AttackConfig(eps=-1)


def test_margin_helpers():
    z = tf.constant([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    np.testing.assert_allclose(losses.decision_margin(z, [2, 0]).numpy(), [-1.0, 4.0])
    np.testing.assert_allclose(losses.top2_margin(z).numpy(), [1.0, 4.0])
    np.testing.assert_allclose(losses.least_likely(z).numpy(), [0, 1])
    # DLR is invariant to shifting and scaling the logits.
    np.testing.assert_allclose(losses.dlr_loss(z, [2, 0]).numpy(),
                               losses.dlr_loss(3 * z + 7, [2, 0]).numpy(), rtol=1e-6)


def test_eps_scale_shrinks_radius_and_step(batch):
    """eps warm-up: eps_scale s attacks exactly like the config at s*eps with step s*step."""
    model, w, b = linear_model()
    x, y = batch
    got = AttackConfig(name="fgsm", eps=0.2)(model, x, y, eps_scale=0.25).numpy()
    np.testing.assert_allclose(got, np.clip(x + 0.05 * np.sign(ce_grad(w, b, x, y)), 0, 1), atol=1e-7)
    full = AttackConfig(name="pgd", eps=0.3, steps=4, random_start=False)
    small = AttackConfig(name="pgd", eps=0.15, steps=4, step_size=full.resolved_step_size / 2,
                         random_start=False)
    want = small(model, x, y).numpy()
    np.testing.assert_allclose(full(model, x, y, eps_scale=0.5).numpy(), want, atol=1e-7)
    scaled = tf.function(lambda s: full(model, tf.constant(x), y, eps_scale=s))(tf.constant(0.5))
    np.testing.assert_allclose(scaled.numpy(), want, atol=1e-7)
    np.testing.assert_array_equal(full(model, x, y, eps_scale=0.0).numpy(), x)
    with pytest.raises(ValueError, match="eps_scale=1.5"):
        full(model, x, y, eps_scale=1.5)
