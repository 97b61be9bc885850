"""Argument checks that name the bad value: the one vocabulary of the library (TensorFlow-free).

Every public entry point checks its arguments with these, so a bad value always reads
``name=value must be ...``. They load no TensorFlow (tensors are recognised by their ``dtype`` and
``shape``), so the attack specs and the command line can use them before TensorFlow starts.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

__all__ = [
    "is_tensor",
    "check_number",
    "check_flag",
    "check_choice",
    "check_positive",
    "check_positive_int",
]


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a tensor or variable (a value only known when the graph runs)."""
    return hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, numbers.Number)


def check_number(name: str, value: Any, *, positive: bool = False, integer: bool = False,
                 minimum: int | None = None, optional: bool = False) -> None:
    """Raises ValueError naming ``value`` unless it is a non-negative (or positive) number.

    Tensors pass (their value is not known yet).

    Args:
        name: the argument's name, as the message shows it.
        value: the value.
        positive: zero is refused too.
        integer: an integer is required (``bool`` is not one); ``minimum`` is its least value
            (default 1 if ``positive`` else 0).
        minimum: see ``integer``.
        optional: ``None`` passes.
    """
    if (value is None and optional) or is_tensor(value):
        return
    if integer:
        low = minimum if minimum is not None else int(positive)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
            raise ValueError(f"{name}={value!r} must be {kind}")
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
        raise ValueError(f"{name}={value!r} must be a number")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={value!r} must be {'positive' if positive else 'non-negative'}")


def check_flag(name: str, value: Any, *, optional: bool = False) -> None:
    """Raises ValueError naming ``value`` unless it is ``True`` or ``False`` (or ``None`` if ``optional``)."""
    if not (isinstance(value, bool) or (optional and value is None)):
        raise ValueError(f"{name}={value!r} must be True or False" + (" or None" if optional else ""))


def check_choice(name: str, value: Any, choices: Iterable) -> Any:
    """Returns ``value`` if it is one of ``choices``, else raises ValueError naming it and them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """Returns ``value`` as ``int`` if it is a positive integer (not a tensor), else raises ValueError naming it."""
    if is_tensor(value):
        raise ValueError(f"{name}={value!r} must be a positive integer")
    check_number(name, value, integer=True, positive=True)
    return int(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Returns ``value`` as ``float`` if it is a positive (or, with ``allow_zero``, non-negative) number."""
    if is_tensor(value):
        raise ValueError(f"{name}={value!r} must be a number")
    check_number(name, value, positive=not allow_zero)
    return float(value)
