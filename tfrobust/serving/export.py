"""SavedModel export for TF Serving: ``serving_default`` and ``robustness``.

The export writes TF Serving's layout, ``BASE/<version>/saved_model.pb`` plus
``variables/``, with two signatures built by ``keras.export.ExportArchive``
(docs/architecture.md):

* ``serving_default``: ``logits`` and ``probabilities``;
* ``robustness``: ``logits``, ``probabilities``, ``predicted_class``,
  ``margin`` (top-1 minus top-2 logit), ``grad_norm`` (dual norm of the
  margin's input gradient for the threat norm chosen at export time) and
  ``effective_margin`` (``margin / grad_norm``: a first-order estimate of the
  distance to the decision boundary, in input units).

Both take one float32 tensor named ``inputs`` of shape ``[None, H, W, C]``.
A version appears atomically: it is written to a hidden temporary folder
inside ``BASE`` (TF Serving ignores names that are not integers), flushed to
disk and renamed, so a file-system watcher never sees half a version.
A small JSON description of the export (norm, shapes, versions of the
libraries) is written to ``assets.extra/tfrobust.json``, which TF Serving
ignores.

Example::

    model = keras.models.load_model("runs/mnist/model.keras")
    version_dir = export_saved_model(model, "serving/models/tfrobust", norm="linf")
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfrobust import bounds, losses, norms
from tfrobust.attacks.base import check_clip
from tfrobust.models import load_model as load_keras_model
from tfrobust.models import unwrap
from tfrobust.smoothing import core as smoothing_core
from tfrobust.smoothing.stats import check_alpha
from tfrobust.utils import check_positive, check_positive_int

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
    "load_keras_model",
    "export_saved_model",
    "clean_stale_temporaries",
]


INPUT_NAME = "inputs"
"""Name of the single input of both signatures."""

SERVING_OUTPUTS = ("logits", "probabilities")
"""Outputs of ``serving_default``."""

ROBUSTNESS_OUTPUTS = (
    "logits", "probabilities", "predicted_class", "margin", "grad_norm", "effective_margin")
"""Outputs of ``robustness`` (docs/architecture.md)."""

SIGNATURES = ("serving_default", "robustness")
"""Signature names, in registration order (plain prediction first, docs/architecture.md); an
export with ``smoothing`` adds ``smoothed``."""

SMOOTHED_OUTPUTS = ("smoothed_class", "certified_radius_l2", "p_a_lower")
"""Outputs of ``smoothed``: the smoothed classifier's class (-1 = abstain), its certified L2 radius
and the lower confidence bound on the top class's probability (Cohen et al.'s CERTIFY)."""

METADATA_PATH = "assets.extra/tfrobust.json"
"""Export description inside a version folder (TF Serving ignores it)."""

_TMP_PREFIX = ".tmp-export-"
_TMP_RE = re.compile(r"^\.tmp-export-v\d+-pid(\d+)-")
_TINY = 1e-12


# -- the signatures' maths (pure TF) -------------------------------------------


def _logits(model: Callable, x: tf.Tensor) -> tf.Tensor:
    return tf.cast(model(x, training=False), tf.float32)


def serving_outputs(model: Callable, x: tf.Tensor) -> dict[str, tf.Tensor]:
    """Outputs of the ``serving_default`` signature.

    Args:
        model: a Keras classifier returning logits ``[batch, classes]``.
        x: float32 inputs ``[batch, H, W, C]``.

    Returns:
        ``{"logits": [batch, classes], "probabilities": [batch, classes]}``.
    """
    logits = _logits(model, x)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}


RADIUS_STATISTICS = ("effective_margin", "margin")
"""Served statistics an ``estimated_radius`` can scale."""


def robustness_outputs(model: Callable, x: tf.Tensor, norm: str = "l2",
                       radius_factor: float | None = None,
                       radius_statistic: str = "effective_margin",
                       certify: dict | None = None) -> dict[str, tf.Tensor]:
    """Outputs of the ``robustness`` signature, one value per example.

    The margin is ``top2_margin`` of the logits (the decision margin of the
    predicted class). Its input gradient is taken for the *sum* of the
    per-example margins, which equals the per-example gradient because the
    model runs in inference mode (no coupling between examples).

    Args:
        model: a Keras classifier returning logits ``[batch, classes]``.
        x: inputs ``[batch, ...]``.
        norm: threat norm; ``grad_norm`` is its dual norm (L1 for ``"linf"``,
            L2 for ``"l2"``).
        radius_factor: if given, also ``estimated_radius = radius_factor *
            <radius_statistic>``, the calibrated radius of :func:`calibrate_radius`.
        radius_statistic: one of :data:`RADIUS_STATISTICS`.
        certify: if given (from :func:`certify_settings`), also ``certified_radius``: the
            largest L∞ radius at which bound propagation proves ``predicted_class``, found by
            bisection to ``tolerance`` below the true provable radius, 0 where none is proven.

    Returns:
        A dict with float32 ``logits``, ``probabilities`` ``[batch, classes]``,
        int64 ``predicted_class`` and float32 ``margin``, ``grad_norm``,
        ``effective_margin`` ``[batch]``. ``effective_margin`` divides by
        ``max(grad_norm, 1e-12)``, so a flat model gives a large finite value.

    Raises:
        ValueError: for an unsupported ``norm``.
    """
    norms.validate_norm(norm)
    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = _logits(model, x)
        margin = losses.top2_margin(logits)
    grad = tape.gradient(margin, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grad_norm = norms.dual_norm(grad, norm)
    out = {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits, axis=-1),
        "predicted_class": tf.argmax(logits, axis=-1, output_type=tf.int64),
        "margin": margin,
        "grad_norm": grad_norm,
        "effective_margin": margin / tf.maximum(grad_norm, _TINY),
    }
    if radius_factor is not None:
        out["estimated_radius"] = tf.constant(float(radius_factor), tf.float32) * out[radius_statistic]
    if certify is not None:
        radius, _ = bounds.certified_radius(
            unwrap(model), x, method=certify["method"], clip=tuple(certify["clip"]),
            max_eps=certify["max_eps"], tolerance=certify["tolerance"])
        out["certified_radius"] = radius
    return out


def certify_settings(method: str, clip: Sequence[float] = (0.0, 1.0), tolerance: float = 1.0 / 512,
                     max_eps: float | None = None) -> dict:
    """Checked settings of a served ``certified_radius``, as written to the version's metadata.

    Args:
        method: ``"ibp"`` or ``"crown-ibp"``.
        clip: the valid input range (the ball is cut to it).
        tolerance: the bisection's width: the served radius is proven, and the largest
            provable one lies less than ``tolerance`` above it.
        max_eps: the largest radius tried; default the clip range's width.

    Raises:
        ValueError: naming a bad method, clip range or tolerance.
    """
    if method not in bounds.BOUND_METHODS:
        raise ValueError(f"certify method={method!r} is unknown; choose one of {list(bounds.BOUND_METHODS)}")
    check_clip(tuple(clip))
    lo, hi = (float(c) for c in clip)
    max_eps = float(hi - lo) if max_eps is None else float(max_eps)
    steps = bounds.bisection_steps(max_eps, float(tolerance))
    return {"method": method, "norm": "linf", "clip": [lo, hi], "max_eps": max_eps,
            "tolerance": float(tolerance), "bisection_steps": steps,
            "meaning": f"the largest L∞ radius (bisection, {steps} steps, tolerance {float(tolerance):.3g}) at "
                       f"which {method} proves predicted_class for every input of the ball within the clip "
                       "range; 0 where it proves none"}


def smoothing_settings(sigma: float, n: int = 1000, alpha: float = 0.001, n0: int = 100,
                       batch_size: int = 1000, seed: int | None = None) -> dict:
    """Checked settings of a served ``smoothed`` signature, as written to the version's metadata.

    Args:
        sigma: the noise level the base classifier was trained for.
        n: estimation draws per example (Cohen et al.'s ``n``).
        alpha: each certificate fails with probability at most ``alpha``.
        n0: selection draws per example.
        batch_size: noisy inputs per forward pass inside the signature.
        seed: ``None`` draws a fresh noise seed per request (the certificate's guarantee is over
            that draw); an integer fixes it, so a request's answer equals
            :func:`tfrobust.smoothing.certify` with that seed.

    Raises:
        ValueError: naming a bad value.
    """
    sigma = check_positive("sigma", sigma)
    n, n0, batch_size = (check_positive_int(k, v) for k, v in (("n", n), ("n0", n0), ("batch_size", batch_size)))
    alpha = check_alpha(alpha)
    if seed is not None:
        seed = smoothing_core.check_seed(seed)
    return {"sigma": sigma, "n": n, "alpha": alpha, "n0": n0, "batch_size": batch_size, "seed": seed,
            "norm": "l2", "noise": "fresh per request" if seed is None else f"fixed seed {seed}",
            "meaning": f"Cohen et al.'s CERTIFY with {n0} selection and {n} estimation draws of "
                       f"N(0, {sigma:g}^2 I): smoothed_class is constant within certified_radius_l2 (L2) "
                       f"with probability at least {1 - alpha:g}; -1 = abstain (radius 0)"}


def smoothed_outputs(model: Callable, x: tf.Tensor, smoothing: dict, num_classes: int) -> dict[str, tf.Tensor]:
    """Outputs of the ``smoothed`` signature (:data:`SMOOTHED_OUTPUTS`), from :func:`smoothing_settings`."""
    seed = smoothing["seed"]
    seed = (tf.random.uniform([], 0, smoothing_core.MAX_SEED, dtype=tf.int64) if seed is None
            else tf.constant(seed, tf.int64))
    return smoothing_core.certify_graph(unwrap(model), tf.convert_to_tensor(x, tf.float32), smoothing["sigma"],
                              smoothing["n0"], smoothing["n"], smoothing["alpha"], smoothing["batch_size"],
                              seed, num_classes)


def conformal_factor(distance, statistic, coverage: float) -> float:
    """The largest ``c`` such that ``distance >= c * statistic`` for at least ``coverage`` of the
    examples, with the split-conformal correction: the ``floor((n + 1)(1 - coverage))``-th smallest
    ratio ``distance / statistic`` (the smallest if that index is 0). Distances of ``inf`` (nothing
    adversarial found) count as infinitely far.

    On fresh examples exchangeable with these, ``distance >= c * statistic`` then holds with
    probability at least ``coverage`` (Vovk et al.; Angelopoulos & Bates 2021, split conformal).
    """
    _check_coverage(coverage)
    d = np.asarray(distance, float)
    ratio = np.sort(d / np.maximum(np.asarray(statistic, float), _TINY))
    if len(ratio) == 0:
        raise ValueError("conformal_factor needs at least one calibration example")
    k = int(np.floor((len(ratio) + 1) * (1.0 - coverage) + 1e-9))  # 1e-9: 1 - 0.9 is 0.0999...
    return float(ratio[max(k, 1) - 1])


def _check_coverage(coverage) -> None:
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0 < coverage < 1:
        raise ValueError(f"coverage={coverage!r} must be a number strictly between 0 and 1")


def choose_statistic(distance, statistics: dict, coverage: float) -> str:
    """The statistic whose conformal radius is tightest: the largest median ``radius / distance``
    (over the inputs where a distance was found) among ``statistics`` (name -> values)."""
    d = np.asarray(distance, float)
    found = np.isfinite(d) & (d > 0)
    if not found.any():
        return next(iter(statistics))
    score = {}
    for name, values in statistics.items():
        v = np.asarray(values, float)
        score[name] = float(np.median(conformal_factor(d, v, coverage) * v[found] / d[found]))
    return max(score, key=score.__getitem__)


def calibrate_radius(model: Callable, x, *, norm: str, coverage: float = 0.9, attack: str = "fmn+fab",
                     steps: int = 100, batch_size: int = 250, statistic: str = "auto",
                     progress: bool = False) -> dict:
    """Fits ``estimated_radius = factor * statistic`` on calibration inputs ``x``.

    Per input, the minimal-norm ``attack`` (:func:`tfrobust.evaluation.minimal_distances`) finds
    the distance to the nearest input of another predicted class; ``factor`` is
    :func:`conformal_factor` of those distances over the served statistic (``effective_margin``
    or ``margin``). The radius then understates the distance found for at least ``coverage`` of
    fresh inputs like these. ``statistic="auto"`` picks the statistic on the first half of ``x``
    (:func:`choose_statistic`: the score study found the raw margin tighter on robust models) and
    fits the factor on the second half, so the choice does not bias the coverage. The attack's
    distance is itself an upper bound on the true one, so the radius is a calibrated estimate,
    not a certificate. Use inputs the model did not train on (the recipes hold out the last
    5,000 training images).

    Returns:
        The ``calibration`` dict :func:`export_saved_model` takes and writes to the metadata.

    Raises:
        ValueError: naming a bad coverage, norm, statistic or attack, or an empty calibration set.
    """
    from tfrobust.attacks import Budget  # pylint: disable=import-outside-toplevel
    from tfrobust.evaluation import minimal_distances  # pylint: disable=import-outside-toplevel

    norms.validate_norm(norm)
    _check_coverage(coverage)
    if statistic != "auto" and statistic not in RADIUS_STATISTICS:
        raise ValueError(f"statistic={statistic!r} must be 'auto' or one of {RADIUS_STATISTICS}")
    x = np.asarray(x, np.float32)
    if len(x) < (2 if statistic == "auto" else 1):
        raise ValueError(f"calibrate_radius needs at least {2 if statistic == 'auto' else 1} calibration "
                         f"inputs, got {len(x)}")
    fn = tf.function(lambda t: robustness_outputs(model, t, norm))
    parts = [fn(tf.constant(x[s:s + batch_size])) for s in range(0, len(x), batch_size)]
    stats = {k: np.concatenate([p[k].numpy() for p in parts]) for k in RADIUS_STATISTICS}
    pred = np.concatenate([p["predicted_class"].numpy() for p in parts])
    budget = Budget(norm=norm, fab_steps=steps, fmn_steps=steps)
    dist = minimal_distances(model, x, pred, attack, budget, batch_size=batch_size, progress=progress)
    fit = np.arange(len(x))
    if statistic == "auto":
        half = len(x) // 2
        statistic = choose_statistic(dist[:half], {k: v[:half] for k, v in stats.items()}, coverage)
        fit = fit[half:]
    factor = conformal_factor(dist[fit], stats[statistic][fit], coverage)
    return {"factor": factor, "statistic": statistic, "coverage": float(coverage), "n": int(len(fit)),
            "n_choice": int(len(x) - len(fit)), "norm": norm, "attack": attack, "steps": int(steps),
            "found": float(np.isfinite(dist).mean()),
            "calibration_coverage": float((dist[fit] >= factor * stats[statistic][fit]).mean()),
            "meaning": f"estimated_radius = factor * {statistic}: the {attack} distance to another predicted "
                       f"class exceeded it on {coverage:.0%} of calibration inputs (split conformal)"}


# -- versions and folders ---------------------------------------------------------


def list_versions(base_path: str | os.PathLike) -> list[int]:
    """Versions under ``base_path``: sub-folders named by a non-negative integer, sorted.

    Temporary export folders (hidden, non-integer names) are not versions,
    neither for this function nor for TF Serving.
    """
    base = Path(base_path)
    if not base.is_dir():
        return []
    found = []
    for child in base.iterdir():
        if child.name.isdigit() and child.is_dir():
            found.append(int(child.name))
    return sorted(found)


def next_version(base_path: str | os.PathLike) -> int:
    """One more than the newest version under ``base_path`` (1 for an empty base)."""
    versions = list_versions(base_path)
    return versions[-1] + 1 if versions else 1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(base_path: str | os.PathLike) -> list[str]:
    """Removes temporary export folders left by exports that died (their process is gone).

    Returns:
        The removed paths.
    """
    base = Path(base_path)
    removed: list[str] = []
    if not base.is_dir():
        return removed
    for child in base.iterdir():
        m = _TMP_RE.match(child.name)
        if m and child.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(str(child))
    return removed


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    """Flushes every file and folder under ``root`` to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# -- models ------------------------------------------------------------------------


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
    if certify is not None:
        certify = certify_settings(certify["method"], certify.get("clip", (0.0, 1.0)),
                                   certify.get("tolerance", 1.0 / 512), certify.get("max_eps"))
        bounds.graph_of(unwrap(model))  # refuses an unsupported layer by name before anything is written
    if smoothing is not None:
        smoothing = smoothing_settings(**{k: smoothing[k] for k in ("sigma", "n", "alpha", "n0", "batch_size",
                                                                     "seed") if k in smoothing})
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 0):
        raise ValueError(f"version={version!r} must be a non-negative integer")
    shape = tuple(input_shape) if input_shape is not None else infer_input_shape(model)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(f"input_shape={shape!r} must be positive integers, e.g. (28, 28, 1)")

    spec = tf.TensorSpec([None, *shape], tf.float32, name=INPUT_NAME)
    probe = model(tf.zeros([1, *shape], tf.float32), training=False)
    if probe.shape.rank != 2:
        raise ValueError(f"the model must return logits [batch, classes]; got shape {probe.shape}")
    num_classes = int(probe.shape[-1])
    if num_classes < 2:
        raise ValueError("the model must have at least 2 classes (top-2 margin)")

    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(base)
    version = next_version(base) if version is None else version
    final = base / str(version)
    if final.exists():
        raise ValueError(f"version {version} already exists at {str(final)!r}; choose another --version")

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", lambda inputs: serving_outputs(model, inputs), [spec])
    archive.add_endpoint("robustness", lambda inputs: robustness_outputs(model, inputs, norm, factor, statistic,
                                                                        certify),
                         [spec])
    if smoothing is not None:
        archive.add_endpoint("smoothed", lambda inputs: smoothed_outputs(model, inputs, smoothing, num_classes),
                             [spec])

    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}v{version}-pid{os.getpid()}-", dir=base))
    try:
        archive.write_out(str(tmp), verbose=False)
        meta = tmp / METADATA_PATH
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(_metadata(model, shape, num_classes, norm, version, calibration, certify,
                                                   smoothing),
                                         indent=2))
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp made it private (0700)
        _fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError as err:
            raise ValueError(f"version {version} appeared at {str(final)!r} while exporting") from err
        _fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(final)


# -- command line ------------------------------------------------------------------
