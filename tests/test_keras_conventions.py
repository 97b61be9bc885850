"""Keras conventions: mixed precision and XLA for every objective, one step against float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import models
from tfrobust.objectives import StepContext, as_objective
from test_models import OBJECTIVES, data, tiny_cnn

# One SGD step (lr 0.5) of a tiny tanh CNN. Mixed precision rounds the forward pass to float16
# (about 3 significant digits): weights after the step agree with float32 to rtol 2e-2. Objectives
# that attack during the step also take sign(∇x) in float16, which flips near-zero components and
# moves the adversarial point: there the weights agree to atol 0.06 and the loss to 4%.
MIXED_RTOL, MIXED_ATOL = 2e-2, 2e-3
ATTACK_ATOL, ATTACK_LOSS_RTOL = 6e-2, 4e-2
LR = 0.5
U16 = 2.0 ** -11  # float16 unit roundoff


def fd_atol(objective, classifier, x, y):
    """Extra atol, per weight array, that float16 rounding costs the finite-difference terms.

    Error analysis. A finite-difference term ``c R(s)``, ``s = (f(x + h d) - f(x)) / h``, has
    weight gradient ``c R'(s) (∇w f(x + h d) - ∇w f(x)) / h``. In float16 each of the two passes'
    ``∇w f`` carries one rounding of relative size ``u = 2^-11`` per float16 tensor on its path
    (forward: input, conv output, tanh, logits; backward: their four cotangents), 8 per pass,
    16 for the difference; taken as independent, they add up to ``sqrt(16) u |∇w f| = 4u |∇w f|``.
    Divided by ``h`` and times the learning rate, one SGD step moves a weight by at most::

        LR * c * R'(s) * 4u * G / h,    G = max entry of mean_i |∇w f(x_i)| <= 2 max_k mean_i |∇w z_k(x_i)|

    (``f`` is the margin, the CE or EMR's ``s``, each within twice the largest logit's gradient);
    ``R'(s)`` is 1 for the L1/L2 norms and ``2 max_i |s_i|`` for the squared L2 norm, with ``s_i``
    read off the term's float32 value ``c s_i²``. Here (seed 0) that is 0.005-0.012 for
    jacobian_fd at h = 0.1; measured on an Intel Xeon the error is 0.001 and on an AMD EPYC up to
    0.0055, which the former fixed atol of 0.002 failed. Double backprop has no ``1/h``: its
    terms keep the plain mixed-precision tolerance.
    """
    terms = [t for t in as_objective(objective).terms if getattr(t, "method", None) == "finite_difference"]
    if not terms:
        return [0.0] * len(classifier.trainable_weights)
    x = tf.constant(x)
    per_weight = 0.0
    for k in range(classifier.output_shape[-1]):
        with tf.GradientTape() as tape:
            z = classifier(x)[:, k]
        jac = tape.jacobian(z, classifier.trainable_weights)  # [batch, *weight shape] each
        per_weight = np.maximum(per_weight, [np.abs(j.numpy()).mean(0).max() for j in jac])
    extra = 0.0
    for term in terms:
        c = getattr(term, "c", getattr(term, "lam", None))
        slope_factor = 1.0
        if term.norm == "l2_squared":
            ctx = StepContext(classifier, x, y, training=True)
            ctx.prepare(as_objective(term))
            slope_factor = 2.0 * float(np.sqrt(term(ctx).numpy() / c).max())
        extra = extra + LR * c * slope_factor * 4.0 * U16 * 2.0 * per_weight / term.h
    return list(extra)


def _one_step(name, x, y, init, *, jit=False, optimizer=None):
    model = models.RobustModel(tiny_cnn(), OBJECTIVES[name]())
    model.classifier.set_weights(init)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(LR), jit_compile=jit)
    hist = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    return [np.asarray(w, np.float32) for w in model.classifier.get_weights()], hist


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_mixed_float16_step_matches_float32(name, no_random_start):
    x, y = data(8)
    init = tiny_cnn().get_weights()
    want, want_hist = _one_step(name, x, y, init)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR), initial_scale=2.0 ** 4)
        got, hist = _one_step(name, x, y, [w.astype("float32") for w in init], optimizer=opt)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(v).all() for v in hist.values())
    moved = max(np.abs(a - b).max() for a, b in zip(want, init))
    assert moved > 1e-3
    objective = OBJECTIVES[name]()
    attacks = objective.attacks()
    classifier = tiny_cnn()
    classifier.set_weights(init)
    extra = fd_atol(objective, classifier, x, y)
    for a, b, fd in zip(got, want, extra):
        if attacks:
            np.testing.assert_allclose(a, b, atol=ATTACK_ATOL)
        else:
            np.testing.assert_allclose(a, b, rtol=MIXED_RTOL, atol=MIXED_ATOL + fd)
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


def test_finite_difference_step_below_the_float16_floor_is_refused():
    """2 sqrt(u): 0.044 for float16, 0.125 for bfloat16, no floor for float32; h=0.01 under
    mixed_float16 names itself and the floor."""
    from tfrobust import objectives as O
    assert O.min_finite_difference_step("float16") == pytest.approx(2 * 2.0 ** -5.5)
    assert O.min_finite_difference_step("bfloat16") == 0.125
    assert O.min_finite_difference_step("float32") == 0.0
    x, y = data(8)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.RobustModel(tiny_cnn(), O.CrossEntropy() + O.DecisionJacobian(
            method="finite_difference", h=0.01))
        model.compile(optimizer=keras.optimizers.SGD(LR))
        with pytest.raises(ValueError, match=r"h=0\.01 is too small for the model's float16 .* h >= 0\.0442"):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
