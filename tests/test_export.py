"""Tests of tfrobust.serving.export: signatures, values, versions, atomicity, CLI."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrobust.serving import export

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 8, 1)


def conv_net(dtype="float32", seed=0):
    """A tiny conv classifier (no cross-example coupling) in the given dtype."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(SHAPE, dtype=dtype),
        keras.layers.Conv2D(4, 3, activation="relu", dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(16, activation="tanh", dtype=dtype),
        keras.layers.Dense(10, dtype=dtype),
    ])


def linear_net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(10)])


def images(n=5, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, *SHAPE)).astype(np.float32)


def subprocess_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A conv net exported twice (linf then l2) under one base path."""
    base = tmp_path_factory.mktemp("export") / "model"
    model = conv_net()
    v1 = export.export_saved_model(model, base, norm="linf")
    v2 = export.export_saved_model(model, base, norm="l2")
    return model, base, {"linf": v1, "l2": v2}


def float64_reference(model32, x, norm):
    """Margin and dual gradient norm computed in float64 with the same weights."""
    model64 = conv_net("float64")
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
    x64 = tf.constant(x, tf.float64)
    logits = model64(x64).numpy()
    order = np.argsort(-logits, axis=1)
    top1, top2 = order[:, 0], order[:, 1]
    with tf.GradientTape() as tape:
        tape.watch(x64)
        z = model64(x64)
        margin = (tf.gather(z, top1, axis=1, batch_dims=1) - tf.gather(z, top2, axis=1, batch_dims=1))
    grad = tape.gradient(margin, x64).numpy().reshape(len(x), -1)
    dual = np.abs(grad).sum(1) if norm == "linf" else np.sqrt((grad ** 2).sum(1))
    return logits, top1, margin.numpy(), dual


# -- layout and versions ---------------------------------------------------------------


def test_layout_is_tf_serving_versions(exported):
    _, base, paths = exported
    assert paths == {"linf": str(base / "1"), "l2": str(base / "2")}
    assert export.list_versions(base) == [1, 2]
    assert export.next_version(base) == 3
    for path in paths.values():
        assert (Path(path) / "saved_model.pb").is_file()
        assert (Path(path) / "variables").is_dir()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # no temporary left behind
    meta = json.loads((base / "1" / export.METADATA_PATH).read_text())
    assert meta["norm"] == "linf" and meta["dual_norm"] == "l1"
    assert meta["input_shape"] == [None, *SHAPE] and meta["num_classes"] == 10


def test_version_folder_is_readable_by_others(exported):
    _, base, _ = exported
    mode = (base / "1").stat().st_mode
    assert mode & 0o055 == 0o055 & ~_umask()  # not the 0700 of a temporary folder


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_explicit_version_and_collision(tmp_path):
    model = linear_net()
    assert export.export_saved_model(model, tmp_path, version=7).endswith("/7")
    assert export.next_version(tmp_path) == 8
    with pytest.raises(ValueError, match="version 7 already exists"):
        export.export_saved_model(model, tmp_path, version=7)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="version"):
            export.export_saved_model(model, tmp_path, version=bad)
    assert export.list_versions(tmp_path) == [7]


def test_non_integer_folders_are_not_versions(tmp_path):
    for name in ("3", "10", ".tmp-export-v4-pid1-x", "latest", "2a"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    assert export.list_versions(tmp_path) == [3, 10]
    assert export.next_version(tmp_path) == 11
    assert export.next_version(tmp_path / "missing") == 1


def test_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="norm"):
        export.export_saved_model(linear_net(), tmp_path, norm="l1")
    softmax = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                                keras.layers.Dense(10, activation="softmax")])
    with pytest.raises(ValueError, match="probabilities"):
        export.export_saved_model(softmax, tmp_path)
    with pytest.raises(ValueError, match="input_shape"):
        export.export_saved_model(linear_net(), tmp_path, input_shape=(8, 0, 1))
    assert export.list_versions(tmp_path) == []


# -- signatures ------------------------------------------------------------------------


def _saved_model_cli():
    script = Path(sys.executable).with_name("saved_model_cli")
    if script.exists():
        return [str(script)]
    found = shutil.which("saved_model_cli")
    return [found] if found else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def _signature_blocks(text):
    blocks = {}
    for match in re.finditer(r"signature_def\['(\w+)'\]:\n(.*?)(?=\nsignature_def\[|\nThe MetaGraph|\Z)",
                             text, re.S):
        tensors = {}
        for t in re.finditer(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))",
                             match.group(2)):
            tensors[(t.group(1), t.group(2))] = (t.group(3), t.group(4))
        blocks[match.group(1)] = tensors
    return blocks


def test_saved_model_cli_lists_both_signatures(exported):
    _, _, paths = exported
    out = subprocess.run([*_saved_model_cli(), "show", "--dir", paths["linf"], "--all"],
                         capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    blocks = _signature_blocks(out.stdout)
    assert {"serving_default", "robustness"} <= set(blocks)
    image = ("DT_FLOAT", "(-1, 8, 8, 1)")
    per_class = ("DT_FLOAT", "(-1, 10)")
    per_example = ("DT_FLOAT", "(-1)")
    assert blocks["serving_default"] == {
        ("inputs", "inputs"): image,
        ("outputs", "logits"): per_class, ("outputs", "probabilities"): per_class}
    assert blocks["robustness"] == {
        ("inputs", "inputs"): image,
        ("outputs", "logits"): per_class, ("outputs", "probabilities"): per_class,
        ("outputs", "predicted_class"): ("DT_INT64", "(-1)"),
        ("outputs", "margin"): per_example, ("outputs", "grad_norm"): per_example,
        ("outputs", "effective_margin"): per_example}
    assert "Method name is: tensorflow/serving/predict" in out.stdout


# -- values ------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_reloaded_values_match_keras_and_float64(exported, norm):
    model, _, paths = exported
    loaded = tf.saved_model.load(paths[norm])
    x = images(6)
    default = {k: v.numpy() for k, v in loaded.signatures["serving_default"](inputs=tf.constant(x)).items()}
    robust = {k: v.numpy() for k, v in loaded.signatures["robustness"](inputs=tf.constant(x)).items()}
    keras_logits = model(x).numpy()
    eager = {k: v.numpy() for k, v in export.robustness_outputs(model, x, norm).items()}

    np.testing.assert_allclose(default["logits"], keras_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(default["probabilities"], tf.nn.softmax(keras_logits).numpy(),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(robust["logits"], keras_logits, rtol=1e-5, atol=1e-6)
    for key in export.ROBUSTNESS_OUTPUTS:
        np.testing.assert_allclose(robust[key], eager[key], rtol=1e-5, atol=1e-6, err_msg=key)

    logits64, top1, margin64, dual64 = float64_reference(model, x, norm)
    np.testing.assert_array_equal(robust["predicted_class"], top1)
    np.testing.assert_allclose(robust["logits"], logits64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(robust["margin"], margin64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(robust["grad_norm"], dual64, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(robust["effective_margin"], margin64 / dual64, rtol=2e-4)
    assert robust["predicted_class"].dtype == np.int64
    assert robust["margin"].shape == robust["grad_norm"].shape == (6,)
    assert (robust["margin"] >= 0).all()


def test_linf_and_l2_exports_differ_only_in_grad_norm(exported):
    _, _, paths = exported
    x = tf.constant(images(4))
    a = loaded_outputs(paths["linf"], x)
    b = loaded_outputs(paths["l2"], x)
    np.testing.assert_allclose(a["margin"], b["margin"], rtol=1e-6)
    assert (a["grad_norm"] > b["grad_norm"]).all()  # ||g||_1 >= ||g||_2, strictly here


def loaded_outputs(path, x, signature="robustness"):
    loaded = tf.saved_model.load(path)
    return {k: v.numpy() for k, v in loaded.signatures[signature](inputs=x).items()}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_closed_form(tmp_path, norm):
    """For z = Wx + b the margin's gradient is W[:, top1] - W[:, top2]."""
    model = linear_net(seed=3)
    path = export.export_saved_model(model, tmp_path, norm=norm)
    x = images(5, seed=4)
    out = loaded_outputs(path, tf.constant(x))
    w, b = (v.astype(np.float64) for v in model.get_weights())
    z = x.reshape(5, -1).astype(np.float64) @ w + b
    order = np.argsort(-z, axis=1)
    g = w[:, order[:, 0]].T - w[:, order[:, 1]].T
    dual = np.abs(g).sum(1) if norm == "linf" else np.linalg.norm(g, axis=1)
    margin = z[np.arange(5), order[:, 0]] - z[np.arange(5), order[:, 1]]
    np.testing.assert_allclose(out["margin"], margin, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["grad_norm"], dual, rtol=1e-5)
    np.testing.assert_allclose(out["effective_margin"], margin / dual, rtol=1e-4, atol=1e-6)


def test_robustness_is_per_example(exported):
    """A batch gives each example the values it gets alone (no cross-example coupling)."""
    _, _, paths = exported
    x = images(5, seed=7)
    fn = tf.saved_model.load(paths["l2"]).signatures["robustness"]
    batch = {k: v.numpy() for k, v in fn(inputs=tf.constant(x)).items()}
    for i in range(5):
        single = {k: v.numpy() for k, v in fn(inputs=tf.constant(x[i:i + 1])).items()}
        for key in ("margin", "grad_norm", "effective_margin"):
            np.testing.assert_allclose(batch[key][i], single[key][0], rtol=1e-4, atol=1e-6)


def test_flat_model_gives_finite_effective_margin():
    """A model whose margin does not depend on x: grad_norm 0, effective margin finite."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                              keras.layers.Dense(10, kernel_initializer="zeros",
                                                 bias_initializer="random_normal")])
    out = {k: v.numpy() for k, v in export.robustness_outputs(model, images(3), "linf").items()}
    np.testing.assert_array_equal(out["grad_norm"], 0.0)
    assert np.isfinite(out["effective_margin"]).all() and (out["effective_margin"] > 0).all()


def test_robust_model_wrapper_exports(tmp_path):
    models = pytest.importorskip("tfrobust.models")
    wrapped = models.RobustModel(conv_net())
    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    loaded = models.load_model(path)
    version_dir = export.export_saved_model(loaded, tmp_path / "base")
    x = images(3)
    np.testing.assert_allclose(loaded_outputs(version_dir, tf.constant(x), "serving_default")["logits"],
                               wrapped(x).numpy(), rtol=1e-5, atol=1e-6)


# -- atomicity ---------------------------------------------------------------------------

_SLOW_EXPORT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import keras
    from keras.src.export.saved_model_export_archive import SavedModelExportArchive
    from tfrobust.serving import export

    original = SavedModelExportArchive.write_out

    def write_out_then_stall(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        Path(sys.argv[2]).write_text(str(filepath))  # files written, not yet renamed
        time.sleep(120)

    SavedModelExportArchive.write_out = write_out_then_stall
    model = keras.models.load_model(sys.argv[3])
    export.export_saved_model(model, sys.argv[1])
""")


def test_export_killed_midway_leaves_no_version(tmp_path):
    base, marker, model_path = tmp_path / "base", tmp_path / "written", tmp_path / "m.keras"
    linear_net().save(model_path)
    script = tmp_path / "slow_export.py"
    script.write_text(_SLOW_EXPORT)
    proc = subprocess.Popen([sys.executable, str(script), str(base), str(marker), str(model_path)],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the export never reached its midpoint"
            time.sleep(0.05)
        temporary = Path(marker.read_text())
        assert (temporary / "saved_model.pb").is_file()  # the files are there ...
        assert export.list_versions(base) == []  # ... but no version is visible
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert export.list_versions(base) == []
    assert [p.name for p in base.iterdir()] == [temporary.name]  # only the hidden temporary
    # The next export removes the dead export's temporary and writes version 1.
    assert export.export_saved_model(linear_net(), base).endswith("/1")
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_failed_export_cleans_up(tmp_path, monkeypatch):
    from keras.src.export.saved_model_export_archive import SavedModelExportArchive

    def boom(self, filepath, *args, **kwargs):
        Path(filepath, "partial").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(SavedModelExportArchive, "write_out", boom)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(linear_net(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_version_folders_without_a_model(tmp_path):
    """serving.versions on its own: a claimed number, a folder that appears whole or not at all."""
    from tfrobust.serving import versions

    base = tmp_path / "m"
    assert versions.claim_version(base) == 1 and base.is_dir()

    def half(folder):
        (folder / "partial").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        versions.write_version(base, 1, half)
    assert list(base.iterdir()) == []
    path = versions.write_version(base, 1, lambda folder: (folder / "saved_model.pb").write_text("x"))
    assert path == str(base / "1") and (base / "1" / "saved_model.pb").is_file()
    assert versions.list_versions(base) == [1] and versions.claim_version(base) == 2
    with pytest.raises(ValueError, match="already exists"):
        versions.claim_version(base, 1)


# -- command line ------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tfrobust", *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300, cwd=REPO)


def test_cli_export(tmp_path):
    model_path = tmp_path / "m.keras"
    conv_net().save(model_path)
    base = tmp_path / "base"
    out = _cli("export", "--model", str(model_path), "--out", str(base), "--norm", "linf",
               "--version", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(base / "3")
    assert json.loads((base / "3" / export.METADATA_PATH).read_text())["norm"] == "linf"


def test_cli_export_errors(tmp_path, capsys):
    from tfrobust import cli

    model_path = tmp_path / "m.keras"
    linear_net().save(model_path)
    base = tmp_path / "base"
    assert cli.main(["export", "--model", str(model_path), "--out", str(base)]) == 0
    assert capsys.readouterr().out.strip() == str(base / "1")

    assert cli.main(["export", "--model", str(tmp_path / "nope.keras"), "--out", str(base)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.keras" in err[0] and "does not exist" in err[0]

    assert cli.main(["export", "--model", str(model_path), "--out", str(base), "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    for bad in (["--norm", "l1"], ["--version", "x"], ["--input-shape", "8,a"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["export", "--model", str(model_path), "--out", str(base), *bad])
        assert exit_info.value.code == 2
    assert export.list_versions(base) == [1]


# -- serving/ deployment files stay in step with the export -------------------------------------


def _docker_run_line():
    text = (REPO / "serving" / "README.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("docker run ")]
    assert len(lines) == 1, "serving/README.md must have exactly one docker run line"
    return lines[0].split()


def test_serving_files_in_step_with_export(tmp_path):
    import yaml

    from tfrobust.serving import server

    models = server.read_model_config_file(REPO / "serving" / "models.config")
    assert models == {"tfrobust": "/models/tfrobust"}

    compose = yaml.safe_load((REPO / "serving" / "docker-compose.yml").read_text())
    service = compose["services"]["tfserving"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert volumes["/models"] == "./models"  # serving/models/<name>/<version> -> /models/<name>/<version>
    assert volumes["/config/models.config"] == "./models.config"
    assert volumes["/config/batching.config"] == "./batching.config"
    assert "127.0.0.1:8501:8501" in service["ports"] and "127.0.0.1:8500:8500" in service["ports"]

    run = _docker_run_line()
    image = next(word for word in run if word.startswith("tensorflow/serving:"))
    assert image == service["image"] == "tensorflow/serving:2.21.0"  # the TF that writes the export
    flags = run[run.index(image) + 1:]
    assert flags == service["command"]
    mounts = {w.strip('"').split(":")[1]: w.strip('"').split(":")[0] for w in run if w.startswith('"$PWD')}
    assert mounts == {"/models": "$PWD/serving/models",
                      "/config/models.config": "$PWD/serving/models.config",
                      "/config/batching.config": "$PWD/serving/batching.config"}
    assert "--model_config_file=/config/models.config" in flags
    assert "--batching_parameters_file=/config/batching.config" in flags

    batching = (REPO / "serving" / "batching.config").read_text()
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads"):
        assert re.search(rf"^{field} {{ value: \d+ }}$", batching, re.M), field

    # What `tfrobust export --out serving/models/tfrobust` writes is what the config serves.
    local = tmp_path / "serving" / "models" / "tfrobust"
    version_dir = Path(export.export_saved_model(linear_net(), local))
    container_path = "/models/" + str(version_dir.relative_to(tmp_path / "serving" / "models"))
    assert container_path == models["tfrobust"] + "/1"
    assert (REPO / "serving" / "models" / ".gitignore").is_file()
    readme = (REPO / "serving" / "README.md").read_text()
    assert "tfrobust export --model runs/mnist/model.keras --out serving/models/tfrobust" in readme


def test_load_model_errors(tmp_path):
    from tfrobust.models import load_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_model(junk)


# -- certified_radius ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certified_export(tmp_path_factory):
    """A small MLP trained with IBP on digits, exported with certified_radius (crown-ibp)."""
    from tfrobust import data, objectives, models
    x, y = data.load("digits", "train")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model = models.RobustModel(net, objectives.CertifiedTraining(eps=0.05, kappa=0.5), eps_warmup_steps=50)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    base = tmp_path_factory.mktemp("certified") / "model"
    path = export.export_saved_model(model, base, norm="linf",
                                     certify=export.certify_settings("crown-ibp", tolerance=1 / 64))
    xt, yt = data.load("digits", "test")
    return model, path, xt[:96], yt[:96]


def test_served_certified_radius_is_the_library_radius(certified_export):
    from tfrobust import bounds
    model, path, x, _ = certified_export
    served = tf.saved_model.load(path).signatures["robustness"](inputs=tf.constant(x))
    radius, predicted = bounds.certified_radius(model.classifier, x, method="crown-ibp", tolerance=1 / 64)
    np.testing.assert_allclose(served["certified_radius"].numpy(), radius.numpy(), atol=1e-6)
    np.testing.assert_array_equal(served["predicted_class"].numpy(), predicted.numpy())
    assert np.mean(radius.numpy() > 0) > 0.3  # the IBP-trained net proves most predictions
    meta = json.loads((Path(path) / export.METADATA_PATH).read_text())
    assert "certified_radius" in meta["signatures"]["robustness"]
    assert meta["certified_radius"]["method"] == "crown-ibp" and meta["certified_radius"]["norm"] == "linf"
    assert meta["certified_radius"]["tolerance"] == 1 / 64 and meta["certified_radius"]["bisection_steps"] == 6


def test_no_attack_changes_a_prediction_within_its_certified_radius(certified_export):
    """The strongest attacks we have, each at the example's own served radius, never flip it."""
    from tfrobust import attacks
    _, path, x, _ = certified_export
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["robustness"](inputs=tf.constant(x))
    radius, predicted = served["certified_radius"].numpy(), served["predicted_class"].numpy()

    def classify(t, training=False):  # the served model, as the attacks call a classifier
        return loaded.signatures["serving_default"](inputs=tf.cast(t, tf.float32))["logits"]
    tried = 0
    for r in np.unique(radius[radius > 0]):  # multiples of the tolerance: one attack trace each
        idx = np.flatnonzero(radius == r)
        xs, ys = x[idx], predicted[idx]
        candidates = [attacks.apgd(classify, xs, ys, eps=float(r), steps=25, loss="ce"),
                      attacks.apgd(classify, xs, ys, eps=float(r), steps=25, loss="dlr"),
                      attacks.cw(classify, xs, ys, eps=float(r), steps=25, step_size=float(r) / 8),
                      attacks.square(classify, xs, ys, eps=float(r), queries=200)]
        for x_adv in candidates:
            x_adv = x_adv.numpy()
            assert np.all(np.abs(x_adv - xs) <= r + 1e-6)
            np.testing.assert_array_equal(np.argmax(classify(x_adv).numpy(), -1), ys)
        tried += len(idx)
    assert tried == np.sum(radius > 0) >= 30


def test_certify_refuses_bad_settings_and_unsupported_models(tmp_path):
    with pytest.raises(ValueError, match="'crown'"):
        export.certify_settings("crown")
    with pytest.raises(ValueError, match="tolerance=0"):
        export.certify_settings("ibp", tolerance=0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.LayerNormalization(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="LayerNormalization"):
        export.export_saved_model(net, tmp_path / "m", certify={"method": "ibp"})
    assert not (tmp_path / "m").exists() or not export.list_versions(tmp_path / "m")


def test_cli_export_certify_and_client_column(tmp_path, certified_export, capsys):
    from tfrobust import cli
    from tfrobust.serving import client
    model, _, x, y = certified_export
    model.save(tmp_path / "m.keras")
    assert cli.main(["export", "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "base"),
                 "--norm", "linf", "--certify", "ibp", "--certify-tolerance", "0.01"]) == 0
    meta = json.loads((tmp_path / "base" / "1" / export.METADATA_PATH).read_text())
    assert meta["certified_radius"]["method"] == "ibp" and meta["certified_radius"]["tolerance"] == 0.01
    assert cli.main(["export", "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "base"),
                 "--certify", "ibp", "--certify-tolerance", "0"]) == 2
    assert "--certify-tolerance=0" in capsys.readouterr().err
    scores = tf.saved_model.load(str(tmp_path / "base" / "1")).signatures["robustness"](inputs=tf.constant(x[:3]))
    table = client.format_scores({k: v.numpy() for k, v in scores.items()}, y[:3])
    assert "certified" in table.splitlines()[0]
