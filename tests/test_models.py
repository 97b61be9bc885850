"""RobustModel in compile/fit/evaluate, save/load, and under MirroredStrategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import models
from tfrobust import objectives as O
from tfrobust.attacks import AttackConfig


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 6, 6, 1)).astype("float32")
    w = rng.normal(size=(36, 3)).astype("float32")
    y = (x.reshape(n, -1) @ w).argmax(-1)
    return x, y


def tiny_cnn():
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, activation="tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(3)], name="tiny")


PGD = AttackConfig(name="pgd", eps=0.1, steps=2, step_size=0.05, random_start=False)
OBJECTIVES = {
    "natural": lambda: O.CrossEntropy(),
    "jacobian_l1": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.5, norm="l1"),
    "jacobian_l2": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.5, norm="l2"),
    "jacobian_l2_squared": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.5, norm="l2_squared"),
    "jacobian_linf": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.5, norm="linf"),
    "input_gradient": lambda: O.CrossEntropy() + O.InputGradient(c=0.5),
    "pgd_at": lambda: O.AdversarialTraining(PGD, mix=0.5),
    "cw_at": lambda: O.AdversarialTraining(AttackConfig(name="cw", eps=0.1, steps=2, step_size=0.05)),
    "fast_at": lambda: O.FastAdversarialTraining(eps=0.1),
    "jacobian_at": lambda: O.AdversarialTraining(PGD, mix=0.5) + O.DecisionJacobian(c=0.5, at=PGD),
    # Finite differences divide by h, amplifying float32 rounding that differs between one and two
    # devices; h=0.1 keeps that amplification below the test's tolerance.
    "jacobian_fd": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.5, method="finite_difference", h=0.1),
    "input_gradient_fd": lambda: O.CrossEntropy() + O.InputGradient(c=0.5, method="finite_difference", h=0.1),
    "emr": lambda: O.CrossEntropy() + O.EffectiveMargin(lam=0.5, temperature=2.0),
    "emr_fd": lambda: O.CrossEntropy() + O.EffectiveMargin(lam=0.5, temperature=2.0,
                                                           method="finite_difference", h=0.1),
    "at_emr": lambda: O.AdversarialTraining(PGD) + O.EffectiveMargin(lam=0.5, temperature=40.0, at=PGD),
    # KLAttack's Gaussian start is drawn through norms.random_start, so the no_random_start fixture fixes it too.
    "trades": lambda: O.Trades(beta=6.0, attack=O.KLAttack(eps=0.1, steps=2, step_size=0.05)),
    "trades_emr": lambda: (O.Trades(beta=6.0, attack=O.KLAttack(eps=0.1, steps=2, step_size=0.05))
                           + O.EffectiveMargin(lam=0.5, temperature=1.0,
                                               at=O.KLAttack(eps=0.1, steps=2, step_size=0.05))),
    "mart": lambda: O.Mart(beta=6.0, attack=PGD),
    "mart_emr": lambda: O.Mart(beta=6.0, attack=PGD) + O.EffectiveMargin(lam=0.5, at=PGD),
    "jacobian_curvature": lambda: (O.CrossEntropy() + O.DecisionJacobian(c=0.5)
                                   + O.DecisionCurvature(c=0.5, h=0.1)),
    "jacobian_emr": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.5) + O.EffectiveMargin(lam=0.5),
    "ibp": lambda: O.CertifiedTraining(eps=0.1, method="ibp", kappa=0.5),
    "crown_ibp": lambda: O.CertifiedTraining(eps=0.1, method="crown-ibp", kappa=0.0, beta=0.5),
    # The noise is drawn through norms.random_start too, so the no_random_start fixture makes it constant.
    "gaussian_noise": lambda: O.GaussianNoise(sigma=0.25),
    "consistency": lambda: O.GaussianNoise(sigma=0.25, copies=2) + O.Consistency(sigma=0.25, copies=2),
}


def test_fit_logs_every_term_and_learns():
    x, y = data(256)
    model = models.RobustModel(tiny_cnn(), OBJECTIVES["jacobian_at"]())
    model.compile(optimizer=keras.optimizers.Adam(0.02), metrics=["accuracy"])
    hist = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert {"loss", "adv_ce", "jacobian_penalty", "accuracy"} <= set(hist)
    assert hist["loss"][-1] < hist["loss"][0]
    np.testing.assert_allclose(hist["loss"][-1], hist["adv_ce"][-1] + hist["jacobian_penalty"][-1],
                               rtol=1e-4)
    res = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(res["loss"], res["adv_ce"] + res["jacobian_penalty"], rtol=1e-4)
    assert res["accuracy"] > 0.5


def test_save_and_load_round_trip(tmp_path):
    x, y = data()
    obj = O.AdversarialTraining(AttackConfig(name="cw", eps=0.1, steps=3, step_size=0.05), mix=0.5) \
        + O.DecisionJacobian(c=2.0, norm="l1")
    model = models.RobustModel(tiny_cnn(), obj, clip=(0.0, 1.0))
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    back = keras.models.load_model(path)
    assert isinstance(back, models.RobustModel)
    assert [t.get_config() for t in back.objective.terms] == [t.get_config() for t in obj.terms]
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    # It can keep training after loading.
    back.fit(x, y, epochs=1, batch_size=16, verbose=0)


def test_compiled_loss_and_probability_classifiers_are_rejected():
    x, y = data(8)
    model = models.RobustModel(tiny_cnn())
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="without loss"):
        model.fit(x, y, epochs=1, verbose=0)
    probs = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")], name="probs")
    with pytest.raises(ValueError, match="probabilities"):
        models.RobustModel(probs)


def _one_step(objective_name, strategy, x, y, init, **kwargs):
    with strategy.scope():
        model = models.RobustModel(tiny_cnn(), OBJECTIVES[objective_name](), **kwargs)
        model.classifier.set_weights(init)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model.classifier.get_weights()


@pytest.mark.parametrize("objective_name,kwargs", [(name, {}) for name in sorted(OBJECTIVES)]
                         + [("pgd_at", {"eps_warmup_steps": 4}),
                            ("jacobian_curvature", {"penalty_warmup_steps": 4})])
def test_mirrored_step_equals_single_device_step(objective_name, kwargs, no_random_start):
    """DESIGN §3.5: weights after one SGD step on 2 logical CPUs equal the 1-device result."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, "conftest should create two logical CPU devices"
    # Random starts differ between one device and two: the fixture puts them at the centre.
    x, y = data(8)
    init = tiny_cnn().get_weights()
    single = _one_step(objective_name, tf.distribute.OneDeviceStrategy(devices[0]), x, y, init, **kwargs)
    # ReductionToOneDevice, as training.build_strategy on CPUs: default collectives share instance
    # numbers across the strategies of one process and abort when a later one reduces other shapes.
    strategy = tf.distribute.MirroredStrategy(devices[:2], cross_device_ops=tf.distribute.ReductionToOneDevice())
    mirrored = _one_step(objective_name, strategy, x, y, init, **kwargs)
    moved = max(np.abs(a - b).max() for a, b in zip(single, init))
    assert moved > 1e-3
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_zoo_classifiers_output_logits_of_the_right_shape():
    for name, shape in (("mnist_cnn", (28, 28, 1)), ("cifar_cnn", (32, 32, 3)), ("linear", (8, 8, 1))):
        clf = models.build_classifier(name, shape, 10)
        assert clf.output_shape == (None, 10)
    small = models.wide_resnet(depth=10, widen=1)
    assert small.output_shape == (None, 10)
    # Pre-activation WRN-10-1: 1 block per group; widths 16, 32, 64.
    assert [layer.filters for layer in small.layers if isinstance(layer, keras.layers.Conv2D)][-1] == 64
    with pytest.raises(ValueError, match="depth=12"):
        models.wide_resnet(depth=12)
    with pytest.raises(ValueError, match="'resnet9000'"):
        models.build_classifier("resnet9000", (8, 8, 1), 10)


def test_eps_warmup_attacks_at_a_fraction_of_the_radius_first():
    """With eps_warmup_steps=4 the first SGD step equals a step of FGSM training at eps/4."""
    x, y = data(16)
    init = tiny_cnn().get_weights()

    def one_step(eps, warmup):
        model = models.RobustModel(tiny_cnn(), O.AdversarialTraining(AttackConfig(name="fgsm", eps=eps)),
                                   eps_warmup_steps=warmup)
        model.classifier.set_weights(init)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        return model

    warm = one_step(0.2, 4)
    for a, b in zip(warm.classifier.get_weights(), one_step(0.05, 0).classifier.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in
               zip(warm.classifier.get_weights(), one_step(0.2, 0).classifier.get_weights()))
    np.testing.assert_allclose([models.warmup_scale(s, 4).numpy() for s in (0, 1, 3, 10)],
                               [0.25, 0.5, 1.0, 1.0])
    assert models.RobustModel.from_config(warm.get_config()).eps_warmup_steps == 4
    with pytest.raises(ValueError, match="eps_warmup_steps=-1"):
        models.RobustModel(tiny_cnn(), eps_warmup_steps=-1)


def test_penalty_warmup_scales_penalties_and_nothing_else():
    """With penalty_warmup_steps=4 the first SGD step equals one at a quarter of every penalty's
    coefficient, the cross-entropy and adversarial CE unscaled; the evaluation loss is unscaled."""
    x, y = data(16)
    init = tiny_cnn().get_weights()

    def one_step(c, k, warmup, adv=True):
        terms = [O.CrossEntropy(), O.DecisionJacobian(c=c), O.DecisionCurvature(c=k, h=0.2)]
        if adv:
            terms.append(O.AdversarialTraining(AttackConfig(name="fgsm", eps=0.1)))
        model = models.RobustModel(tiny_cnn(), terms, penalty_warmup_steps=warmup)
        model.classifier.set_weights(init)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        return model

    warm = one_step(0.4, 2.0, 4)
    for a, b in zip(warm.classifier.get_weights(), one_step(0.1, 0.5, 0).classifier.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in
               zip(warm.classifier.get_weights(), one_step(0.4, 2.0, 0).classifier.get_weights()))
    # test_step uses the full coefficients: the same loss as a model without warm-up.
    cold = one_step(0.4, 2.0, 0)
    cold.classifier.set_weights(warm.classifier.get_weights())
    np.testing.assert_allclose(warm.evaluate(x, y, verbose=0, return_dict=True)["jacobian_penalty"],
                               cold.evaluate(x, y, verbose=0, return_dict=True)["jacobian_penalty"], rtol=1e-6)
    assert [t.penalty for t in warm.objective.terms] == [False, True, True, False]
    assert models.RobustModel.from_config(warm.get_config()).penalty_warmup_steps == 4
    with pytest.raises(ValueError, match="penalty_warmup_steps=2.5"):
        models.RobustModel(tiny_cnn(), penalty_warmup_steps=2.5)
