"""The one argument-check vocabulary (tfrobust.checks): messages name the value; tensors pass."""

import ast
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrobust import checks


@pytest.mark.parametrize("kwargs,good,bad,message", [
    ({}, [0, 0.5, np.float32(2.0), 3], [-1e-9, float("nan"), True, "1", None], "must be"),
    ({"positive": True}, [1e-9, 2], [0, 0.0, -1], "must be positive"),
    ({"integer": True}, [0, 3, np.int64(4)], [-1, 1.0, True, "2"], "non-negative integer"),
    ({"integer": True, "positive": True}, [1, np.int32(7)], [0, -2, 1.5], "positive integer"),
    ({"integer": True, "minimum": 2}, [2, 9], [1, 0], "integer >= 2"),
    ({"optional": True}, [None, 0.1], [-0.1], "non-negative"),
])
def test_check_number(kwargs, good, bad, message):
    for value in good:
        checks.check_number("x", value, **kwargs)
    for value in bad:
        with pytest.raises(ValueError, match=rf"^x={value!r} must be .*") as err:
            checks.check_number("x", value, **kwargs)
        assert message in str(err.value) or value is None or not isinstance(value, (int, float))
    checks.check_number("x", tf.constant(-1.0), **kwargs)  # a tensor's value is unknown: it passes


def test_positive_int_and_positive_return_python_values_and_refuse_tensors():
    assert checks.check_positive_int("n", np.int64(3)) == 3 and type(checks.check_positive_int("n", 3)) is int
    assert checks.check_positive("s", np.float32(0.5)) == 0.5 and checks.check_positive("s", 0, allow_zero=True) == 0.0
    for call in (lambda: checks.check_positive_int("n", tf.constant(3)), lambda: checks.check_positive("s", 0),
                 lambda: checks.check_positive_int("n", 0), lambda: checks.check_positive("s", tf.constant(1.0))):
        with pytest.raises(ValueError, match=r"^(n|s)="):
            call()


def test_flag_and_choice():
    checks.check_flag("f", False)
    checks.check_flag("f", None, optional=True)
    with pytest.raises(ValueError, match=r"f=1 must be True or False$"):
        checks.check_flag("f", 1)
    assert checks.check_choice("norm", "l2", ["l2", "linf"]) == "l2"
    with pytest.raises(ValueError, match=r"norm='l3' is not supported; choose one of \('l2', 'linf'\)"):
        checks.check_choice("norm", "l3", iter(["l2", "linf"]))


def test_imports_only_the_standard_library():
    """The attack specs and the command line check values before TensorFlow starts."""
    tree = ast.parse(Path(checks.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "numbers", "typing"}
