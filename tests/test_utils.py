"""The shared input contract and helpers of tfrobust.utils."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tfrobust import attacks, utils
from tfrobust import objectives as O
from helpers import images, small_cnn


@pytest.mark.parametrize("make", [
    lambda y: y, lambda y: y.reshape(-1, 1), lambda y: np.eye(10)[y], lambda y: y.astype("float32"),
    lambda y: tf.constant(y.reshape(-1, 1)), lambda y: list(y),
], ids=["(N,)", "(N,1)", "one-hot", "float", "tensor (N,1)", "list"])
def test_every_label_format_reads_as_the_same_classes(make):
    y = np.array([3, 0, 7, 7, 1])
    np.testing.assert_array_equal(utils.as_labels(make(y)).numpy(), y)


def test_label_parsers_of_attacks_and_objectives_agree_on_column_labels():
    """The three copies this replaced read (N, 1) labels differently (all class 0 in attacks)."""
    model, x = small_cnn(seed=0), images(4)
    y = np.array([[2], [5], [9], [0]])
    got = attacks.resolve_labels(model, tf.constant(x), y, targeted=False).numpy()
    ctx = O.StepContext(model, x, y, training=False)
    np.testing.assert_array_equal(got, [2, 5, 9, 0])
    np.testing.assert_array_equal(ctx.y.numpy(), [2, 5, 9, 0])
    a = attacks.fgsm(model, x, y, eps=0.1).numpy()
    b = attacks.fgsm(model, x, y.ravel(), eps=0.1).numpy()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("y,match", [
    (np.zeros((4, 2, 2)), r"shape \(4, 2, 2\)"), (np.array(["a", "b"]), "dtype string"),
    (np.zeros(3, int), "3 labels for 4 inputs"),
])
def test_bad_labels_are_named(y, match):
    with pytest.raises(ValueError, match=match):
        utils.as_labels(y, num_examples=4)


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "a.json"
    utils.atomic_write_text(target, "one")
    utils.atomic_write(target, b"two")
    src = tmp_path / "src.bin"
    src.write_bytes(b"three")
    utils.atomic_write(tmp_path / "copy.bin", src)
    assert target.read_text() == "two" and (tmp_path / "copy.bin").read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "copy.bin", "src.bin", "sub"]


def test_set_threads_sets_tensorflows_pools_and_rejects_bad_counts():
    import subprocess
    import sys
    code = ("import tensorflow as tf; from tfrobust.utils import set_threads; set_threads(1, inter=False); "
            "a = (tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads()); set_threads(0); "
            "set_threads(1); print(a, tf.config.threading.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["(1,", "0)", "1"]  # intra only, 0 is a no-op, then both
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"threads={bad!r}"):
            utils.set_threads(bad)


def test_parse_settings_casts_to_the_defaults_types_and_names_bad_keys():
    from tfrobust.utils import parse_settings

    defaults = {"c": 0.01, "epochs": 10, "norm": "l1"}
    run = parse_settings("c=0.5, epochs=3,,norm=l2", defaults, text_keys=("norm",))
    assert run == {"c": 0.5, "epochs": 3, "norm": "l2"} and type(run["epochs"]) is int
    assert defaults == {"c": 0.01, "epochs": 10, "norm": "l1"}  # a copy: the defaults are untouched
    assert parse_settings("", defaults) == defaults
    with pytest.raises(ValueError, match=r"run key 'q' is unknown; choose from \['c', 'epochs', 'norm'\]"):
        parse_settings("q=1", defaults)
    with pytest.raises(ValueError, match=r"run epochs='3.5' is not a valid int"):
        parse_settings("epochs=3.5", defaults)


def test_parse_named_paths():
    from tfrobust.utils import parse_named_paths
    assert parse_named_paths(["a=runs/a", "b=x=y"]) == [("a", "runs/a"), ("b", "x=y")]
    for bad in ("runs/a", "=runs/a", "a="):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_named_paths([bad])


def test_hardware_names_cores_memory_and_versions():
    import os
    import platform

    line = utils.hardware()
    assert f"{os.cpu_count()} logical CPU cores visible" in line
    assert f"Python {platform.python_version()}" in line and line.endswith(f"TF {tf.__version__}")
    assert ("GPU(s)" in line) != ("no GPU" in line)


def test_atomic_path_replaces_only_on_success_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "result.npz"
    with utils.atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".npz") and not target.exists()
        np.savez(tmp, x=np.arange(3))
    np.testing.assert_array_equal(np.load(target)["x"], np.arange(3))
    with pytest.raises(RuntimeError, match="crash"):
        with utils.atomic_path(target, suffix=".npz") as tmp:
            np.savez(tmp, x=np.arange(5))
            raise RuntimeError("crash mid-write")
    np.testing.assert_array_equal(np.load(target)["x"], np.arange(3))  # the old contents survive
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.npz"]
