"""The adaptive score study's statistics and attacks (training/adaptive_study.py)."""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers import load_script

study = load_script(Path(__file__).resolve().parents[1] / "training" / "adaptive_study.py")


def test_auroc_and_share_above_the_clean_median():
    assert study.auroc([2.0, 3.0], [0.0, 1.0]) == 1.0  # every attacked input scores lower
    assert study.auroc([1.0], [1.0]) == 0.5  # ties count half
    assert study.auroc([0.0, 2.0], [1.0]) == 0.5
    stats = study.score_stats(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 5.0]))
    assert stats == {"auroc": 0.5, "share_above_clean_median": 0.5, "n": 2}
    assert study.score_stats(np.array([1.0]), np.array([]))["auroc"] is None


def test_each_adaptive_attack_stays_in_the_ball_and_raises_its_target():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (16, 4, 4, 1)), tf.float32)
    y = tf.constant(np.argmax(net(x), -1), tf.int32)
    def lead(t):  # max_{j != y} z_j - z_y: the wrong classes' lead
        z = net(t).numpy()
        own = z[np.arange(len(z)), y.numpy()]
        z[np.arange(len(z)), y.numpy()] = -np.inf
        return z.max(-1) - own

    for kind in study.ATTACKS:
        x_adv = study.make_attack(net, kind, eps=0.2, steps=10, bound_eps=0.02)(x, y).numpy()
        assert np.all(np.abs(x_adv - x.numpy()) <= 0.2 + 1e-6) and np.all((x_adv >= 0) & (x_adv <= 1))
        assert np.mean(lead(x_adv)) > np.mean(lead(x.numpy()))  # the wrong classes' lead grew


def test_flat_keeps_the_iterate_with_the_highest_served_effective_margin():
    """margin and flat take the same steps; flat picks, among the successful iterates, the one the
    served effective_margin ranks highest, so it is never below margin's pick where both succeed."""
    from tfrobust.serving.export import robustness_outputs
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    x = tf.constant(np.random.default_rng(1).uniform(0, 1, (32, 4, 4, 1)), tf.float32)
    y = tf.constant(np.argmax(net(x), -1), tf.int32)
    picks = {kind: study.make_attack(net, kind, eps=0.3, steps=10, bound_eps=0.02)(x, y) for kind in ("margin", "flat")}
    served = {k: robustness_outputs(net, v, "linf") for k, v in picks.items()}
    both = ((served["margin"]["predicted_class"].numpy() != y.numpy())
            & (served["flat"]["predicted_class"].numpy() != y.numpy()))
    assert both.sum() >= 5
    em = {k: v["effective_margin"].numpy()[both] for k, v in served.items()}
    assert np.all(em["flat"] >= em["margin"] * (1 - 1e-5))
