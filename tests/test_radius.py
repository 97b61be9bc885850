"""The calibrated ``estimated_radius`` (issue #13): conformal factor, closed form, export, CLI."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust.cli import main
from tfrobust.serving import export

SHAPE = (8, 8, 1)


def binary_linear(seed=0):
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(2)])
    w, b = net.get_weights()
    net.set_weights([w * 0.3, b * 0])
    return net


def test_conformal_factor_is_the_corrected_quantile():
    d = np.arange(1, 20, dtype=float)  # ratios 1..19 against a statistic of 1
    # n = 19, coverage 0.9: floor(20 * 0.1) = 2 -> the 2nd smallest ratio.
    assert export.conformal_factor(d, np.ones(19), 0.9) == 2.0
    assert export.conformal_factor(d, np.ones(19), 0.99) == 1.0  # index 0 -> the smallest
    assert export.conformal_factor([np.inf, 4.0], [1.0, 2.0], 0.5) == 2.0  # unfound = infinitely far
    # Coverage holds on fresh exchangeable data: >= 0.9 on average over many splits.
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(300):
        ratio = rng.lognormal(size=220)
        c = export.conformal_factor(ratio[:200], np.ones(200), 0.9)
        hits.append((ratio[200:] >= c).mean())
    assert np.mean(hits) >= 0.89
    for bad in (0, 1, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="coverage="):
            export.conformal_factor(d, np.ones(19), bad)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_on_a_binary_linear_model_the_first_order_distance_is_exact(norm):
    """With two classes and the box far away, effective_margin is the distance: factor 1."""
    net = binary_linear(seed=1)
    x = np.random.default_rng(2).uniform(0.45, 0.55, (40, *SHAPE)).astype(np.float32)
    cal = export.calibrate_radius(net, x, norm=norm, coverage=0.9, steps=60, statistic="effective_margin")
    assert cal["factor"] == pytest.approx(1.0, rel=2e-3)
    assert cal["n"] == 40 and cal["found"] == 1.0 and cal["calibration_coverage"] >= 0.9
    auto = export.calibrate_radius(net, x, norm=norm, coverage=0.9, steps=60)
    assert auto["n"] == 20 and auto["n_choice"] == 20 and auto["statistic"] in export.RADIUS_STATISTICS


def test_the_tighter_statistic_is_chosen():
    rng = np.random.default_rng(5)
    d = rng.lognormal(size=400)
    proportional, noisy = 3.0 * d, d * rng.lognormal(sigma=1.0, size=400)
    assert export.choose_statistic(d, {"effective_margin": noisy, "margin": proportional}, 0.9) == "margin"
    assert export.choose_statistic(d, {"effective_margin": proportional, "margin": noisy}, 0.9) == "effective_margin"


def test_export_serves_the_calibrated_radius_and_records_it(tmp_path):
    net = binary_linear(seed=3)
    calibration = {"factor": 0.75, "coverage": 0.9, "n": 500, "norm": "linf", "attack": "fmn+fab",
                   "statistic": "effective_margin"}
    path = export.export_saved_model(net, tmp_path / "base", norm="linf", calibration=calibration)
    fn = tf.saved_model.load(path).signatures["robustness"]
    x = np.random.default_rng(4).uniform(0, 1, (6, *SHAPE)).astype(np.float32)
    out = {k: v.numpy() for k, v in fn(inputs=tf.constant(x)).items()}
    np.testing.assert_allclose(out["estimated_radius"], 0.75 * out["effective_margin"], rtol=1e-6)
    meta = json.loads((tmp_path / "base" / "1" / export.METADATA_PATH).read_text())
    assert meta["estimated_radius"]["coverage"] == 0.9 and meta["estimated_radius"]["n"] == 500
    assert "estimated_radius" in meta["signatures"]["robustness"]
    on_margin = export.export_saved_model(net, tmp_path / "base", norm="linf",
                                          calibration={**calibration, "statistic": "margin"})
    robustness = tf.saved_model.load(on_margin).signatures["robustness"]
    out = {k: v.numpy() for k, v in robustness(inputs=tf.constant(x)).items()}
    np.testing.assert_allclose(out["estimated_radius"], 0.75 * out["margin"], rtol=1e-6)
    # Without a calibration there is no radius.
    plain = export.export_saved_model(net, tmp_path / "base", norm="linf")
    assert "estimated_radius" not in tf.saved_model.load(plain).signatures["robustness"].structured_outputs
    for bad, match in (({"factor": -1.0}, "factor=-1.0"), ({"factor": float("nan")}, "factor=nan"),
                       ({"factor": 1.0, "norm": "l2"}, "norm='l2'"),
                       ({"factor": 1.0, "statistic": "logits"}, "statistic='logits'")):
        with pytest.raises(ValueError, match=match):
            export.export_saved_model(net, tmp_path / "bad", norm="linf", calibration=bad)


def test_cli_export_calibrates_on_the_held_out_tail(tmp_path, capsys):
    from tfrobust import data, models
    x, y = data.load("digits", "train")
    model = models.RobustModel(models.linear_classifier((8, 8, 1), 10))
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(x[:800], y[:800], epochs=3, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    code = main(["export", "--model", str(path), "--out", str(tmp_path / "base"), "--norm", "linf",
                 "--calibrate", "digits", "--calibration-n", "40", "--calibration-steps", "20"])
    assert code == 0
    out = capsys.readouterr().out
    assert "(90% coverage on 20 calibration examples; 20 more chose the statistic)" in out
    meta = json.loads((tmp_path / "base" / "1" / export.METADATA_PATH).read_text())
    assert meta["estimated_radius"]["data"] == "digits:train[-40:]" and meta["estimated_radius"]["factor"] > 0
    code = main(["export", "--model", str(path), "--out", str(tmp_path / "b2"), "--coverage", "1.5"])
    assert code == 2 and "--coverage=1.5" in capsys.readouterr().err
