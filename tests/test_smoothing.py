"""Randomized smoothing: closed forms on a linear classifier, the statistics against scipy, the
seeding contract, SmoothAdv within the certified radius, and the training terms."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfrobust import models, smoothing as S
from tfrobust import objectives as O
from tfrobust.objectives import StepContext
from tfrobust.training import build_objective

W = np.array([1.0, -2.0, 0.5])
B = 0.3
SIGMA = 0.5
X = np.array([[0.5, 0.2, 0.4], [0.1, 0.5, 0.9], [0.9, 0.1, 0.2]], np.float32)


def linear_binary(w=W, b=B):
    """Dense(2) with logits ``(0, w·x + b)``: class 1 exactly where ``w·x + b > 0``."""
    clf = keras.Sequential([keras.Input((len(w),)), keras.layers.Dense(2)], name="linear_binary")
    clf.layers[0].set_weights([np.stack([np.zeros(len(w)), w], 1).astype("float32"),
                               np.array([0.0, b], np.float32)])
    return clf


def exact(x, w=W, b=B, sigma=SIGMA):
    """Base class, distance to the boundary and exact p_A = Φ(|w·x+b| / (σ‖w‖)) of the linear model."""
    margin = x.astype(np.float64) @ w + b
    distance = np.abs(margin) / np.linalg.norm(w)
    return (margin > 0).astype(int), distance, stats.norm.cdf(distance / sigma)


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.3])
def test_clopper_pearson_matches_scipy_exact_interval(alpha):
    for n in (1, 2, 10, 100, 1000, 100_000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            want = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
            np.testing.assert_allclose(S.clopper_pearson_lower(k, n, alpha), want, rtol=1e-9, atol=1e-12,
                                       err_msg=f"k={k} n={n}")


def test_clopper_pearson_covers_at_its_confidence():
    # Over all k of Binomial(n, p), the bound exceeds p with probability at most alpha (exact sum).
    n, alpha = 200, 0.05
    k = np.arange(n + 1)
    for p in (0.3, 0.5, 0.77, 0.95):
        miss = stats.binom.pmf(k, n, p)[S.clopper_pearson_lower(k, n, alpha) > p].sum()
        assert miss <= alpha


def test_binomial_test_matches_scipy():
    for n in (1, 5, 20, 301):
        for k in range(0, n + 1, max(1, n // 7)):
            np.testing.assert_allclose(S.binomial_test_two_sided(k, n), stats.binomtest(k, n, 0.5).pvalue,
                                       rtol=1e-9)


def test_smoothed_linear_classifier_is_the_base_one_and_its_radius_the_distance():
    """Noise along w is N(0, σ²‖w‖²), so p_A = Φ(d/σ) and the exact radius σΦ⁻¹(p_A) is d itself.

    Tolerances: the count of the base class is Binomial(n, p_A); it lies within 5 standard
    deviations of n·p_A (fails with probability < 1e-6). The Clopper–Pearson bound at alpha 1e-3
    lies below p_A (probability ≥ 0.999) and above p̂ − 3.3 sd (its normal approximation), so
    σΦ⁻¹(p_A − 8.3 sd) ≤ radius ≤ d.
    """
    clf, n, alpha = linear_binary(), 100_000, 0.001
    base, distance, p_a = exact(X)
    counts = S.sample_counts(clf, X, SIGMA, n, 10_000, seed=1)
    sd = np.sqrt(p_a * (1 - p_a) / n)
    np.testing.assert_array_less(np.abs(counts[np.arange(3), base] / n - p_a), 5 * sd)
    np.testing.assert_array_equal(S.predict(clf, X, SIGMA, 10_000, alpha, 10_000, seed=2), base)
    classes, radii, p_lower = S.certify(clf, X, SIGMA, 100, n, alpha, 10_000, seed=3)
    np.testing.assert_array_equal(classes, base)
    assert np.all(p_lower <= p_a) and np.all(p_lower >= p_a - 8.3 * sd)
    assert np.all(radii <= distance)
    np.testing.assert_array_less(SIGMA * stats.norm.ppf(p_a - 8.3 * sd), radii + 1e-12)
    # More draws, tighter radius: the gap to d shrinks.
    _, coarse, _ = S.certify(clf, X, SIGMA, 100, 1000, alpha, 10_000, seed=3)
    assert np.all(distance - radii < distance - coarse)


def test_a_tie_abstains():
    # On the boundary (w·x + b = 0) both classes have probability 1/2.
    x = np.array([[0.1, 0.2, 0.0]], np.float32)  # 0.1 - 0.4 + 0 + 0.3 = 0
    clf = linear_binary()
    assert S.predict(clf, x, SIGMA, 2000, 0.01, seed=4)[0] == S.ABSTAIN
    classes, radii, p_lower = S.certify(clf, x, SIGMA, 100, 2000, 0.01, seed=4)
    assert classes[0] == S.ABSTAIN and radii[0] == 0.0 and p_lower[0] < 0.5


def test_counts_follow_the_seed_and_not_the_batching():
    clf = linear_binary()
    small = S.sample_counts(clf, X, SIGMA, 300, batch_size=7, seed=5)
    large = S.sample_counts(clf, X, SIGMA, 300, batch_size=1000, seed=5)
    np.testing.assert_array_equal(small, large)
    np.testing.assert_array_equal(small.sum(1), [300] * 3)
    np.testing.assert_array_equal(S.sample_counts(clf, X, SIGMA, 300, batch_size=7, seed=5), small)
    assert not np.array_equal(S.sample_counts(clf, X, SIGMA, 300, batch_size=7, seed=6), small)
    # An example's counts do not depend on the others in its batch.
    np.testing.assert_array_equal(S.sample_counts(clf, X[:1], SIGMA, 300, seed=5), small[:1])


@pytest.mark.parametrize("kwargs,match", [({"sigma": 0.0}, "sigma"), ({"n": 0}, "n="),
                                          ({"batch_size": 2.5}, "batch_size"), ({"seed": -1}, "seed"),
                                          ({"clip": (1.0, 0.0)}, "clip")])
def test_bad_arguments_are_named(kwargs, match):
    args = {"sigma": SIGMA, "n": 10, "batch_size": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        S.sample_counts(linear_binary(), X, args.pop("sigma"), args.pop("n"), **args)


def test_bad_certify_arguments_and_inputs_are_named():
    clf = linear_binary()
    with pytest.raises(ValueError, match="alpha"):
        S.certify(clf, X, SIGMA, 10, 10, 1.0)
    with pytest.raises(ValueError, match="n0"):
        S.certify(clf, X, SIGMA, 0, 10, 0.01)
    with pytest.raises(ValueError, match="clip range"):
        S.predict(clf, X * 3, SIGMA, 10, 0.01)
    S.predict(clf, X * 3, SIGMA, 10, 0.01, clip=None)  # opting out


def test_certified_accuracy_counts_correct_examples_within_each_radius():
    radii, correct = [0.0, 0.5, 1.0, 2.0], [True, True, False, True]
    np.testing.assert_allclose(S.certified_accuracy(radii, correct, [0.0, 0.5, 1.5, 3.0]),
                               [0.75, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match="radii_grid"):
        S.certified_accuracy(radii, correct, [-1.0])


def blobs(n, seed):
    """8x8 images: class 0 bright in the top half, class 1 in the bottom half, plus uniform noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.uniform(0.0, 0.3, (n, 8, 8, 1))
    for i, label in enumerate(y):
        x[i, 4 * label:4 * label + 4] += 0.6
    return x.astype(np.float32), y


def test_smooth_adv_never_changes_g_within_the_certified_radius():
    """SmoothAdv (20 steps, 16 draws) at each example's certified radius leaves g's prediction,
    though it drives p_A from about 0.97 to about 0.55; at 1.5 times the radius it changes g.

    σ = 1 is large next to the images' contrast, so p_A < 1 and the radius (about 1.9, from
    n = 2000 at alpha 1e-3) is close to g's real distance to its boundary. Tolerance: each
    certificate holds with probability ≥ 1 − alpha and the n = 4000 PREDICT of g at the attacked
    point errs with probability ≤ alpha, so a false failure has probability ≤ 2·alpha per example
    (fixed seeds make the run deterministic).
    """
    sigma = 1.0
    keras.utils.set_random_seed(0)
    x, y = blobs(512, 0)
    clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(2)])
    model = models.RobustModel(clf, O.GaussianNoise(sigma=sigma))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    xt, yt = blobs(8, 1)
    classes, radii, _ = S.certify(clf, xt, sigma, 100, 2000, 0.001, seed=7)
    certified = (classes == yt) & (radii > 0)
    assert certified.sum() >= 6
    xt, yt, radii = xt[certified], yt[certified], radii[certified]
    rows = np.arange(len(yt))
    p_clean = S.sample_counts(clf, xt, sigma, 4000, seed=8)[rows, yt] / 4000
    x_adv = S.smooth_adv_pgd(clf, xt, yt, sigma=sigma, eps=tf.constant(radii, tf.float32), steps=20, m=16)
    assert np.all(np.linalg.norm((x_adv.numpy() - xt).reshape(len(xt), -1), axis=1) <= radii + 1e-5)
    predicted = S.predict(clf, x_adv, sigma, 4000, 0.001, seed=8)
    assert np.all((predicted == yt) | (predicted == S.ABSTAIN))
    p_attacked = S.sample_counts(clf, x_adv, sigma, 4000, seed=8)[rows, yt] / 4000
    assert np.all(p_attacked < p_clean - 0.2)  # the attack bites
    beyond = S.smooth_adv_pgd(clf, xt, yt, sigma=sigma, eps=tf.constant(1.5 * radii, tf.float32),
                              steps=20, m=16)
    assert np.mean(S.predict(clf, beyond, sigma, 1000, 0.001, seed=9) != yt) >= 0.5


def test_consistency_loss_closed_form():
    z1, z2 = tf.constant([[0.0, 1.0]]), tf.constant([[1.0, 0.0]])
    p1, p2 = tf.nn.softmax(z1).numpy()[0], tf.nn.softmax(z2).numpy()[0]
    mean = (p1 + p2) / 2
    kl = 0.5 * (np.sum(mean * np.log(mean / p1)) + np.sum(mean * np.log(mean / p2)))
    entropy = -np.sum(mean * np.log(mean))
    np.testing.assert_allclose(O.consistency_loss([z1, z2], 3.0, 0.5).numpy(), [3 * kl + 0.5 * entropy],
                               rtol=1e-6)
    np.testing.assert_allclose(O.consistency_loss([z1, z1], 3.0, 0.0).numpy(), [0.0], atol=1e-7)


def test_noise_terms_share_their_copies_and_parse_from_recipes():
    objective = build_objective([{"type": "gaussian_noise", "sigma": 0.5, "copies": 2},
                                 {"type": "consistency", "sigma": 0.5, "lam": 5.0}])
    assert objective.attacks() == [O.NoisyCopy(0.5, 0), O.NoisyCopy(0.5, 1)]
    x = tf.constant(np.full((4000, 2), 0.5, np.float32))
    ctx = StepContext(lambda v, training=False: v, x, np.zeros(4000, int), training=True)
    ctx.prepare(objective)
    noise = ctx.point(O.NoisyCopy(0.5, 0)).numpy() - 0.5
    assert abs(noise.std() - 0.5) < 0.02 and abs(noise.mean()) < 0.02  # 4σ/√8000 ≈ 0.022 for the std
    assert not np.allclose(noise, ctx.point(O.NoisyCopy(0.5, 1)).numpy() - 0.5)
    with pytest.raises(ValueError, match="copies"):
        O.Consistency(copies=1)
    with pytest.raises(ValueError, match="sigma"):
        O.GaussianNoise(sigma=-1.0)


def test_noise_objectives_round_trip_through_their_config():
    objective = O.GaussianNoise(sigma=0.5, copies=2) + O.Consistency(sigma=0.5, lam=20.0, eta=0.0)
    back = O.Objective.from_config(objective.get_config())
    assert back.terms == objective.terms and back.metric_names == ["noise_ce", "consistency"]
    assert back.terms[1].penalty and not back.terms[0].penalty


@pytest.mark.parametrize("name,sigma,lam", [("mnist_smooth_025", 0.25, 10.0), ("mnist_smooth_050", 0.5, 5.0)])
def test_smoothing_recipes_carry_the_authors_settings(name, sigma, lam):
    from tfrobust import training
    config = training.validate_config(training.load_config(name))
    noise, consistency = build_objective(config["objective"]).terms
    assert (noise.sigma, noise.copies) == (sigma, 2)
    assert (consistency.sigma, consistency.copies, consistency.lam, consistency.eta) == (sigma, 2, lam, 0.5)
    assert config["train"]["validation_n"] == 5000


def test_smooth_adv_is_graph_safe_and_follows_its_seed():
    clf, x = linear_binary(), tf.constant(X)
    eager = S.smooth_adv_pgd(clf, x, sigma=SIGMA, eps=0.2, steps=3, m=4, seed=1)
    graph = tf.function(lambda v: S.smooth_adv_pgd(clf, v, sigma=SIGMA, eps=0.2, steps=3, m=4, seed=1))(x)
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6, atol=1e-7)
    # On a linear model every noise draw has the same input gradient, so PGD moves along -w (class 1)
    # or +w (class 0) by eps exactly, clipped to [0, 1].
    base, _, _ = exact(X)
    direction = np.where(base[:, None] == 1, -1.0, 1.0) * W / np.linalg.norm(W)
    np.testing.assert_allclose(eager.numpy(), np.clip(X + 0.2 * direction, 0.0, 1.0), atol=1e-6)


def test_the_traced_counter_does_not_keep_its_model_alive():
    import gc
    import weakref
    clf = linear_binary()
    S.sample_counts(clf, X, SIGMA, 10)
    ref = weakref.ref(clf)
    del clf
    gc.collect()
    assert ref() is None
