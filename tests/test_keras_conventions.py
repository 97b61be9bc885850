"""Keras conventions: mixed precision and XLA for every objective, one step against float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import models, norms
from test_models import OBJECTIVES, data, tiny_cnn

# One SGD step (lr 0.5) of a tiny tanh CNN. Mixed precision rounds the forward pass to float16
# (about 3 significant digits): weights after the step agree with float32 to rtol 2e-2. Objectives
# that attack during the step also take sign(∇x) in float16, which flips near-zero components and
# moves the adversarial point: there the weights agree to atol 0.06 and the loss to 4%.
MIXED_RTOL, MIXED_ATOL = 2e-2, 2e-3
ATTACK_ATOL, ATTACK_LOSS_RTOL = 6e-2, 4e-2


@pytest.fixture
def no_random_start(monkeypatch):
    monkeypatch.setattr(norms, "random_start", lambda shape, eps, norm, dtype=tf.float32, seed=None:
                        tf.zeros(shape, dtype))


def _one_step(name, x, y, init, *, jit=False, optimizer=None):
    model = models.RobustModel(tiny_cnn(), OBJECTIVES[name]())
    model.classifier.set_weights(init)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.5), jit_compile=jit)
    hist = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    return [np.asarray(w, np.float32) for w in model.classifier.get_weights()], hist


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_mixed_float16_step_matches_float32(name, no_random_start):
    x, y = data(8)
    init = tiny_cnn().get_weights()
    want, want_hist = _one_step(name, x, y, init)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=2.0 ** 4)
        got, hist = _one_step(name, x, y, [w.astype("float32") for w in init], optimizer=opt)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(v).all() for v in hist.values())
    moved = max(np.abs(a - b).max() for a, b in zip(want, init))
    assert moved > 1e-3
    attacks = OBJECTIVES[name]().attacks()
    for a, b in zip(got, want):
        if attacks:
            np.testing.assert_allclose(a, b, atol=ATTACK_ATOL)
        else:
            np.testing.assert_allclose(a, b, rtol=MIXED_RTOL, atol=MIXED_ATOL)
    if attacks:
        np.testing.assert_allclose(hist["loss"], want_hist["loss"], rtol=ATTACK_LOSS_RTOL)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_jit_compiled_step_matches_the_plain_step(name, no_random_start):
    x, y = data(8)
    init = tiny_cnn().get_weights()
    want, _ = _one_step(name, x, y, init)
    got, _ = _one_step(name, x, y, init, jit=True)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd", "square"])
def test_attacks_run_on_a_mixed_float16_model(name):
    from tfrobust import attacks
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_cnn()
        x, y = data(8)
        kwargs = {"square": {"queries": 20}, "pgd": {"steps": 3, "step_size": 0.05}, "apgd": {"steps": 3}}.get(name, {})
        x_adv = attacks.get_attack(name)(model, x, y, eps=0.1, **kwargs).numpy()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert x_adv.dtype == np.float32 and np.isfinite(x_adv).all()
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
