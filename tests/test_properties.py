"""Property-based API tests: every public entry point, for generated shapes, dtypes, label formats
and batch sizes, either returns what the canonical ``(N,)`` call returns or raises a ValueError
naming the bad value; never a silent difference and never an internal traceback.

The suite counts its generated calls; the last test asserts at least 1,000 ran (when the whole
module runs; it skips otherwise) and the count is printed in pytest's summary (tests/conftest.py).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfrobust import attacks, evaluation, utils
from tfrobust import objectives as O
from tfrobust.analysis import margins

K, SHAPE = 4, (3, 3, 1)
CALLS = {"n": 0}
FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(K)])


MODEL = _model()


def label_formats(y: np.ndarray) -> dict:
    """The same labels in every format the contract accepts."""
    return {"(N,)": y, "(N,1)": y.reshape(-1, 1), "one-hot": np.eye(K, dtype="float32")[y],
            "float": y.astype("float64"), "int32 tensor": tf.constant(y, tf.int32),
            "(N,1) tensor": tf.constant(y.reshape(-1, 1)), "list": [int(v) for v in y]}


batch = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, 2 ** 31 - 1), st.sampled_from(sorted(label_formats(np.zeros(1, int))))))


def _data(n, seed, dtype="float32"):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 0.9, size=(n, *SHAPE)).astype(dtype), rng.integers(0, K, n)


ATTACKS = {
    "fgsm": lambda x, y: attacks.fgsm(MODEL, x, y, eps=0.1),
    "bim": lambda x, y: attacks.bim(MODEL, x, y, eps=0.1, steps=2),
    "pgd": lambda x, y: attacks.pgd(MODEL, x, y, eps=0.1, steps=2, step_size=0.05, random_start=False),
    "cw": lambda x, y: attacks.cw(MODEL, x, y, eps=0.1, steps=2),
    "apgd": lambda x, y: attacks.apgd(MODEL, x, y, eps=0.1, steps=3, random_start=False),
    "config": lambda x, y: attacks.AttackConfig(name="bim", eps=0.1, steps=2)(MODEL, x, y),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@FAST
@given(case=batch)
def test_attacks_read_every_label_format_as_the_canonical_call(name, case):
    n, seed, fmt = case
    x, y = _data(n, seed)
    want = ATTACKS[name](x, y).numpy()
    got = ATTACKS[name](x, label_formats(y)[fmt]).numpy()
    CALLS["n"] += 2
    np.testing.assert_array_equal(got, want)


@FAST
@given(case=batch, dtype=st.sampled_from(["float32", "float64"]))
def test_objectives_read_every_label_format_as_the_canonical_call(case, dtype):
    n, seed, fmt = case
    x, y = _data(n, seed, dtype)
    model = MODEL if dtype == "float32" else keras.Sequential(
        [keras.Input(SHAPE, dtype="float64"), keras.layers.Flatten(), keras.layers.Dense(K, dtype="float64")])
    objective = O.CrossEntropy() + O.DecisionJacobian(c=0.1) + O.DecisionCurvature(c=0.1, h=0.05)

    def total(labels):
        return objective(O.StepContext(model, x, labels, training=False))[0].numpy()

    want, got = total(y), total(label_formats(y)[fmt])
    CALLS["n"] += 2
    np.testing.assert_allclose(got, want, rtol=1e-6)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(case=batch)
def test_evaluation_reads_every_label_format_and_a_dataset(case):
    n, seed, fmt = case
    x, y = _data(n, seed)

    def run(*args):
        CALLS["n"] += 1
        res = evaluation.evaluate_model(MODEL, *args, attacks=["fgsm"], eps="0.1", sanity=False,
                                        progress=False)
        return res["clean_accuracy"], res["worst_case"]

    want = run(x, y)
    assert run(x, label_formats(y)[fmt]) == want
    assert run(tf.data.Dataset.from_tensor_slices((x, y.reshape(-1, 1))).batch(2)) == want


@FAST
@given(case=batch)
def test_margins_read_every_label_format(case):
    n, seed, fmt = case
    x, y = _data(n, seed)
    want = margins.sample_margins(MODEL, x, y)
    got = margins.sample_margins(MODEL, x, label_formats(y)[fmt])
    CALLS["n"] += 2
    np.testing.assert_array_equal(np.asarray(got.raw), np.asarray(want.raw))


bad_labels = st.sampled_from([
    (lambda n: np.zeros((n, 2, 2)), "shape"), (lambda n: np.array(["a"] * n), "dtype"),
    (lambda n: np.zeros(n + 1, int), "labels for"),
])


@settings(max_examples=80, deadline=None, derandomize=True)
@given(n=st.integers(1, 5), bad=bad_labels,
       entry=st.sampled_from(["fgsm", "pgd", "apgd", "context", "evaluate", "as_labels"]))
def test_bad_labels_raise_a_value_error_naming_them(n, bad, entry):
    make, needle = bad
    x, _ = _data(n, 0)
    y = make(n)
    call = {
        "fgsm": lambda: attacks.fgsm(MODEL, x, y, eps=0.1),
        "pgd": lambda: attacks.pgd(MODEL, x, y, eps=0.1, steps=1, step_size=0.1),
        "apgd": lambda: attacks.apgd(MODEL, x, y, eps=0.1, steps=2),
        "context": lambda: O.StepContext(MODEL, x, y, training=False),
        "evaluate": lambda: evaluation.evaluate_model(MODEL, x, y, attacks=["fgsm"], eps="0.1",
                                                      sanity=False, progress=False),
        "as_labels": lambda: utils.as_labels(y, num_examples=n),
    }[entry]
    CALLS["n"] += 1
    with pytest.raises(ValueError, match=needle):
        call()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(scale=st.sampled_from([255.0, 2.0, -1.0]), entry=st.sampled_from(["fgsm", "bim", "apgd", "square",
                                                                         "evaluate"]))
def test_inputs_outside_the_clip_range_are_named(scale, entry):
    x, y = _data(3, 1)
    x = x * scale
    call = {
        "fgsm": lambda: attacks.fgsm(MODEL, x, y, eps=0.1),
        "bim": lambda: attacks.bim(MODEL, x, y, eps=0.1, steps=1),
        "apgd": lambda: attacks.apgd(MODEL, x, y, eps=0.1, steps=2),
        "square": lambda: attacks.square(MODEL, x, y, eps=0.1, queries=2),
        "evaluate": lambda: evaluation.evaluate_model(MODEL, x, y, attacks=["fgsm"], eps="0.1",
                                                      sanity=False, progress=False),
    }[entry]
    CALLS["n"] += 1
    with pytest.raises(ValueError, match=r"lie in \[.*\] but the clip range is \[0, 1\]"):
        call()
    if entry == "fgsm":  # the opt-out: a clip range that matches the data, or none at all
        lo, hi = float(x.min()), float(x.max())
        assert attacks.fgsm(MODEL, x, y, eps=0.1, clip=(min(lo, 0.0), max(hi, 1.0))).shape == x.shape
        assert attacks.fgsm(MODEL, x, y, eps=0.1, clip=None).shape == x.shape
        CALLS["n"] += 2


def test_at_least_a_thousand_generated_calls_ran(request):
    """Counts what the module's other tests generated, so it needs them in the same session, before
    it (file order): run alone or with some deselected it would count fewer, so it skips then."""
    others = {name for name, obj in globals().items() if name.startswith("test_") and callable(obj)
              and name != request.node.originalname}
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    if not others <= selected:
        pytest.skip(f"needs the whole of {request.module.__name__}; not selected: {sorted(others - selected)}")
    request.config.tfrobust_property_calls = CALLS["n"]  # printed by the summary hook in conftest.py
    assert CALLS["n"] >= 1000, CALLS
