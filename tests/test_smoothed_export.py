"""The served ``smoothed`` signature (issue #21): Cohen et al.'s CERTIFY inside the SavedModel,
equal to the library's with the same seed, its metadata, the REST server and the export flags."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import smoothing
from tfrobust.serving import export
from tfrobust.smoothing.stats import clopper_pearson_lower, clopper_pearson_lower_tf


def test_in_graph_clopper_pearson_equals_the_scipy_bound():
    n = 1000
    k = np.array([0, 1, 2, 10, 499, 500, 501, 900, 999, 1000])
    for alpha in (0.001, 0.05):
        ours = clopper_pearson_lower_tf(tf.constant(k), n, alpha).numpy()
        ref = clopper_pearson_lower(k, np.int64(n), alpha)
        # 60 halvings of [0, 1]: within 2^-60 below the exact root; betainc is accurate to ~1e-14.
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
        assert np.all(ours <= ref + 1e-13)


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(4)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    base = tmp_path_factory.mktemp("smoothed")
    fixed = export.export_saved_model(model, base / "fixed", smoothing=export.smoothing_settings(
        0.25, n=400, alpha=0.01, n0=40, batch_size=300, seed=7))
    fresh = export.export_saved_model(model, base / "fresh", smoothing=export.smoothing_settings(0.25, n=400))
    x = np.random.default_rng(0).uniform(size=(6, 6, 6, 1)).astype("float32")
    return model, fixed, fresh, x


def test_served_smoothed_signature_is_the_library_certify(exported):
    model, fixed, _, x = exported
    served = tf.saved_model.load(fixed).signatures["smoothed"](inputs=tf.constant(x))
    classes, radii, p_lower = smoothing.certify(model, x, 0.25, 40, 400, 0.01, 300, 7)
    np.testing.assert_array_equal(served["smoothed_class"].numpy(), classes)
    np.testing.assert_allclose(served["certified_radius_l2"].numpy(), radii, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(served["p_a_lower"].numpy(), p_lower, rtol=1e-6)
    meta = json.loads((Path(fixed) / export.METADATA_PATH).read_text())
    assert meta["signatures"]["smoothed"] == list(export.SMOOTHED_OUTPUTS)
    assert {k: meta["smoothed"][k] for k in ("sigma", "n", "n0", "alpha", "seed")} == {
        "sigma": 0.25, "n": 400, "n0": 40, "alpha": 0.01, "seed": 7}


def test_fresh_noise_per_request_still_certifies_within_the_bounds(exported):
    _, _, fresh, x = exported
    signature = tf.saved_model.load(fresh).signatures["smoothed"]
    a, b = (signature(inputs=tf.constant(x)) for _ in range(2))
    for out in (a, b):
        p = out["p_a_lower"].numpy()
        assert np.all((0 <= p) & (p <= 1)) and np.all(out["certified_radius_l2"].numpy() >= 0)
        abstained = out["smoothed_class"].numpy() == -1
        np.testing.assert_array_equal(abstained, p < 0.5)
        # The largest radius n = 400 draws can prove: σ Φ⁻¹(alpha^(1/n)).
        assert np.all(out["certified_radius_l2"].numpy() <= 0.25 * tf.math.ndtri(0.001 ** (1 / 400)).numpy() + 1e-6)
    assert not np.array_equal(a["p_a_lower"].numpy(), b["p_a_lower"].numpy())  # two draws of the noise


def test_rest_server_serves_the_smoothed_signature_and_the_client_shows_it(exported, tmp_path, capsys):
    from tfrobust.serving import server
    from tfrobust import cli
    from tfrobust.serving.client import RestClient
    model, fixed, _, x = exported
    np.save(tmp_path / "x.npy", x[:3])
    with server.start_server(server.ServerConfig({"s": str(Path(fixed).parent)}, port=0)) as running:
        assert cli.main(["client", "--url", running.url, "--model", "s", "--npy", str(tmp_path / "x.npy"),
                         "--smoothed"]) == 0
        table = capsys.readouterr().out.splitlines()
        client = RestClient(running.url, "s")
        try:
            out = client.predict(x[:3], signature_name="smoothed")
            bad = None
            try:
                client.predict(x[:1] + 2.0, signature_name="smoothed")
            except Exception as err:  # noqa: BLE001  (the client raises its HTTP error)
                bad = err
        finally:
            client.close()
    classes, radii, _ = smoothing.certify(model, x[:3], 0.25, 40, 400, 0.01, 300, 7)
    np.testing.assert_array_equal(np.asarray(out["smoothed_class"]), classes)
    np.testing.assert_allclose(np.asarray(out["certified_radius_l2"]), radii, rtol=1e-6, atol=1e-7)
    assert bad is not None and "must lie in [0, 1]" in str(bad)  # refused, as for every signature
    assert table[0].split()[-2:] == ["smooth", "l2_radius"] and len(table) == 4
    for line, c, r in zip(table[1:], classes, radii):
        assert line.split()[-2:] == ["abst" if c < 0 else str(c), f"{r:.4f}"]


def test_export_flags_and_bad_settings(tmp_path, capsys):
    from tfrobust import cli
    _model().save(tmp_path / "m.keras")
    assert cli.main(["export", "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "b"),
                     "--smoothing", "0.5", "--samples", "200", "--alpha", "0.01"]) == 0
    meta = json.loads((tmp_path / "b" / "1" / export.METADATA_PATH).read_text())
    assert meta["smoothed"]["sigma"] == 0.5 and meta["smoothed"]["n"] == 200 and meta["smoothed"]["seed"] is None
    assert cli.main(["export", "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "b"),
                     "--smoothing", "0.5", "--alpha", "1.5"]) == 2
    assert "alpha=1.5" in capsys.readouterr().err
    for kwargs, match in (({"sigma": 0}, "sigma"), ({"sigma": 0.5, "n": 0}, "n=0"),
                          ({"sigma": 0.5, "seed": -1}, "seed=-1")):
        with pytest.raises(ValueError, match=match):
            export.smoothing_settings(**kwargs)
