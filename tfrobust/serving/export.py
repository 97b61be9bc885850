"""SavedModel export for TF Serving: ``serving_default`` and ``robustness``.

The export writes TF Serving's layout, ``BASE/<version>/saved_model.pb`` plus
``variables/``, with the signatures of :mod:`tfrobust.serving.signatures` built by
``keras.export.ExportArchive`` (docs/architecture.md), as a version folder that
appears atomically (:mod:`tfrobust.serving.versions`); ``estimated_radius`` is
calibrated by :mod:`tfrobust.serving.calibration`. A small JSON description of
the export (norm, shapes, versions of the libraries) is written to
``assets.extra/tfrobust.json``, which TF Serving ignores.

The names of those modules are importable from here too.

Example::

    model = keras.models.load_model("runs/mnist/model.keras")
    version_dir = export_saved_model(model, "serving/models/tfrobust", norm="linf")
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfrobust import bounds, losses, norms
from tfrobust.models import unwrap
from tfrobust.serving.calibration import calibrate_radius, choose_statistic, conformal_factor
from tfrobust.serving.signatures import (INPUT_NAME, RADIUS_STATISTICS, ROBUSTNESS_OUTPUTS, SERVING_OUTPUTS,
                                         SIGNATURES, SMOOTHED_OUTPUTS, certify_settings, robustness_outputs,
                                         serving_outputs, smoothed_outputs, smoothing_settings)
from tfrobust.serving.versions import (claim_version, clean_stale_temporaries, list_versions, next_version,
                                       write_version)

__all__ = [
    "INPUT_NAME",
    "SERVING_OUTPUTS",
    "ROBUSTNESS_OUTPUTS",
    "SIGNATURES",
    "SMOOTHED_OUTPUTS",
    "smoothing_settings",
    "smoothed_outputs",
    "METADATA_PATH",
    "serving_outputs",
    "robustness_outputs",
    "certify_settings",
    "conformal_factor",
    "calibrate_radius",
    "RADIUS_STATISTICS",
    "choose_statistic",
    "list_versions",
    "next_version",
    "infer_input_shape",
    "export_saved_model",
    "clean_stale_temporaries",
]


METADATA_PATH = "assets.extra/tfrobust.json"
"""Export description inside a version folder (TF Serving ignores it)."""


def _shape_tail(shape) -> tuple[int, ...] | None:
    if shape is None:
        return None
    dims = tuple(shape)[1:]
    if not dims or any(d is None for d in dims):
        return None
    return tuple(int(d) for d in dims)


def infer_input_shape(model: keras.Model) -> tuple[int, ...]:
    """The per-example input shape ``(H, W, C)`` of a built Keras classifier.

    Looks at ``model.inputs`` (Functional and Sequential models), then at a
    wrapped ``classifier`` attribute (e.g. :class:`tfrobust.models.RobustModel`),
    then at nested models.

    Raises:
        ValueError: if the shape is unknown or not fully defined; pass
            ``input_shape`` to :func:`export_saved_model` then.
    """
    candidates = [model, getattr(model, "classifier", None)]
    candidates += [layer for layer in getattr(model, "layers", []) if isinstance(layer, keras.Model)]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            inputs = candidate.inputs
        except (AttributeError, ValueError):
            inputs = None
        if inputs and len(inputs) == 1:
            tail = _shape_tail(inputs[0].shape)
            if tail:
                return tail
    raise ValueError(
        f"cannot infer the input shape of model {getattr(model, 'name', model)!r}; "
        "pass input_shape=(H, W, C) (CLI: --input-shape H,W,C)")


def _metadata(model: keras.Model, input_shape: Sequence[int], num_classes: int, norm: str,
              version: int, calibration: dict | None = None, certify: dict | None = None,
              smoothing: dict | None = None) -> dict:
    import tfrobust

    robustness = (list(ROBUSTNESS_OUTPUTS) + (["estimated_radius"] if calibration else [])
                  + (["certified_radius"] if certify else []))
    meta = {
        "format": 1,
        "version": version,
        "model_name": getattr(model, "name", None),
        "norm": norm,
        "dual_norm": "l1" if norm == "linf" else "l2",
        "input_name": INPUT_NAME,
        "input_shape": [None, *input_shape],
        "input_dtype": "float32",
        "num_classes": num_classes,
        "signatures": {"serving_default": list(SERVING_OUTPUTS),
                       "robustness": robustness},
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tfrobust_version": tfrobust.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    if calibration:
        meta["estimated_radius"] = dict(calibration)
    if certify:
        meta["certified_radius"] = dict(certify)
    if smoothing:
        meta["signatures"]["smoothed"] = list(SMOOTHED_OUTPUTS)
        meta["smoothed"] = dict(smoothing)
    return meta


def _checked_calibration(calibration: dict | None, norm: str) -> tuple[float | None, str]:
    """The radius ``factor`` and ``statistic`` of ``calibration`` (``None`` and ``"effective_margin"``
    without one), refusing a bad factor or statistic or a norm other than ``norm``."""
    factor, statistic = None, "effective_margin"
    if calibration is not None:
        factor = calibration.get("factor") if isinstance(calibration, dict) else None
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not np.isfinite(factor) \
                or factor <= 0:
            raise ValueError(f"calibration factor={factor!r} must be a positive finite number "
                             "(use calibrate_radius)")
        statistic = calibration.get("statistic", "effective_margin")
        if statistic not in RADIUS_STATISTICS:
            raise ValueError(f"calibration statistic={statistic!r} must be one of {RADIUS_STATISTICS}")
        if calibration.get("norm", norm) != norm:
            raise ValueError(f"calibration norm={calibration.get('norm')!r} differs from norm={norm!r}")
    return factor, statistic


def _check_version(version: int | None) -> None:
    """Refuses a ``version`` that is neither ``None`` nor a non-negative integer."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 0):
        raise ValueError(f"version={version!r} must be a non-negative integer")


def _checked_shape(model: keras.Model, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``input_shape`` as a tuple (inferred from ``model`` when ``None``), refusing non-positive sizes."""
    shape = tuple(input_shape) if input_shape is not None else infer_input_shape(model)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(f"input_shape={shape!r} must be positive integers, e.g. (28, 28, 1)")
    return shape


def _num_classes(model: keras.Model, shape: tuple[int, ...]) -> int:
    """The number of classes of ``model``, from one call on zeros; refuses non-logit outputs and one class."""
    probe = model(tf.zeros([1, *shape], tf.float32), training=False)
    if probe.shape.rank != 2:
        raise ValueError(f"the model must return logits [batch, classes]; got shape {probe.shape}")
    num_classes = int(probe.shape[-1])
    if num_classes < 2:
        raise ValueError("the model must have at least 2 classes (top-2 margin)")
    return num_classes


def _archive(model: keras.Model, spec: tf.TensorSpec, norm: str, factor: float | None, statistic: str,
             certify: dict | None, smoothing: dict | None, num_classes: int) -> keras.export.ExportArchive:
    """The export archive tracking ``model``, with its ``serving_default``, ``robustness`` and (with
    ``smoothing``) ``smoothed`` endpoints."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda inputs: serving_outputs(model, inputs), [spec])
    archive.add_endpoint("robustness", lambda inputs: robustness_outputs(model, inputs, norm, factor, statistic,
                                                                        certify),
                         [spec])
    if smoothing is not None:
        archive.add_endpoint("smoothed", lambda inputs: smoothed_outputs(model, inputs, smoothing, num_classes),
                             [spec])
    return archive


def export_saved_model(
    model: keras.Model,
    base_path: str | os.PathLike,
    *,
    version: int | None = None,
    norm: str = "l2",
    input_shape: Sequence[int] | None = None,
    calibration: dict | None = None,
    certify: dict | None = None,
    smoothing: dict | None = None,
) -> str:
    """Exports ``model`` as ``base_path/<version>/`` for TF Serving, atomically.

    Args:
        model: a built Keras classifier returning logits (plain or a
            ``RobustModel``).
        base_path: TF Serving's model base path; created if missing.
        version: the version number; defaults to the next integer.
        norm: threat norm of the ``robustness`` signature (``"linf"`` or ``"l2"``).
        input_shape: per-example input shape ``(H, W, C)``; inferred when omitted.
        calibration: from :func:`calibrate_radius` (same ``norm``): the ``robustness``
            signature then also returns ``estimated_radius``, and the metadata records
            the factor, coverage and calibration size.
        certify: from :func:`certify_settings`: the ``robustness`` signature then also
            returns ``certified_radius`` (the model must be one that bounds can pass:
            Sequential or functional, supported layers), recorded in the metadata.
        smoothing: from :func:`smoothing_settings`: adds the ``smoothed`` signature, the
            randomized-smoothing classifier of the model with its certified L2 radius.

    Returns:
        The version folder, ``base_path/<version>``.

    Raises:
        ValueError: bad norm, version, shape, a model that outputs
            probabilities, or a version that already exists.
    """
    norms.validate_norm(norm)
    losses.check_logits(model, name=f"model {getattr(model, 'name', '')!r}")
    factor, statistic = _checked_calibration(calibration, norm)
    if certify is not None:
        certify = certify_settings(certify["method"], certify.get("clip", (0.0, 1.0)),
                                   certify.get("tolerance", 1.0 / 512), certify.get("max_eps"))
        bounds.graph_of(unwrap(model))  # refuses an unsupported layer by name before anything is written
    if smoothing is not None:
        smoothing = smoothing_settings(**{k: smoothing[k] for k in ("sigma", "n", "alpha", "n0", "batch_size",
                                                                     "seed") if k in smoothing})
    _check_version(version)
    shape = _checked_shape(model, input_shape)
    spec = tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)
    num_classes = _num_classes(model, shape)

    version = claim_version(base_path, version)
    archive = _archive(model, spec, norm, factor, statistic, certify, smoothing, num_classes)

    def write(folder: Path) -> None:
        archive.write_out(str(folder), verbose=False)
        meta = folder / METADATA_PATH
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(_metadata(model, shape, num_classes, norm, version, calibration, certify,
                                             smoothing),
                                   indent=2))

    return write_version(base_path, version, write)
