"""The ``certify`` report and verb (issue #21): certified accuracy per radius on a linear model whose
radii are known, resume, and the command line."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from scipy import stats

from tfrobust.evaluation.smoothed import certify_dataset

W = np.array([1.0, -2.0, 0.5, 0.0])
B = 0.3


def linear_binary():
    clf = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    clf.layers[0].set_weights([np.stack([np.zeros(4), W], 1).astype("float32"), np.array([0.0, B], np.float32)])
    return clf


def points(n=12, seed=0):
    x = np.random.default_rng(seed).uniform(size=(n, 4)).astype(np.float32)
    return x, ((x.astype(np.float64) @ W + B) > 0).astype(int)


def test_certified_accuracy_counts_radii_below_the_exact_distance(tmp_path):
    x, y = points()
    y[0] = 1 - y[0]  # one wrong label: never certified correct, at any radius
    sigma, n, alpha = 0.5, 4000, 0.001
    report = certify_dataset(linear_binary(), x, y, sigma=sigma, n0=50, n=n, alpha=alpha, batch_size=2000,
                             radii=[0, 0.1, 0.3, 0.6], chunk=5, progress=False)
    distance = np.abs(x.astype(np.float64) @ W + B) / np.linalg.norm(W)
    radius = np.asarray(report["radius"])
    # The certified radius never exceeds the distance to the boundary, except with probability alpha
    # per example; here it stays below sigma * ndtri(p_A), p_A = Φ(d / σ) exactly: the bound is a lower bound.
    assert np.all(radius <= distance + 1e-9)
    # It is within 6 binomial standard errors of the exact p_A (propagated through σΦ⁻¹) where p_A < 1.
    p = stats.norm.cdf(distance / sigma)
    low = sigma * stats.norm.ppf(np.clip(p - 6 * np.sqrt(p * (1 - p) / n) - 1e-3, 0.5, 1))
    assert np.all((radius >= low - 1e-9) | (radius == 0))
    correct = np.asarray(report["prediction"]) == y
    assert not correct[0]
    for key, r in (("0", 0.0), ("0.1", 0.1), ("0.3", 0.3), ("0.6", 0.6)):
        assert report["certified_accuracy"][key] == pytest.approx(np.mean(correct & (radius >= r)))
    values = list(report["certified_accuracy"].values())
    assert values == sorted(values, reverse=True) and report["accuracy"] == values[0]
    assert report["abstain_rate"] == np.mean(np.asarray(report["prediction"]) == -1)
    assert report["seconds_per_example"] > 0 and report["examples"] == 12


def test_resume_gives_the_same_report_and_refuses_other_settings(tmp_path):
    x, y = points(9)
    kw = dict(sigma=0.25, n0=20, n=500, alpha=0.01, batch_size=500, chunk=4, progress=False)
    full = certify_dataset(linear_binary(), x, y, resume=tmp_path / "r", **kw)
    (tmp_path / "r" / "chunk-000001.npz").unlink()
    again = certify_dataset(linear_binary(), x, y, resume=tmp_path / "r", **kw)
    assert again["examples_computed_this_run"] == 4
    assert again["radius"] == full["radius"] and again["certified_accuracy"] == full["certified_accuracy"]
    with pytest.raises(ValueError, match="holds another evaluation: .*sigma"):
        certify_dataset(linear_binary(), x, y, resume=tmp_path / "r", **{**kw, "sigma": 0.5})
    with pytest.raises(ValueError, match="radii"):
        certify_dataset(linear_binary(), x, y, radii=[-1.0], **kw)


def test_certify_verb_writes_its_table_json_and_curve(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.save(tmp_path / "m.keras")
    base = [sys.executable, "-m", "tfrobust", "certify", "--model", str(tmp_path / "m.keras"), "--dataset",
            "synthetic", "--examples", "6", "--sigma", "0.25", "--n", "200", "--n0", "20"]
    done = subprocess.run(base + ["--json", str(tmp_path / "c.json"), "--png", str(tmp_path / "c.png")],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "c.json").read_text())
    assert list(report["certified_accuracy"]) == ["0", "0.25", "0.5", "0.75", "1", "1.25", "1.5", "1.75", "2"]
    assert report["commit"] and report["hardware"] and report["n"] == 200
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert "certified " in done.stdout
    bad = subprocess.run(base + ["--alpha", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--alpha=2.0" in bad.stderr
