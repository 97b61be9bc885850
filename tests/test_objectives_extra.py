"""EMR, TRADES, MART and finite-difference penalties against closed forms and float64 references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust import objectives as O
from tfrobust.attacks import AttackConfig

D, K = 5, 3


def linear(seed=0):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(D, K)), rng.normal(size=K)
    m = keras.Sequential([keras.Input((D,), dtype="float64"), keras.layers.Dense(K, dtype="float64")])
    m.layers[0].set_weights([w, b])
    return m, w, b


def tanh_net(seed=0, dropout=0.0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((D,), dtype="float64"), keras.layers.Dense(7, activation="tanh", dtype="float64")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, dtype="float64"))
    return keras.Sequential(layers + [keras.layers.Dense(K, dtype="float64")])


def batch(n=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 0.8, size=(n, D)), rng.integers(0, K, n)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mean_term(model, term, x, y, training=True):
    ctx = O.StepContext(model, x, y, training=training)
    ctx.prepare(O.Objective([term]))
    return tf.reduce_mean(term(ctx))


# -- StepContext training override ------------------------------------------------


def test_step_context_training_override_gets_its_own_cached_forward():
    model = tanh_net(dropout=0.5)
    x, y = batch()
    ctx = O.StepContext(model, x, y, training=True)
    inference = ctx.logits(O.CLEAN, training=False)
    np.testing.assert_array_equal(inference.numpy(), model(x, training=False).numpy())
    assert ctx.logits(O.CLEAN, training=False) is inference  # computed once
    dropped = ctx.logits(O.CLEAN)  # the step's flag: dropout active
    assert np.abs(dropped.numpy() - inference.numpy()).max() > 1e-3
    assert ctx.logits(O.CLEAN, training=True) is dropped and ctx.cached_logits(O.CLEAN) is dropped
    # The inference-mode input gradient is that of the deterministic network.
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        want = tape.gradient(tf.reduce_sum(losses.decision_margin(model(xt, training=False), y)), xt)
    got = ctx.input_gradient(O.CLEAN, losses.decision_margin, training=False)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)


# -- EMR ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 1.0, 40.0])
def test_emr_on_linear_model_is_weighted_column_norm(temperature):
    model, w, b = linear()
    x, y = batch()
    term = O.EffectiveMargin(lam=0.3, temperature=temperature)
    ctx = O.StepContext(model, x, y, training=True)
    got = term(ctx).numpy()
    p = softmax((x @ w + b) / temperature)
    want = 0.3 * ((p @ w.T) ** 2).sum(1)  # ∂(sum_k p_k z_k)/∂x = W p
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_emr_at_an_attack_point_uses_that_point():
    model, w, b = linear()
    x, y = batch()
    attack = AttackConfig(name="fgsm", eps=0.1)
    term = O.EffectiveMargin(lam=1.0, temperature=1.0, at=attack)
    ctx = O.StepContext(model, x, y, training=True)
    ctx.prepare(O.Objective([term]))
    x_adv = ctx.point(attack).numpy()
    assert np.abs(x_adv - x).max() == pytest.approx(0.1)
    p = softmax((x_adv @ w + b) / 1.0)
    np.testing.assert_allclose(term(ctx).numpy(), ((p @ w.T) ** 2).sum(1), rtol=1e-12)


def test_emr_matches_the_authors_batch_mean_convention():
    """lam = λ_authors / B reproduces λ_authors * sum((∂ mean_i(s_i) / ∂x)²)."""
    model = tanh_net()
    x, y = batch(n=8)
    lam_authors, temperature = 3.0, 40.0
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = model(xt, training=False)
        p = tf.stop_gradient(tf.nn.softmax(z / temperature))
        s = tf.reduce_mean(tf.reduce_sum(p * z, -1))
    authors = lam_authors * tf.reduce_sum(tf.square(tape.gradient(s, xt)))
    term = O.EffectiveMargin.from_authors(lam_authors, batch_size=8, temperature=temperature)
    assert term.lam == pytest.approx(3.0 / 8)
    np.testing.assert_allclose(mean_term(model, term, x, y).numpy(), authors.numpy(), rtol=1e-12)


def test_emr_runs_in_inference_mode_unless_told_otherwise():
    model = tanh_net(dropout=0.5)
    x, y = batch()
    deterministic = [mean_term(model, O.EffectiveMargin(lam=1.0, temperature=1.0), x, y).numpy()
                     for _ in range(2)]
    assert deterministic[0] == deterministic[1]
    noisy = [mean_term(model, O.EffectiveMargin(lam=1.0, temperature=1.0, training=None), x, y).numpy()
             for _ in range(2)]
    assert noisy[0] != noisy[1]  # dropout active when following the step's flag


def _emr_reference(model, x, p0, lam):
    """EMR with the softmax weights frozen at p0 (what stop_gradient means for the weight gradient)."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        s = tf.reduce_sum(p0 * model(xt, training=False), -1)
    return lam * tf.reduce_mean(tf.reduce_sum(tf.square(tape.gradient(s, xt)), -1))


def test_emr_weight_gradient_matches_float64_finite_differences():
    model = tanh_net()
    x, y = batch(n=4)
    term = O.EffectiveMargin(lam=2.0, temperature=3.0)
    p0 = tf.nn.softmax(model(x, training=False) / 3.0)
    np.testing.assert_allclose(mean_term(model, term, x, y).numpy(),
                               _emr_reference(model, x, p0, 2.0).numpy(), rtol=1e-12)
    with tf.GradientTape() as tape:
        value = mean_term(model, term, x, y)
    analytic = tape.gradient(value, model.trainable_weights)
    for var, grad in zip(model.trainable_weights, analytic):
        grad = tf.zeros_like(var) if grad is None else grad
        flat = var.numpy().ravel()
        for idx in range(0, flat.size, max(1, flat.size // 5)):
            vals = []
            for sgn in (+1, -1):
                new = flat.copy()
                new[idx] += sgn * 1e-6
                var.assign(new.reshape(var.shape))
                vals.append(_emr_reference(model, x, p0, 2.0).numpy())
            var.assign(flat.reshape(var.shape))
            np.testing.assert_allclose(grad.numpy().ravel()[idx], (vals[0] - vals[1]) / 2e-6,
                                       rtol=1e-5, atol=1e-9)


def test_emr_composes_with_every_base_objective_and_shares_points():
    pgd = AttackConfig(eps=0.1, steps=2)
    kl = O.KLAttack(eps=0.1, steps=2)
    combos = [O.AdversarialTraining(pgd) + O.EffectiveMargin(at=pgd),
              O.Trades(attack=kl) + O.EffectiveMargin(at=kl),
              O.Mart(attack=pgd) + O.EffectiveMargin(at=pgd),
              O.CrossEntropy() + O.DecisionJacobian(c=1.0) + O.EffectiveMargin()]
    model = tanh_net()
    x, y = batch()
    for obj in combos:
        assert len(obj.attacks()) == len({a for t in obj.terms for a in t.attacks()}) <= 1
        ctx = O.StepContext(model, x, y, training=True)
        ctx.prepare(obj)
        total, parts = obj(ctx)
        assert parts["emr_penalty"].numpy() > 0
        np.testing.assert_allclose(total.numpy(), sum(v.numpy() for v in parts.values()), rtol=1e-12)


# -- finite-difference penalties ----------------------------------------------------


@pytest.mark.parametrize("norm", O.PENALTY_NORMS)
@pytest.mark.parametrize("kind", ["jacobian", "emr"])
def test_finite_difference_is_exact_for_a_linear_model(kind, norm):
    model, _, _ = linear()
    x, y = batch()
    make = {"jacobian": lambda **k: O.DecisionJacobian(c=2.0, norm=norm, **k),
            "emr": lambda **k: O.EffectiveMargin(lam=2.0, temperature=1.0, norm=norm, **k)}[kind]
    exact, approx = make(), make(method="finite_difference", h=1e-4)
    values, grads = [], []
    for term in (exact, approx):
        with tf.GradientTape() as tape:
            ctx = O.StepContext(model, x, y, training=True)
            per_example = term(ctx)
            value = tf.reduce_mean(per_example)
        values.append(per_example.numpy())
        raw = tape.gradient(value, model.trainable_weights)
        grads.append([np.zeros(v.shape) if g is None else g.numpy()
                      for v, g in zip(model.trainable_weights, raw)])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-8)
    for a, b in zip(grads[1], grads[0]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("make", [
    lambda **k: O.InputGradient(c=1.0, **k),
    lambda **k: O.DecisionJacobian(c=1.0, norm="l2", **k),
    lambda **k: O.EffectiveMargin(lam=1.0, temperature=2.0, **k),
], ids=["input_gradient", "jacobian_l2", "emr"])
def test_finite_difference_converges_as_h_shrinks(make):
    model = tanh_net()
    x, y = batch()
    exact_term = make()
    with tf.GradientTape() as tape:
        exact = mean_term(model, exact_term, x, y)
    exact_grads = tape.gradient(exact, model.trainable_weights)
    errors = []
    for h in (1e-1, 1e-2, 1e-3, 1e-4):
        with tf.GradientTape() as tape:
            approx = mean_term(model, make(method="finite_difference", h=h), x, y)
        grads = tape.gradient(approx, model.trainable_weights)
        grad_err = max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(grads, exact_grads)
                       if b is not None)
        errors.append((abs(approx.numpy() - exact.numpy()) / exact.numpy(), grad_err))
    value_errors, grad_errors = zip(*errors)
    # First order in h: each tenfold smaller step cuts the error about tenfold.
    for big, small in zip(value_errors, value_errors[1:]):
        assert small < 0.2 * big
    assert value_errors[-1] < 1e-3 and value_errors[0] > 1e-4
    assert grad_errors[-1] < 1e-3 and grad_errors[-1] < 0.01 * grad_errors[0]


def test_finite_difference_directions_attain_the_norm():
    g = tf.constant([[3.0, -4.0, 1.0], [0.5, 0.0, -2.0]], tf.float64)
    for norm in O.PENALTY_NORMS:
        d = O.finite_difference_direction(g, norm)
        pairing = tf.reduce_sum(g * d, -1).numpy()
        want = O.penalty_norm(g, "l2" if norm == "l2_squared" else norm).numpy()
        np.testing.assert_allclose(pairing, want, rtol=1e-6)
    np.testing.assert_array_equal(O.finite_difference_direction(g, "linf").numpy(),
                                  [[0, -1, 0], [0, 0, -1]])


# -- TRADES ---------------------------------------------------------------------


def test_gaussian_noise_is_standard_normal_and_patchable(monkeypatch):
    z = O.gaussian_noise([200_000], tf.float64, seed=3).numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.005
    monkeypatch.setattr(norms, "random_start", lambda shape, eps, norm, dtype=tf.float32, seed=None:
                        tf.zeros(shape, dtype))
    np.testing.assert_allclose(O.gaussian_noise([4], tf.float64).numpy(), -np.sqrt(2 * np.log(2)))


def _kl(p_logits, q_logits):
    p, q = softmax(p_logits), softmax(q_logits)
    return (p * (np.log(p) - np.log(q))).sum(-1)


def test_kl_pgd_one_step_matches_a_hand_computed_step(monkeypatch):
    monkeypatch.setattr(norms, "random_start", lambda shape, eps, norm, dtype=tf.float32, seed=None:
                        tf.zeros(shape, dtype))
    model = tanh_net()
    x, y = batch()
    attack = O.KLAttack(eps=0.05, steps=1, step_size=0.03, init_std=0.01)
    got = attack(model, x, y, clip=(0.0, 1.0)).numpy()
    start = x - 0.01 * np.sqrt(2 * np.log(2))
    clean = model(x).numpy()
    # ∇_x' KL(p || q(x')) = J(x')ᵀ (q - p), taken by central differences in float64.
    grad = np.zeros_like(x)
    for i in range(D):
        e = np.zeros(D)
        e[i] = 1e-6
        grad[:, i] = (_kl(clean, model(start + e).numpy()) - _kl(clean, model(start - e).numpy())) / 2e-6
    want = np.clip(x + np.clip(start + 0.03 * np.sign(grad) - x, -0.05, 0.05), 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.all(_kl(clean, model(got).numpy()) > _kl(clean, model(start).numpy()))


def test_kl_pgd_stays_in_the_ball_and_raises_the_kl():
    model = tanh_net()
    x, y = batch(n=16)
    for norm, eps in (("linf", 0.1), ("l2", 0.2)):
        attack = O.KLAttack(eps=eps, steps=10, norm=norm)
        x_adv = attack(model, x).numpy()
        dist = np.abs(x_adv - x).max(1) if norm == "linf" else np.sqrt(((x_adv - x) ** 2).sum(1))
        # norms.project rounds eps through float32, hence the 1e-7.
        assert np.all(dist <= eps + 1e-7) and x_adv.min() >= 0 and x_adv.max() <= 1
        clean = model(x).numpy()
        noise = np.random.default_rng(0).normal(size=x.shape)
        noise *= eps / (np.abs(noise).max(1, keepdims=True) if norm == "linf"
                        else np.sqrt((noise ** 2).sum(1, keepdims=True)))
        assert np.all(_kl(clean, model(x_adv).numpy()) > _kl(clean, model(x + noise).numpy()))


def test_trades_term_is_ce_plus_beta_kl_at_the_prepared_point():
    model = tanh_net()
    x, y = batch()
    term = O.Trades(beta=6.0, attack=O.KLAttack(eps=0.1, steps=3))
    ctx = O.StepContext(model, x, y, training=True)
    ctx.prepare(O.Objective([term]))
    x_adv = ctx.point(term.attack).numpy()
    clean, adv = model(x).numpy(), model(x_adv).numpy()
    ce = -np.log(softmax(clean)[np.arange(len(y)), y])
    np.testing.assert_allclose(term(ctx).numpy(), ce + 6.0 * _kl(clean, adv), rtol=1e-10)
    # The weight gradient flows through both distributions: beta matters for it.
    with tf.GradientTape(persistent=True) as tape:
        ctx = O.StepContext(model, x, y, training=True)
        ctx.prepare(O.Objective([term]))
        v6 = tf.reduce_mean(term(ctx))
        v0 = tf.reduce_mean(O.Trades(beta=0.0, attack=term.attack)(ctx))
    g6, g0 = (tape.gradient(v, model.trainable_weights[0]).numpy() for v in (v6, v0))
    assert np.abs(g6 - g0).max() > 1e-6


# -- MART ------------------------------------------------------------------------


def _mart_reference(clean, adv, y, beta):
    """The authors' PyTorch code, transcribed to numpy."""
    adv_probs = softmax(adv)
    top2 = np.argsort(adv_probs, axis=1)[:, -2:]
    new_y = np.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    rows = np.arange(len(y))
    loss_adv = -np.log(adv_probs[rows, y]) - np.log(1.0001 - adv_probs[rows, new_y] + 1e-12)
    nat_probs = softmax(clean)
    kl = (nat_probs * (np.log(nat_probs) - np.log(adv_probs + 1e-12))).sum(1)
    return loss_adv + beta * kl * (1.0000001 - nat_probs[rows, y])


def test_mart_loss_matches_the_published_formula():
    rng = np.random.default_rng(5)
    clean, adv = rng.normal(size=(32, 4)) * 3, rng.normal(size=(32, 4)) * 3
    y = rng.integers(0, 4, 32)
    y[:8] = adv[:8].argmax(1)  # both branches of new_y: top-1 is and is not the label
    got = O.mart_loss(tf.constant(clean), tf.constant(adv), tf.constant(y), 6.0).numpy()
    np.testing.assert_allclose(got, _mart_reference(clean, adv, y, 6.0), rtol=1e-10)


def test_mart_term_uses_its_attack_point():
    model, _, _ = linear()
    x, y = batch()
    attack = AttackConfig(name="pgd", eps=0.1, steps=3, random_start=False)
    term = O.Mart(beta=5.0, attack=attack)
    ctx = O.StepContext(model, x, y, training=True)
    ctx.prepare(O.Objective([term]))
    x_adv = attack(model, x, y).numpy()
    np.testing.assert_allclose(term(ctx).numpy(),
                               _mart_reference(model(x).numpy(), model(x_adv).numpy(), y, 5.0), rtol=1e-10)


# -- configuration ------------------------------------------------------------------


def test_new_terms_round_trip_through_keras_serialisation():
    kl = O.KLAttack(eps=0.031, steps=10, step_size=0.007)
    obj = (O.Trades(beta=6.0, attack=kl) + O.EffectiveMargin(lam=1 / 128, temperature=1.0, at=kl)
           + O.DecisionJacobian(c=10.0, method="finite_difference", h=0.001)
           + O.InputGradient(c=1.0, norm="l1", method="finite_difference"))
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert [t.get_config() for t in back.terms] == [t.get_config() for t in obj.terms]
    assert back.terms[0].attack == kl and back.terms[1].at == kl
    mart = O.Mart(attack={"name": "pgd", "eps": 0.031, "steps": 10, "step_size": 0.0078})
    assert O.Mart.from_config(mart.get_config()) == mart
    assert O.EffectiveMargin().get_config()["method"] == "double_backprop"


@pytest.mark.parametrize("make,match", [
    (lambda: O.EffectiveMargin(lam=-1.0), "lam=-1.0"),
    (lambda: O.EffectiveMargin(temperature=0.0), "temperature=0.0"),
    (lambda: O.EffectiveMargin(method="fd"), "'fd'"),
    (lambda: O.DecisionJacobian(method="exact"), "'exact'"),
    (lambda: O.InputGradient(h=0.0), "h=0.0"),
    (lambda: O.EffectiveMargin(training="yes"), "training='yes'"),
    (lambda: O.EffectiveMargin.from_authors(3.0, batch_size=0), "batch_size=0"),
    (lambda: O.Trades(beta=-6.0), "beta=-6.0"),
    (lambda: O.KLAttack(eps=-0.1), "eps=-0.1"),
    (lambda: O.KLAttack(norm="l1"), "'l1'"),
    (lambda: O.Mart(attack={"name": "pgd", "steps": 2.5}), "steps=2.5"),
])
def test_bad_new_term_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- one forward pass for terms asking for either training flag (issue #14) ----------------------

def test_responds_to_training_on_the_zoo_and_on_flag_layers():
    from tfrobust import models
    assert not models.responds_to_training(models.mnist_cnn(width=0.25))
    assert models.responds_to_training(models.wide_resnet(depth=10, widen=1, input_shape=(8, 8, 3)))
    for layer in (keras.layers.Dropout(0.1), keras.layers.GaussianNoise(0.1), keras.layers.Lambda(lambda t: t)):
        net = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(3)])
        assert models.responds_to_training(net), layer


class _CountingNet(keras.Model):
    """A dense net whose forward passes are counted while a step is traced."""

    def __init__(self, dropout=False):
        super().__init__()
        self.body = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(8, activation="relu")]
                                     + ([keras.layers.Dropout(0.0)] if dropout else []) + [keras.layers.Dense(3)])
        self.calls = 0

    def call(self, x, training=False):
        self.calls += 1
        return self.body(x, training=training)


@pytest.mark.parametrize("dropout,forwards", [(False, 1), (True, 2)])
def test_emr_shares_the_losses_forward_pass_unless_the_model_responds_to_training(dropout, forwards):
    from tfrobust import models
    from tfrobust import objectives as O
    net = _CountingNet(dropout)
    x = np.random.default_rng(0).uniform(size=(16, 4, 4, 1)).astype("float32")
    y = np.arange(16) % 3
    net(x[:1])
    model = models.RobustModel(net, O.CrossEntropy() + O.EffectiveMargin(lam=0.1, temperature=2.0))
    model.compile(optimizer="sgd")
    before = net.calls
    model.train_step((tf.constant(x), tf.constant(y)))  # eager: every forward pass runs once
    assert net.calls - before == forwards
    # Sharing changes nothing in the value or the weight gradient for a model the flag does not reach.
    if not dropout:
        from tfrobust.objectives import StepContext
        results = []
        for share in (False, True):
            with tf.GradientTape() as tape:
                ctx = StepContext(net, tf.constant(x), tf.constant(y), training=True, share_forward=share)
                ctx.prepare(model.objective)
                value = model.objective(ctx)[0]
            results.append((float(value), [g.numpy() for g in tape.gradient(value, net.trainable_variables)]))
        assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
        for a, b in zip(results[0][1], results[1][1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
