"""RobustnessMonitor: event files read back and checked against independent computations."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, losses, models
from tfrobust import objectives as O
from tfrobust.attacks import AttackConfig
from tfrobust.callbacks import CLEAN_ACCURACY_KEY, RobustnessMonitor, robust_accuracy_key


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 6, 6, 1)).astype("float32")
    w = rng.normal(size=(36, 3)).astype("float32")
    return x, (x.reshape(n, -1) @ w).argmax(-1)


def read_events(log_dir):
    """{tag: {step: value}} from every event file under log_dir, via TensorFlow's own reader."""
    out = {}
    for path in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return out


ATTACKS = {
    "none": AttackConfig(name="fgsm", eps=0.0),
    "fgsm": AttackConfig(name="fgsm", eps=0.1),
    "bim": AttackConfig(name="bim", eps=0.1, steps=3),
}


def test_monitor_logs_values_that_match_independent_computations(tmp_path):
    x, y = data(96)
    x_val, y_val = data(50, seed=1)
    classifier = models.linear_classifier((6, 6, 1), 3)
    model = models.RobustModel(classifier, O.CrossEntropy() + O.DecisionJacobian(c=0.01))
    model.compile(optimizer=keras.optimizers.Adam(0.05), metrics=["accuracy"])
    monitor = RobustnessMonitor(x_val, y_val, ATTACKS, log_dir=str(tmp_path), every_n_epochs=2,
                                batch_size=16)
    hist = model.fit(x, y, epochs=4, batch_size=32, validation_data=(x_val, y_val), verbose=0,
                     callbacks=[monitor]).history
    events = read_events(tmp_path)

    # Logged at the first epoch, then at epochs 1 and 3 only (every 2 epochs, epoch index as step).
    assert set(events["robustness/clean_accuracy"]) == {0, 1, 3}
    assert {"robustness/accuracy/none", "robustness/accuracy/fgsm", "robustness/accuracy/bim",
            "robustness/margin", "robustness/margin_mean", "robustness/grad_norm",
            "robustness/grad_norm_mean", "terms/loss", "terms/ce", "terms/jacobian_penalty",
            "terms/val_ce", "terms/val_jacobian_penalty"} <= set(events)

    # Final values against independent computations with the trained weights.
    logits = classifier(x_val).numpy()
    clean = np.mean(logits.argmax(-1) == y_val)
    assert events["robustness/clean_accuracy"][3] == pytest.approx(clean, abs=1e-7)
    assert events["robustness/accuracy/none"][3] == pytest.approx(clean, abs=1e-7)  # eps = 0
    for name, attack in (("fgsm", attacks.fgsm), ("bim", attacks.bim)):
        x_adv = attack(classifier, x_val, y_val, eps=0.1, **({"steps": 3} if name == "bim" else {}))
        robust = np.mean(classifier(x_adv).numpy().argmax(-1) == y_val)
        assert events[f"robustness/accuracy/{name}"][3] == pytest.approx(robust, abs=1e-7)
    assert events["robustness/accuracy/bim"][3] < clean  # the attack does something

    # Margins, and the gradient norm in closed form: ∇_x d = w_y - w_j for a linear model, L1 dual norm.
    margin = losses.decision_margin(tf.constant(logits), y_val).numpy()
    assert events["robustness/margin_mean"][3] == pytest.approx(margin.mean(), rel=1e-5)
    w = classifier.layers[-1].kernel.numpy()
    j = np.where(np.eye(3)[y_val] > 0, -np.inf, logits).argmax(-1)
    grad_l1 = np.abs(w[:, y_val] - w[:, j]).sum(0)
    assert events["robustness/grad_norm_mean"][3] == pytest.approx(grad_l1.mean(), rel=1e-5)
    hist_counts = events["robustness/grad_norm"][3]  # [buckets, (left, right, count)]
    assert hist_counts[:, 2].sum() == pytest.approx(len(y_val))
    assert hist_counts[0, 0] == pytest.approx(grad_l1.min(), rel=1e-5)

    # The terms are the epoch logs.
    for key in ("loss", "ce", "jacobian_penalty", "val_ce"):
        assert events[f"terms/{key}"][3] == pytest.approx(hist[key][3], rel=1e-6)
    assert [h["epoch"] for h in monitor.history] == [0, 1, 3]


def test_evaluate_on_a_plain_keras_model_and_l2_norm(tmp_path):
    x_val, y_val = data(20, seed=2)
    classifier = models.linear_classifier((6, 6, 1), 3)
    monitor = RobustnessMonitor(x_val, keras.utils.to_categorical(y_val, 3),
                                {"pgd_l2": AttackConfig(name="pgd", eps=0.5, steps=5, norm="l2")},
                                log_dir=str(tmp_path), batch_size=7)
    res = monitor.evaluate(classifier)
    assert monitor.norm == "l2"
    logits = classifier(x_val).numpy()
    j = np.where(np.eye(3)[y_val] > 0, -np.inf, logits).argmax(-1)
    w = classifier.layers[-1].kernel.numpy()
    np.testing.assert_allclose(res["grad_norm"], np.sqrt(((w[:, y_val] - w[:, j]) ** 2).sum(0)), rtol=1e-5)
    assert res["clean_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y_val))
    assert 0 <= res["robust_accuracy"]["pgd_l2"] <= res["clean_accuracy"]


@pytest.mark.parametrize("kwargs,match", [
    ({"every_n_epochs": 0}, "every_n_epochs=0"),
    ({"batch_size": -3}, "batch_size=-3"),
    ({"norm": "l1"}, "'l1'"),
    ({"attacks": {"x": 3}}, "attack 'x'=3"),
    ({"attacks": {"x": {"eps": -1.0}}}, "eps=-1.0"),
])
def test_bad_monitor_arguments(tmp_path, kwargs, match):
    x, y = data(4)
    args = {"attacks": ATTACKS, "log_dir": str(tmp_path), **kwargs}
    with pytest.raises(ValueError, match=match):
        RobustnessMonitor(x, y, **args)


def test_monitor_logs_a_decision_surface_image(tmp_path):
    x_val, y_val = data(16, seed=3)
    model = models.RobustModel(models.linear_classifier((6, 6, 1), 3))
    model.compile(optimizer="sgd")
    monitor = RobustnessMonitor(x_val, y_val, {"fgsm": AttackConfig(name="fgsm", eps=0.1)},
                                log_dir=str(tmp_path), surface_eps=0.1)
    model.fit(x_val, y_val, epochs=1, verbose=0, callbacks=[monitor])
    images = []
    for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            images += [v for v in event.summary.value if v.tag == "robustness/decision_surface"]
    assert len(images) == 1
    width, height, png = images[0].tensor.string_val  # TensorBoard's image summary layout
    pixels = tf.io.decode_png(png)
    assert pixels.shape[:2] == (int(height), int(width)) and pixels.shape[0] > 100
    assert float(tf.math.reduce_std(tf.cast(pixels, tf.float32))) > 5  # a picture, not a blank
    with pytest.raises(ValueError, match="surface_eps=0"):
        RobustnessMonitor(x_val, y_val, {}, log_dir=str(tmp_path), surface_eps=0)


class WeightsEachEpoch(keras.callbacks.Callback):
    """Records the classifier's weights at every epoch end."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.classifier.get_weights()])


def balanced(n, seed=0):
    """Like data() but with labels of a centred linear map, so that no class dominates."""
    x = np.random.default_rng(seed).uniform(size=(n, 6, 6, 1)).astype("float32")
    w = np.random.default_rng(42).normal(size=(36, 3)).astype("float32")
    return x, ((x.reshape(n, -1) - 0.5) @ w).argmax(-1)


def _wobbly_fit(tmp_path, callbacks, epochs=6, every_n_epochs=1):
    """A linear model with a too-large SGD rate: its FGSM accuracy goes up and down
    (0.375, 0.325, 0.3, 0.425, 0.375, 0.375 over 6 epochs)."""
    x, y = balanced(96)
    x_val, y_val = balanced(40, seed=1)
    keras.utils.set_random_seed(0)
    model = models.RobustModel(models.linear_classifier((6, 6, 1), 3))
    model.compile(optimizer=keras.optimizers.SGD(3.0))
    monitor = RobustnessMonitor(x_val, y_val, {"fgsm": AttackConfig(name="fgsm", eps=0.02)},
                                log_dir=str(tmp_path / "tb"), every_n_epochs=every_n_epochs)
    hist = model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0,
                     callbacks=[monitor, *callbacks]).history
    return model, monitor, hist


def test_monitor_values_are_in_the_logs_and_keep_the_best_robust_epoch(tmp_path):
    key = robust_accuracy_key("fgsm")
    assert key == "val_robust_accuracy_fgsm" and CLEAN_ACCURACY_KEY == "val_clean_accuracy"
    record = WeightsEachEpoch()
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor=key, mode="max",
                                           save_best_only=True)
    model, monitor, hist = _wobbly_fit(tmp_path, [best, record])
    # History has what the monitor measured, one value per epoch, under the documented names.
    assert hist[key] == [h["robust_accuracy"]["fgsm"] for h in monitor.history]
    assert hist[CLEAN_ACCURACY_KEY] == [h["clean_accuracy"] for h in monitor.history]
    assert len(hist[key]) == 6 and len(set(hist[key])) > 2
    # The checkpoint holds the weights of the first epoch with the largest robust accuracy,
    # and that is not the last epoch (so the test tells "best" from "last").
    best_epoch = int(np.argmax(hist[key]))
    assert best_epoch < 5 and max(hist[key][best_epoch + 1:]) < hist[key][best_epoch]
    saved = keras.models.load_model(tmp_path / "best.keras")
    for a, b in zip(saved.classifier.get_weights(), record.weights[best_epoch]):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(record.weights[best_epoch], record.weights[-1]))
    # What the monitor logged is the accuracy of those weights.
    clf = saved.classifier
    x_val, y_val = balanced(40, seed=1)
    x_adv = attacks.fgsm(clf, x_val, y_val, eps=0.02)
    assert np.mean(clf(x_adv).numpy().argmax(-1) == y_val) == pytest.approx(hist[key][best_epoch], abs=1e-7)


def test_early_stopping_on_robust_accuracy_stops(tmp_path):
    key = robust_accuracy_key("fgsm")
    _, _, full = _wobbly_fit(tmp_path / "full", [])
    stop = keras.callbacks.EarlyStopping(monitor=key, mode="max", patience=1)
    _, _, hist = _wobbly_fit(tmp_path / "stopped", [stop])
    first_worse = next(e for e in range(1, 6) if full[key][e] <= max(full[key][:e]))
    assert len(hist[key]) == first_worse + 1 < 6
    assert hist[key] == full[key][:first_worse + 1]


def test_unmeasured_epochs_carry_the_last_value(tmp_path):
    """every_n_epochs=2: measured at the first epoch (0), then at 1, 3 and 5; epochs 2 and 4 carry
    the value before them. Keras' own ModelCheckpoint keeps the best measured epoch, which is not
    the first (a placeholder NaN at epoch 0 became Keras' best and was never beaten: it kept
    epoch 0), and EarlyStopping stops on the measured values."""
    key = robust_accuracy_key("fgsm")
    record = WeightsEachEpoch()
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor=key, mode="max",
                                           save_best_only=True)
    _, monitor, hist = _wobbly_fit(tmp_path, [best, record], epochs=6, every_n_epochs=2)
    measured = [h["robust_accuracy"]["fgsm"] for h in monitor.history]
    assert [h["epoch"] for h in monitor.history] == [0, 1, 3, 5]
    assert hist[key] == [measured[0], measured[1], measured[1], measured[2], measured[2], measured[3]]
    best_epoch = int(np.argmax(hist[key]))  # the first maximum, always a measured epoch
    assert best_epoch > 0, hist[key]  # the case a first-epoch NaN got wrong
    saved = keras.models.load_model(tmp_path / "best.keras")
    for a, b in zip(saved.classifier.get_weights(), record.weights[best_epoch]):
        np.testing.assert_array_equal(a, b)
    stop = keras.callbacks.EarlyStopping(monitor=key, mode="max", patience=2)
    _, _, stopped = _wobbly_fit(tmp_path / "stopped", [stop], epochs=6, every_n_epochs=2)
    best_so_far, wait, last = None, 0, 5  # Keras' rule: stop after `patience` epochs without a new best
    for epoch, value in enumerate(hist[key]):
        best_so_far, wait = (value, 0) if best_so_far is None or value > best_so_far else (best_so_far, wait + 1)
        if wait >= 2:
            last = epoch
            break
    assert stopped[key] == hist[key][:last + 1]
