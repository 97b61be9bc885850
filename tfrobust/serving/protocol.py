"""TF Serving's REST protocol: request parsing, response formatting, the error envelope."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Mapping, cast

import numpy as np

__all__ = [
    "ServingError",
    "SignatureInfo",
    "check_input",
    "check_shape",
    "numpy_dtype",
    "parse_predict_request",
    "format_predict_response",
]


NAME_PATTERN = r"^[^/:\s]+$"


VERSION_PATTERN = r"^[0-9]{1,18}$"


MODEL_NAME_RE = re.compile(NAME_PATTERN)


MAX_VERSION = 2**63 - 1


_DTYPES: dict[str, type[np.number]] = {  # TF DataType enum name -> numpy dtype, numeric types only
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
    "DT_INT8": np.int8, "DT_INT16": np.int16, "DT_INT32": np.int32, "DT_INT64": np.int64,
    "DT_UINT8": np.uint8, "DT_UINT16": np.uint16, "DT_UINT32": np.uint32, "DT_UINT64": np.uint64,
}


class ServingError(Exception):
    """A request error, answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ServingError:
    """A 400 :class:`ServingError`."""
    return ServingError(400, message)


def numpy_dtype(dtype_name: str) -> np.dtype | None:
    """The numpy dtype of a numeric TF ``DataType`` name (``"DT_FLOAT"``), or ``None``."""
    found = _DTYPES.get(dtype_name)
    return None if found is None else np.dtype(found)


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """Inputs and outputs of one signature: name -> (TF dtype name, shape with -1 unknown)."""

    name: str
    inputs: Mapping[str, tuple[str, tuple[int, ...] | None]]
    outputs: Mapping[str, tuple[str, tuple[int, ...] | None]]


def _describe(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _to_array(value: Any, name: str, dtype_name: str, shape: tuple[int, ...] | None,
              input_range: tuple[float, float] | None) -> np.ndarray:
    """Validates one input tensor from JSON and converts it to numpy."""
    if dtype_name not in _DTYPES:
        raise bad_request(f"input {name!r} has dtype {dtype_name}, which this server does not support")
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, RecursionError, OverflowError):
        raise bad_request(f"input {name!r}: nested lists are ragged or malformed; "
                   "every row must have the same shape") from None
    want = np.dtype(_DTYPES[dtype_name])
    allowed = "fiu" if want.kind == "f" else "iu"
    if raw.dtype.kind not in allowed:
        found = {"b": "booleans", "U": "strings", "S": "bytes", "O": "null, mixed types or integers too large"}.get(
            raw.dtype.kind, str(raw.dtype))
        expected = "numbers" if want.kind == "f" else "integers"
        raise bad_request(f"input {name!r}: expected {expected} of type {want.name} but found {found}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(want, copy=False)
    check_input(arr, name, shape, input_range)
    if want.kind != "f" and raw.dtype.kind in "iu":
        limits = np.iinfo(cast("np.dtype[np.integer]", want))  # the table's other dtypes are integers
        if raw.min() < limits.min or raw.max() > limits.max:
            raise bad_request(f"input {name!r}: integer out of range for {want.name}")
    return arr


def check_shape(got: tuple[int, ...], name: str, shape: tuple[int, ...] | None) -> None:
    """Checks an input's shape against its signature's (-1: any size; ``None``: any rank).

    Raises:
        ServingError: 400 naming both shapes.
    """
    if shape is not None:
        if len(got) != len(shape) or any(w != -1 and w != g for w, g in zip(shape, got)):
            raise bad_request(f"input {name!r}: expected shape {list(shape)} (-1: any) but got {list(got)}")


def check_input(arr: np.ndarray, name: str, shape: tuple[int, ...] | None,
                input_range: tuple[float, float] | None) -> None:
    """Checks one input array (already of the signature's dtype) against its signature.

    Args:
        arr: the batched input.
        name: its input name, for the messages.
        shape: the signature's shape (-1: any size), or ``None`` for an unknown rank.
        input_range: closed range float inputs must lie in, or ``None``.

    Raises:
        ServingError: 400 for a wrong shape, an empty batch, NaN/Inf or a value out of range.
    """
    check_shape(tuple(arr.shape), name, shape)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise bad_request(f"input {name!r}: the batch is empty")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "Inf (or a value too large for " + arr.dtype.name + ")"
            raise bad_request(f"input {name!r}: values must be finite; found {bad}")
        if input_range is not None:
            lo, hi = input_range
            vmin, vmax = float(arr.min()), float(arr.max())
            if vmin < lo or vmax > hi:
                raise bad_request(f"input {name!r}: values must lie in [{lo:g}, {hi:g}]; "
                                  f"found min {vmin:g}, max {vmax:g}")


def _rows_of(instances: list, signature: SignatureInfo) -> dict[str, Any]:
    """Row format: splits ``instances`` into one batched value per input name."""
    names = sorted(signature.inputs)
    if isinstance(instances[0], dict):
        columns: dict[str, list] = {n: [] for n in names}
        for i, row in enumerate(instances):
            if not isinstance(row, dict):
                raise bad_request(f"Expecting object but got list at item {i} of input list")
            if set(row) != set(names):
                raise bad_request(f"Failed to process element: {i} of 'instances' list. JSON object: "
                           f"{_describe(row)} must only have keys: {','.join(names)}")
            for n in names:
                columns[n].append(row[n])
        return columns
    if len(names) > 1:
        raise bad_request("instances is a plain list, but expecting list of objects as multiple "
                   "input tensors required as per tensorinfo_map")
    for i, row in enumerate(instances):
        if isinstance(row, dict):
            raise bad_request(f"Expecting value/list but got object at item {i} of input list")
    return {names[0]: instances}


def _columns_of(inputs: Any, signature: SignatureInfo) -> dict[str, Any]:
    """Columnar format: one value per input name."""
    names = sorted(signature.inputs)
    if not isinstance(inputs, dict):
        if len(names) > 1:
            raise bad_request("inputs is a plain value/list, but expecting an object as multiple "
                       "input tensors required as per tensorinfo_map")
        return {names[0]: inputs}
    for n in names:
        if n not in inputs:
            raise bad_request(f"Missing named input: {n} in 'inputs' object.")
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise bad_request(f"unknown named input(s) {extra}; the signature takes {names}")
    return {n: inputs[n] for n in names}


def parse_predict_request(
    body: bytes,
    resolve_signature: Callable[[str], SignatureInfo],
    input_range: tuple[float, float] | None = (0.0, 1.0),
) -> tuple[str, str, dict[str, np.ndarray]]:
    """Parses and validates a ``:predict`` body.

    Args:
        body: the raw request body.
        resolve_signature: ``signature_name -> SignatureInfo``; raises
            :class:`ServingError` for an unknown one.
        input_range: range float inputs must lie in, or ``None``.

    Returns:
        ``(signature_name, "row" | "columnar", inputs)`` with inputs batched numpy arrays.

    Raises:
        ServingError: 400 with TF Serving's wording where it has one.
    """
    if not body or not body.strip():
        raise bad_request("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except RecursionError:
        raise bad_request("JSON Parse error: the document is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, too many int digits
        raise bad_request(f"JSON Parse error: {err}") from None
    if not isinstance(doc, dict):
        raise bad_request(f"JSON Value: {_describe(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise bad_request(f"'signature_name' key must be a string value. JSON given: {_describe(signature_name)}")
    signature = resolve_signature(signature_name)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise bad_request("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise bad_request("Excepting 'instances' to be an list/array")
        if not instances:
            raise bad_request("No values in 'instances' array")
        values, fmt = _rows_of(instances, signature), "row"
    elif has_inputs:
        values, fmt = _columns_of(doc["inputs"], signature), "columnar"
    else:
        raise bad_request("Missing 'inputs' or 'instances' key")
    arrays = {n: _to_array(v, n, *signature.inputs[n], input_range) for n, v in values.items()}
    batch = {a.shape[0] for a in arrays.values()}
    if len(batch) > 1:
        raise bad_request(f"inputs have different batch sizes {sorted(batch)}")
    return signature.name, fmt, arrays


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype.kind == "f":
        return array.astype(np.float64).tolist()
    return array.tolist()


def format_predict_response(outputs: Mapping[str, np.ndarray], fmt: str) -> dict[str, Any]:
    """TF Serving's predict response: ``predictions`` (row) or ``outputs`` (columnar).

    With several outputs, row format gives one object per example and columnar
    format one entry per output; with a single output, the bare values.
    """
    names = sorted(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": _jsonable(outputs[names[0]])}
        return {"outputs": {n: _jsonable(outputs[n]) for n in names}}
    columns = {n: _jsonable(outputs[n]) for n in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    size = len(columns[names[0]])
    return {"predictions": [{n: columns[n][i] for n in names} for i in range(size)]}


def parse_version(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise bad_request(f"Malformed request: version {text!r} is not an integer")
    version = int(text)
    if version > MAX_VERSION:
        raise bad_request(f"Failed to convert version: {text} to numeric.")
    return version
