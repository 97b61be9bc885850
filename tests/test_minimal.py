"""Minimal-norm attacks (FAB, FAB-T, FMN), the standard AutoAttack cascade, and robustness curves."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, evaluation
from tfrobust.attacks.minimal import fab, fmn, project_onto_hyperplane
from tfrobust.cli import main
from tfrobust.evaluation.curve import accuracy_at, curve_report

D, K, N = 20, 4, 24
FAB_TOLERANCE = 1.01  # FAB's distance on a linear model is within 1% of the closed form


def linear_problem(seed=0, low=0.3, high=0.7):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, K)).astype("float32")
    b = (0.1 * rng.normal(size=K)).astype("float32")
    x = rng.uniform(low, high, size=(N, D)).astype("float32")
    model = lambda z, training=False: tf.matmul(tf.reshape(z, [tf.shape(z)[0], -1]), w) + b  # noqa: E731
    return model, x, w, b


def true_distance(x, w, b, norm, only=None):
    """``min_j d_j / ||w_y - w_j||_dual`` per example in float64 (``only``: a fixed class per example)."""
    x, w, b = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    logits = x @ w + b
    y = logits.argmax(1)
    out = []
    for i in range(len(x)):
        best = np.inf
        for j in range(w.shape[1]):
            if j == y[i] or (only is not None and j != only[i]):
                continue
            diff = w[:, y[i]] - w[:, j]
            dual = np.abs(diff).sum() if norm == "linf" else np.sqrt((diff ** 2).sum())
            best = min(best, (logits[i, y[i]] - logits[i, j]) / dual)
        out.append(best)
    return np.array(out), y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_closed_form_distance_on_a_linear_model(norm):
    model, x, w, b = linear_problem()
    truth, y = true_distance(x, w, b, norm)
    # Without a box the linear model's plane is its boundary, and FAB's only bias is its
    # overshoot: a point after a step lies at most eta beyond the plane, and the biased mix with
    # the original's projection pulls the best one to within 1% (measured: 0.52%).
    x_adv, dist = fab(model, x, y, norm=norm, steps=40, clip=None)
    dist = dist.numpy()
    assert np.all(dist >= truth * (1 - 1e-5))
    assert np.all(dist <= truth * FAB_TOLERANCE + 1e-6)
    assert np.all(model(x_adv).numpy().argmax(1) != y)
    np.testing.assert_allclose(np.abs(x_adv.numpy() - x).max(1) if norm == "linf"
                               else np.linalg.norm(x_adv.numpy() - x, axis=1), dist, rtol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_targets_the_ranked_class(norm):
    model, x, w, b = linear_problem(seed=1)
    logits = x @ w + b
    third = np.argsort(-logits, 1)[:, 2]  # rank 3: the class after the runner-up
    truth, y = true_distance(x, w, b, norm, only=third)
    _, dist = fab(model, x, y, norm=norm, steps=40, clip=None, target_rank=3)
    dist = dist.numpy()
    # The plane of the target is crossed first (dist <= its distance), unless another class
    # boundary lies before it on the way (then dist is smaller still).
    assert np.all(dist <= truth * FAB_TOLERANCE + 1e-6)
    assert np.all(dist >= true_distance(x, w, b, norm)[0] * (1 - 1e-5))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_finds_the_closed_form_distance_on_a_linear_model(norm):
    model, x, w, b = linear_problem(seed=2)
    truth, y = true_distance(x, w, b, norm)
    run = tf.function(lambda m, a, c: fmn(m, a, c, norm=norm, steps=150, clip=None))
    x_adv, dist = run(model, tf.constant(x), tf.constant(y))
    dist = dist.numpy()
    assert np.all(model(x_adv).numpy().argmax(1) != y)
    # Never closer than the boundary, and on it for most examples.
    assert np.all(dist >= truth * (1 - 1e-5))
    assert (np.abs(dist / truth - 1) < 1e-3).mean() >= 0.8
    # Two classes: exactly the closed form. With more, FMN descends the margin of the current
    # runner-up and can settle on a farther class boundary (a vertex of the L-inf ball where
    # that class's margin is smallest), which FAB's explicit minimum over classes does not.
    two = lambda z, training=False: model(z)[:, :2]  # noqa: E731
    truth2, y2 = true_distance(x, w[:, :2], b[:2], norm)
    _, dist2 = run(two, tf.constant(x), tf.constant(y2))
    np.testing.assert_allclose(dist2.numpy(), truth2, rtol=1e-3)


@pytest.mark.parametrize("attack", [fab, fmn])
def test_minimal_attacks_in_the_box_and_misclassified_inputs(attack):
    model, x, w, b = linear_problem(seed=3, low=0.0, high=1.0)
    x = np.clip(x + np.where(np.random.default_rng(0).random(x.shape) < 0.5, -1, 1), 0, 1)  # on the box faces
    logits = x @ w + b
    y = logits.argmax(1)
    y[:3] = (y[:3] + 1) % K  # misclassified already: distance 0, x itself
    x_adv, dist = attack(model, x, y, norm="linf", steps=60, clip=(0.0, 1.0))
    x_adv, dist = x_adv.numpy(), dist.numpy()
    np.testing.assert_array_equal(dist[:3], 0.0)
    np.testing.assert_array_equal(x_adv[:3], x[:3])
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    found = np.isfinite(dist)
    assert found.mean() > 0.9
    assert np.all(model(x_adv[found]).numpy().argmax(1) != y[found])
    np.testing.assert_allclose(np.abs(x_adv - x).max(1)[found], dist[found], rtol=1e-5, atol=1e-7)
    # No adversarial point inside the distance found: the closed form with the box is a lower bound.
    unboxed, _ = true_distance(x, w, b, "linf")
    assert np.all(dist[3:][found[3:]] >= unboxed[3:][found[3:]] * (1 - 1e-5))


def _reference_step(w, r, low, high, norm):
    """The projection in float64 by walking the sorted breakpoints of ``t -> w . delta(t)``."""
    sign = 1.0 if r >= 0 else -1.0
    w, r = w * sign, abs(r)
    a = np.ones_like(w) if norm == "linf" else np.abs(w)
    cap = np.where(w > 0, high, np.where(w < 0, -low, 0.0))
    moving = a > 0
    breaks = np.sort(np.concatenate([[0.0], (cap / np.where(moving, a, 1))[moving]]))
    progress = lambda t: np.sum(np.abs(w) * np.minimum(t * a, cap))  # noqa: E731
    t = breaks[-1]
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        if progress(hi) >= r:  # linear on [lo, hi]
            p_lo, p_hi = progress(lo), progress(hi)
            t = lo + (hi - lo) * (r - p_lo) / max(p_hi - p_lo, 1e-300)
            break
    return np.sign(w) * np.minimum(t * a, cap)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_onto_a_plane_in_a_box_matches_a_float64_reference(norm):
    rng = np.random.default_rng(4)
    n, d = 64, 30
    p = rng.uniform(0, 1, size=(n, d))
    w = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.8)
    r = rng.normal(size=n) * 2.0
    low, high = -p, 1 - p
    got = project_onto_hyperplane(*(tf.constant(v, tf.float32) for v in (w, r, low, high)), norm).numpy()
    ref = np.stack([_reference_step(w[i], r[i], low[i], high[i], norm) for i in range(n)])
    np.testing.assert_allclose(got, ref, atol=2e-5)
    reachable = np.abs(np.sum(w * ref, 1) - r) < 1e-6
    assert reachable.mean() > 0.5  # both cases occur
    np.testing.assert_allclose(np.sum(w * got, 1)[reachable], r[reachable], atol=1e-4)
    assert np.all(got >= low - 1e-6) and np.all(got <= high + 1e-6)
    # Optimality: moving along the plane (v orthogonal to w) inside the box never shortens the step.
    size = lambda v: np.abs(v).max(-1) if norm == "linf" else np.linalg.norm(v, axis=-1)  # noqa: E731
    for _ in range(20):
        v = rng.normal(size=(n, d))
        v -= (np.sum(v * w, 1) / np.maximum(np.sum(w * w, 1), 1e-12))[:, None] * w
        other = ref + 1e-2 * v
        ok = reachable & np.all((other >= low) & (other <= high), 1)
        assert np.all(size(other)[ok] >= size(ref)[ok] - 1e-9)


def test_bounded_fab_returns_the_clean_input_beyond_eps():
    model, x, w, b = linear_problem(seed=5)
    truth, y = true_distance(x, w, b, "linf")
    eps = float(np.median(truth))
    cfg = attacks.AttackConfig(name="fab", eps=eps, steps=30, norm="linf")
    x_adv = cfg(model, x, y, clip=None).numpy()
    broken = model(x_adv).numpy().argmax(1) != y
    np.testing.assert_array_equal(broken, truth * FAB_TOLERANCE + 1e-6 <= eps)
    np.testing.assert_array_equal(x_adv[~broken], x[~broken])
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    with pytest.raises(ValueError, match="target_rank"):
        attacks.AttackConfig(name="pgd", target_rank=2)
    with pytest.raises(ValueError, match="not a minimal-norm"):
        attacks.AttackConfig(name="pgd").minimal(model, x, y)


def test_accuracy_curve_closed_form_and_disagreement():
    d = np.array([0.0, 0.1, 0.3, np.inf])
    np.testing.assert_allclose(accuracy_at(d, [0.0, 0.05, 0.1, 0.2, 0.3, 9.0]),
                               [0.75, 0.75, 0.5, 0.5, 0.25, 0.25])
    rep = curve_report(d, "fab-t", {"0.1": 0.5, "0.3": 0.0}, {"0.1": 0.1, "0.3": 0.3})
    assert rep["at_eps"] == {"0.1": 0.5, "0.3": 0.25}
    assert [x["eps"] for x in rep["disagreements"]] == ["0.3"]  # the curve above the worst case
    assert rep["distances"][-1] is None and rep["found"] == 0.75
    assert rep["median_distance"] == pytest.approx(0.2)
    json.dumps(rep)


@pytest.fixture(scope="module")
def cnn_digits(tmp_path_factory):
    from tfrobust import data, models
    x, y = data.load("digits", "train")
    keras.utils.set_random_seed(0)
    clf = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
    model = models.RobustModel(clf)
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(x[:1000], y[:1000], epochs=8, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.keras"
    model.save(path)
    return path, clf, x[1000:1100], y[1000:1100]


def test_standard_autoattack_and_the_curve_agree_on_a_cnn(cnn_digits, tmp_path):
    path, clf, x, y = cnn_digits
    res = evaluation.evaluate_model(clf, x, y, attacks=["autoattack"], eps="0.05,0.1",
                                    budget=evaluation.Budget(apgd_steps=10, apgd_targets=3, fab_steps=10,
                                                             fab_targets=3, square_queries=50, fmn_steps=50),
                                    sanity=False, progress=False, curve="fmn+fab-t")
    assert list(res["attacks"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert res["settings"]["fab-t"]["targets"] == 3 and res["settings"]["fab-t"]["minimal_norm"]
    acc = res["attacks"]
    for key in ("0.05", "0.1"):
        assert acc["square"][key] <= acc["fab-t"][key] <= acc["apgd-t"][key] <= acc["apgd-ce"][key]
    curve = res["curve"]
    d = np.array([np.inf if v is None else v for v in curve["distances"]])
    # The curve is the share of examples whose distance exceeds eps, and it is monotone.
    assert curve["at_eps"]["0.1"] == pytest.approx((d > 0.1).mean())
    assert np.all(np.diff(curve["accuracy"]) <= 0)
    assert curve["accuracy"][0] == pytest.approx(res["clean_accuracy"])
    # The minimal-norm attacks find a point for nearly everyone, and each one is adversarial.
    assert curve["found"] > 0.9
    # FMN + FAB-T at 50 steps are about as strong as the whole cascade at these eps.
    for key in ("0.05", "0.1"):
        assert curve["at_eps"][key] <= res["worst_case"][key] + 0.1


def test_cli_evaluate_curve(cnn_digits, tmp_path):
    path = cnn_digits[0]
    out, png = tmp_path / "eval.json", tmp_path / "curve.png"
    code = main(["evaluate", "--model", str(path), "--dataset", "digits", "--n", "30", "--attacks", "pgd",
                 "--eps", "0.05,0.1", "--no-sanity", "--curve", "fmn", "--fmn-steps", "30",
                 "--curve-png", str(png), "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert len(res["curve"]["distances"]) == 30 and res["curve"]["attack"] == "fmn"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,needle", [
    (["--curve", "deepfool"], "--curve='deepfool'"),
    (["--curve-png", "x.png"], "--curve-png needs --curve"),
    (["--fab-steps", "0"], "--fab-steps=0"),
])
def test_cli_evaluate_curve_bad_input(cnn_digits, args, needle, capsys):
    code = main(["evaluate", "--model", str(cnn_digits[0]), "--dataset", "digits"] + args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_curve_attacks_come_from_the_registry():
    minimal = {e.name for s in attacks.SPECS if s.minimal for e in s.evaluations}
    assert set(evaluation.MINIMAL_ATTACKS) == minimal == {"fab", "fab-t", "fmn"}
    for name in evaluation.CURVE_ATTACKS + evaluation.CERTIFIED_CURVES + ("fab+fmn", "fab-t+fab+fmn"):
        assert evaluation.check_curve_attack(name) == name
    for bad in ("pgd", "fmn+pgd", "fmn+fmn", "fmn+", ""):
        with pytest.raises(ValueError, match=repr(bad).replace("+", r"\+")):
            evaluation.check_curve_attack(bad)
