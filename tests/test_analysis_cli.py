"""``tfrobust surface`` and ``tfrobust indicator``, and the figures behind them."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust import cli, data, losses, models
from tfrobust.analysis import margins, plots, saliency, spectra, surface


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    x, y = data.load("digits", "train", n=256)
    model = models.RobustModel(models.mnist_cnn(input_shape=(8, 8, 1), width=0.25))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("models") / "digits.keras"
    model.save(path)
    return str(path), model


def test_surface_cli_writes_png_and_the_grid(saved_model, tmp_path, capsys):
    path, model = saved_model
    out = tmp_path / "s.png"
    rc = cli.main(["surface", "--model", path, "--dataset", "digits", "--index", "3", "--direction", "cw",
                   "--steps", "9", "--eps", "0.2", "--out", str(out)])
    assert rc == 0
    assert out.stat().st_size > 10_000
    grid = json.loads((tmp_path / "s.json").read_text())
    x, y = data.load("digits", "test", n=4)
    d = losses.decision_margin(model(x[3:4]), y[3:4]).numpy()[0]
    assert grid["label"] == int(y[3]) and grid["direction"] == "cw" and grid["space"] == "input"
    assert np.asarray(grid["decision"]).shape == (9, 9)
    np.testing.assert_allclose(grid["decision"][4][4], d, rtol=1e-5)
    assert len(grid["trajectory"]) == 11 and grid["meta"]["index"] == 3
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["d(0,0)"] == pytest.approx(d, rel=1e-5)


def test_surface_cli_parameter_space(saved_model, tmp_path):
    path, model = saved_model
    out = tmp_path / "p.png"
    rc = cli.main(["surface", "--model", path, "--dataset", "digits", "--index", "0", "--space", "parameter",
                   "--steps", "5", "--n", "64", "--out", str(out)])
    assert rc == 0 and out.exists()
    grid = json.loads((tmp_path / "p.json").read_text())
    x, y = data.load("digits", "test", n=64)
    np.testing.assert_allclose(grid["loss"][2][2], np.mean(losses.cross_entropy(model(x), y)), rtol=1e-4)
    assert grid["accuracy"] is not None and grid["norm"] == "filter"


@pytest.mark.parametrize("argv, bad", [
    (["--direction", "sideways"], "'sideways'"),
    (["--space", "weights"], "'weights'"),
    (["--space", "parameter", "--direction", "ce"], "'ce'"),
    (["--eps", "-1"], "-1"),
    (["--out", "x.jpg"], "x.jpg"),
    (["--index", "360"], "--index=360"),
])
def test_surface_cli_rejects_bad_values_in_one_line(saved_model, capsys, argv, bad):
    path, _ = saved_model
    args = ["surface", "--model", path, "--dataset", "digits", "--index", "0", "--out", "unused.png"]
    assert cli.main(args + argv) == 2  # argparse keeps the last --index
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad in err and err.startswith("tfrobust surface: error:")


def test_indicator_cli_writes_the_json(saved_model, tmp_path, capsys):
    path, model = saved_model
    out = tmp_path / "ind.json"
    rc = cli.main(["indicator", "--model", path, "--dataset", "digits", "--n", "20", "--k", "6",
                   "--batch-size", "10", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["n"] == 20 and report["dataset"] == "digits"
    x, y = data.load("digits", "test", n=20)
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        d = losses.decision_margin(model(xt), y)
    grad = tape.gradient(d, xt).numpy().reshape(20, -1)
    np.testing.assert_allclose(report["jacobian"]["l1"]["mean"], np.abs(grad).sum(1).mean(), rtol=1e-4)
    np.testing.assert_allclose(report["margin"]["mean"], d.numpy().mean(), rtol=1e-4)
    assert report["clean_accuracy"] == pytest.approx(float(np.mean(d.numpy() > 0)))
    assert set(report["hessian"]) == {"decision", "loss"}
    assert report["hessian"]["decision"]["spectral_norm"]["mean"] == 0.0  # ReLU network: d is piecewise linear
    assert report["hessian"]["loss"]["spectral_norm"]["mean"] > 0.0
    assert len(report["spectra"]) == 4 and report["settings"]["lanczos_steps"] == 6
    assert "Jacobian of d" in capsys.readouterr().out
    assert cli.main(["indicator", "--model", path, "--dataset", "digits", "--n", "0", "--json", str(out)]) == 2
    assert cli.main(["indicator", "--model", str(tmp_path / "missing.keras"), "--dataset", "digits",
                     "--json", str(out)]) == 2
    assert "missing.keras" in capsys.readouterr().err


def test_figures_render(saved_model, tmp_path):
    _, model = saved_model
    x, y = data.load("digits", "test", n=6)
    s = surface.input_surface(model, x[0], y[0], direction="ce", steps=7, eps=0.2, attack_steps=3)
    fig = plots.plot_surface(s)
    fig.savefig(tmp_path / "a.png")
    grid = {"m1": {"ce": s, "random": surface.input_surface(model, x[0], y[0], steps=7, trajectory=False)},
            "m2": {"ce": s}}
    for view in ("3d", "2d"):
        plots.plot_surface_grid(grid, view=view).savefig(tmp_path / f"g{view}.png")
    views = {name: {"spectra": spectra.weight_spectra(model), "margins": margins.sample_margins(model, x, y)}
             for name in ("a", "b")}
    plots.plot_regularization(views).savefig(tmp_path / "r.png")
    image = plots.surface_image(model, x, y, steps=7, eps=0.2)
    assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 4
    assert image[..., :3].std() > 10  # not a blank canvas
    with tf.summary.create_file_writer(str(tmp_path / "tb")).as_default():
        assert tf.summary.image("surface", image, step=0)
    with pytest.raises(ValueError, match="'height'"):
        plots.plot_surface_grid(grid, kind="height")


def test_saliency_is_the_absolute_input_gradient_of_d(saved_model, tmp_path):
    _, model = saved_model
    x, y = data.load("digits", "test", n=3)
    maps = saliency.saliency_maps(model, x, y, method="saliency")
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        d = losses.decision_margin(model(xt), y)
    expected = np.abs(tape.gradient(d, xt).numpy()).max(-1)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    smooth = saliency.saliency_maps(model, x, y, method="smoothgrad", smooth_samples=4, smooth_noise=0.1)
    assert smooth.shape == maps.shape and not np.allclose(smooth, maps)
    logit = saliency.saliency_maps(model, x, y, score="logit")
    assert not np.allclose(logit, maps)
    fig = saliency.plot_saliency({"a": model, "b": model}, x, y, smooth_samples=4)
    fig.savefig(tmp_path / "s.png")
    with pytest.raises(ValueError, match="'gradcam'"):
        saliency.saliency_maps(model, x, y, method="gradcam")
