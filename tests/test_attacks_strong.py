"""APGD and Square: published schedules, closed forms on linear models, invariants."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, data, losses

D, K = 6, 4



def linear_problem(n=512, d=D, k=K, seed=0, image=False):
    """Points, weights and labels of a linear classifier ``z = x W`` (no bias).

    Returns the model, x, y and the exact L-inf robust accuracy at every eps
    as a function: without a clip range, the smallest change that makes class j
    beat y is ``(z_y - z_j) / ||w_y - w_j||_1``.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, d)).astype("float32")
    w = rng.normal(size=(d, k)).astype("float32")
    y = (x @ w).argmax(-1)
    if image:
        side = int(math.isqrt(d))
        model = keras.Sequential([keras.Input((side, side, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(k)])
        x_in = x.reshape(n, side, side, 1)
    else:
        model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(k)])
        x_in = x
    model.layers[-1].set_weights([w, np.zeros(k, "float32")])
    z = x @ w
    diff = np.abs(w[:, y].T[:, :, None] - w[None]).sum(1)
    diff[np.arange(n), y] = 1.0
    gaps = (z[np.arange(n), y][:, None] - z) / diff
    gaps[np.arange(n), y] = np.inf
    distance = gaps.min(1)  # exact L-inf distance to the decision boundary
    return model, x_in, y, distance


def correct(model, x_adv, y):
    return model(x_adv).numpy().argmax(-1) == y


# --- published schedules -------------------------------------------------------------------------

def test_apgd_checkpoints_follow_the_published_sequence():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06):
    # 0, .22, .41, .57, .70, .80, .87, .93, .99.
    assert attacks.apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert attacks.apgd_checkpoints(1000) == [0, 220, 410, 570, 700, 800, 870, 930, 990]
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1 + 1e-9:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    np.testing.assert_allclose(p, [0, .22, .41, .57, .70, .80, .87, .93, .99], atol=1e-12)
    for n in (5, 10, 37, 250):
        want = sorted({math.ceil(round(pj * n, 9)) for pj in p})
        assert attacks.apgd_checkpoints(n) == want, n
    assert attacks.apgd_checkpoints(10) == [0, 3, 5, 6, 7, 8, 9, 10]
    assert attacks.apgd_checkpoints(0) == [0]


def test_square_p_schedule_is_the_published_piecewise_constant():
    p = lambda i, n=10000: float(attacks.square_p_schedule(0.8, i, n))  # noqa: E731
    assert p(0) == p(10) == pytest.approx(0.8)
    for start, end, halvings in [(11, 50, 1), (51, 200, 2), (201, 500, 3), (501, 1000, 4),
                                 (1001, 2000, 5), (2001, 4000, 6), (4001, 6000, 7), (6001, 8000, 8),
                                 (8001, 9999, 9)]:
        assert p(start) == p(end) == pytest.approx(0.8 / 2 ** halvings), (start, end)
    # Rescaled to the budget: with 1000 queries iteration i plays the role of 10 i.
    assert p(1, 1000) == pytest.approx(0.8) and p(2, 1000) == pytest.approx(0.4)
    assert p(999, 1000) == pytest.approx(0.8 / 512)
    # Works on tensors inside a graph.
    fn = tf.function(lambda i: attacks.square_p_schedule(0.05, i, 100))
    assert float(fn(tf.constant(5))) == pytest.approx(0.05 / 8)  # it = 500: three halvings
    assert float(fn(tf.constant(50))) == pytest.approx(0.05 / 128)  # it = 5000: seven


# --- invariants ----------------------------------------------------------------------------------

# Ball, clip range, float64, eps=0 and no gradient of every attack: tests/test_attack_contract.py.


@pytest.mark.parametrize("bad,match", [
    (dict(eps=-0.1), "eps=-0.1"),
    (dict(eps=0.1, rho=1.5), "rho=1.5"),
    (dict(eps=0.1, steps=-2), "steps=-2"),
    (dict(eps=0.1, loss="hinge"), "loss='hinge'"),
    (dict(eps=0.1, norm="l1"), "norm='l1'"),
])
def test_apgd_bad_arguments_name_the_value(bad, match):
    model, x, _, _ = linear_problem(n=2)
    with pytest.raises(ValueError, match=match):
        attacks.apgd(model, x, **bad)


@pytest.mark.parametrize("bad,match", [
    (dict(eps=0.1, norm="l2"), "norm='l2'"),
    (dict(eps=0.1, queries=-1), "queries=-1"),
    (dict(eps=0.1, p_init=2.0), "p_init=2.0"),
])
def test_square_bad_arguments_name_the_value(bad, match):
    model, x, _, _ = linear_problem(n=2)
    with pytest.raises(ValueError, match=match):
        attacks.square(model, x, **bad)
    with pytest.raises(ValueError, match="square supports only 'linf'"):
        attacks.AttackConfig(name="square", norm="l2")


# --- closed forms on linear models ---------------------------------------------------------------

def test_apgd_ce_and_dlr_reach_the_exact_linear_robust_accuracy():
    model, x, y, distance = linear_problem()
    eps = 0.1
    exact = (distance > eps).mean()
    assert 0.2 < exact < 0.9
    ok = {loss: correct(model, attacks.apgd(model, x, y, eps=eps, steps=20, clip=None, loss=loss), y)
          for loss in ("ce", "dlr")}
    for loss, still in ok.items():
        # No attack inside the ball can break a point farther than eps from the boundary ...
        assert not (~still & (distance > eps + 1e-5)).any(), loss
        # ... and each loss alone comes close to the exact value.
        assert still.mean() <= exact + 0.06, loss
    # Together (the cascade's per-example AND) they find every breakable point.
    assert (ok["ce"] & ok["dlr"]).mean() == pytest.approx(exact, abs=1.5 / len(y))


def test_targeted_apgd_towards_each_class_is_exact_on_a_linear_model():
    # The best targeted attack towards each class j in turn is the exact worst case.
    model, x, y, distance = linear_problem(n=256, seed=1)
    eps = 0.1
    still = np.ones(len(y), bool)
    fn = tf.function(lambda x, t: attacks.apgd(model, x, t, eps=eps, steps=10, clip=None, targeted=True))
    for j in range(K):
        still &= correct(model, fn(tf.constant(x), tf.fill([len(y)], j)), y)
    np.testing.assert_array_equal(still, distance > eps)


def test_apgd_with_two_classes_lands_on_the_vertex():
    # Two classes: CE is monotone in the margin, so the worst point is x + eps sign(w_other - w_y),
    # which the first step (size 2 eps, projected) reaches from any start.
    model, x, y, distance = linear_problem(n=200, k=2, seed=2)
    w = model.layers[-1].get_weights()[0]
    eps = 0.1
    x_adv = attacks.apgd(model, x, y, eps=eps, steps=5, clip=None).numpy()
    assert (correct(model, x_adv, y) == (distance > eps)).all()
    robust = distance > eps
    want = x + eps * np.sign((w[:, 1 - y] - w[:, y]).T)
    np.testing.assert_allclose(x_adv[robust], want[robust], atol=1e-6)


def test_square_breaks_what_white_box_breaks_and_stays_in_the_ball():
    model, x, y, distance = linear_problem(n=256, d=16, k=3, seed=3, image=True)
    eps = 0.1
    breakable = distance <= eps
    assert 0.2 < breakable.mean() < 0.8
    x_adv = tf.function(lambda t: attacks.square(model, t, y, eps=eps, queries=600, clip=None, seed=0))(
        tf.constant(x)).numpy()
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    broken = ~correct(model, x_adv, y)
    assert not (broken & ~breakable).any()  # never beyond the exact worst case
    assert broken.sum() >= 0.95 * breakable.sum()
    white = ~correct(model, attacks.apgd(model, x, y, eps=eps, steps=20, clip=None), y)
    assert (broken & white).sum() >= 0.9 * white.sum()


def test_square_uses_no_gradient_and_is_reproducible_with_a_seed():
    # Gradients stopped at the input: white-box attacks cannot move, Square still succeeds.
    model, x, y, distance = linear_problem(n=128, d=16, k=3, seed=4, image=True)
    masked = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Lambda(tf.stop_gradient),
                               keras.layers.Flatten(), keras.layers.Dense(3)])
    masked.layers[-1].set_weights(model.layers[-1].get_weights())
    eps = 0.1
    fn = tf.function(lambda t, s: attacks.square(masked, t, y, eps=eps, queries=300, clip=None, seed=s))
    a, b = fn(tf.constant(x), 7).numpy(), fn(tf.constant(x), 7).numpy()
    np.testing.assert_array_equal(a, b)
    assert (~correct(masked, a, y)).mean() > 0.8 * (distance <= eps).mean()
    apgd_adv = attacks.apgd(masked, x, y, eps=eps, steps=10, clip=None, random_start=False)
    np.testing.assert_array_equal(apgd_adv.numpy(), x)  # zero gradient: APGD stays put


def test_square_on_flat_inputs_and_targeted():
    model, x, y, distance = linear_problem(n=128, seed=5)
    adv = tf.function(lambda t: attacks.square(model, t, y, eps=0.1, queries=400, clip=None))(tf.constant(x))
    assert (~correct(model, adv, y)).mean() >= 0.9 * (distance <= 0.1).mean()
    target = (y + 1) % K
    adv = attacks.square(model, x, target, eps=0.3, queries=50, clip=None, targeted=True)
    hit = model(adv).numpy().argmax(-1) == target
    assert hit.mean() > (model(x).numpy().argmax(-1) == target).mean() + 0.2


# --- APGD against PGD on a trained nonlinear model ------------------------------------------------

@pytest.fixture(scope="module")
def digits_cnn():
    keras.utils.set_random_seed(0)
    x, y = data.load("digits", "train")
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.005),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=10, batch_size=64, verbose=0)
    xt, yt = data.load("digits", "test")
    return model, xt[:300], yt[:300]


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(digits_cnn):
    model, x, y = digits_cnn
    eps, steps = 0.1, 20
    assert correct(model, x, y).mean() > 0.9
    tol = 2.0 / len(y)  # two examples: random starts differ
    wins = {}
    for loss in ("ce", "dlr"):
        a = correct(model, attacks.apgd(model, x, y, eps=eps, steps=steps, loss=loss), y)
        p = correct(model, attacks.pgd(model, x, y, eps=eps, steps=steps, step_size=2.5 * eps / steps,
                                       loss=loss), y)
        assert a.mean() <= p.mean() + tol, loss
        wins[loss] = (a, p)
    both_apgd = wins["ce"][0] & wins["dlr"][0]
    both_pgd = wins["ce"][1] & wins["dlr"][1]
    assert both_apgd.mean() <= both_pgd.mean() + tol
    assert both_apgd.mean() < 0.8  # the attack does something at this eps


def test_apgd_keeps_the_best_point_and_the_first_success(digits_cnn):
    model, x, y = digits_cnn
    x, y = x[:64], y[:64]
    eps = 0.05
    x_adv = attacks.apgd(model, x, y, eps=eps, steps=10, random_start=False)
    ce_adv = losses.cross_entropy(model(x_adv), y).numpy()
    ce_clean = losses.cross_entropy(model(x), y).numpy()
    ok = correct(model, x_adv, y)
    # Starting at x, the returned point of a surviving example is its best one: never below the start.
    assert (ce_adv[ok] >= ce_clean[ok] - 1e-6).all()


def test_attack_config_runs_apgd_and_square():
    model, x, y, _ = linear_problem(n=32, d=16, k=3, image=True)
    cfg = attacks.AttackConfig(name="apgd", eps=0.1, steps=5, loss="dlr", random_start=False)
    np.testing.assert_allclose(
        cfg(model, x, y, clip=None).numpy(),
        attacks.apgd(model, x, y, eps=0.1, steps=5, loss="dlr", clip=None, random_start=False).numpy())
    sq = attacks.AttackConfig(name="square", eps=0.1, steps=20)
    out = sq(model, x, y).numpy()
    assert np.abs(out - x).max() <= 0.1 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert set(attacks.ATTACKS) >= {"fgsm", "bim", "pgd", "cw", "apgd", "square"}


def test_square_on_a_single_example_in_a_compiled_function():
    # The cascade can leave one survivor: a batch whose static size is 1.
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    x = tf.constant(np.random.default_rng(0).uniform(size=(1, 6, 6, 1)).astype("float32"))
    fn = tf.function(lambda x: attacks.square(model, x, eps=0.1, queries=20, seed=0))
    x_adv = fn(x).numpy()
    assert x_adv.shape == (1, 6, 6, 1) and np.abs(x_adv - x.numpy()).max() <= 0.1 + 1e-6


# --- APGD-T ----------------------------------------------------------------------------------------

def test_targeted_dlr_loss_closed_form():
    logits = tf.constant([[3.0, 1.0, 2.0, 0.0, -1.0], [0.5, 4.0, -2.0, 1.0, 2.5]], tf.float64)
    # Row 0: y=0, t=1; sorted 3, 2, 1, 0 -> scale 3 - (1 + 0)/2 = 2.5.
    # Row 1: y=1, t=4; sorted 4, 2.5, 1, 0.5 -> scale 4 - (1 + 0.5)/2 = 3.25.
    got = losses.dlr_targeted_loss(logits, tf.constant([0, 1]), tf.constant([1, 4])).numpy()
    np.testing.assert_allclose(got, [-(3 - 1) / 2.5, -(4 - 2.5) / 3.25], rtol=1e-12)


def test_apgd_t_over_all_targets_reaches_the_exact_linear_robust_accuracy():
    model, x, y, distance = linear_problem(n=256, seed=4)
    eps = 0.1
    exact = (distance > eps).mean()
    assert 0.2 < exact < 0.9
    still = np.ones(len(y), bool)
    for rank in range(2, K + 1):
        x_adv = attacks.apgd(model, x, y, eps=eps, steps=20, clip=None, target_rank=rank).numpy()
        assert np.abs(x_adv - x).max() <= eps + 1e-6
        still &= correct(model, x_adv, y)
    assert not (~still & (distance > eps + 1e-5)).any()  # sound
    np.testing.assert_array_equal(still, distance > eps)  # and complete on a linear model


def test_apgd_t_moves_towards_the_ranked_class():
    model, x, y, _ = linear_problem(n=64, seed=5)
    z = model(x).numpy()
    runner_up = np.argsort(-z, axis=1)[:, 1]
    z_adv = model(attacks.apgd(model, x, y, eps=0.05, steps=10, clip=None, target_rank=2)).numpy()
    rows = np.arange(len(y))
    gap = lambda z: z[rows, y] - z[rows, runner_up]  # noqa: E731
    assert (gap(z_adv) < gap(z) - 1e-4).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_rank=1), "target_rank=1"),
    (dict(target_rank=2, loss="dlr"), "target_rank=2"),
    (dict(target_rank=2, targeted=True), "target_rank=2"),
    (dict(target_rank=5), "target_rank=5 needs at least 4 classes"),
])
def test_apgd_t_bad_arguments_name_the_value(kwargs, match):
    model, x, y, _ = linear_problem(n=2)
    with pytest.raises(ValueError, match=match):
        attacks.apgd(model, x, y, eps=0.1, **kwargs)
    with pytest.raises(ValueError, match="only apgd"):
        attacks.AttackConfig(name="pgd", target_rank=2)
