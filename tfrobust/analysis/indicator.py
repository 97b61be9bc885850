"""The robustness indicator of Yu et al.: Jacobian and Hessian of the decision function.

Second-order Taylor expansion of the decision function ``d`` (docs/architecture.md):
``|d(x + δ) - d(x)| <= |J·δ| + |δᵀHδ| / 2``. A model whose ``d`` has a small,
sparse input Jacobian ``J`` and a Hessian ``H`` with small, mostly-zero
eigenvalues cannot be pushed across its decision boundary by a small ``δ``.
This module measures, over a set of inputs:

* the L1, L2 and L∞ norms of ``J`` and its *sparsity*, the share of entries
  with ``|J_i| <= threshold``;
* the top eigenvalues of ``H`` by Lanczos (or power iteration) on
  Hessian-vector products computed forward-over-backward
  (:func:`~tfrobust.analysis.linalg.hessian_vector_product`), never forming
  ``H``, and the share of near-zero eigenvalues by stochastic Lanczos
  quadrature.

Note: for a piecewise-linear network (ReLU, max-pooling, no softmax) ``d`` is
piecewise linear in ``x``, so its Hessian is exactly zero almost everywhere;
all curvature then sits in the loss. The indicator therefore reports the
Hessian of ``d`` and, beside it, the Hessian of the cross-entropy loss.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfrobust import losses
from tfrobust.analysis import linalg
from tfrobust.analysis.margins import decision_and_gradient, normalised_margin, summarize
from tfrobust import utils
from tfrobust.models import unwrap
from tfrobust.attacks import resolve_labels

__all__ = [
    "HESSIAN_OF",
    "HESSIAN_METHODS",
    "decision_jacobian",
    "jacobian_statistics",
    "scalar_function",
    "hessian_eigenvalues",
    "HessianSpectrum",
    "IndicatorResult",
    "robustness_indicator",
]

HESSIAN_OF = ("decision", "loss")
"""Functions whose input Hessian the indicator can measure: ``d`` or the cross-entropy."""

HESSIAN_METHODS = ("lanczos", "power")
"""Eigenvalue methods."""


def decision_jacobian(model, x, y) -> tf.Tensor:
    """The input gradient (Jacobian row) of the decision function ``d``, per example."""
    return decision_and_gradient(unwrap(model), x, tf.cast(tf.reshape(y, [-1]), tf.int32))[1]


def jacobian_statistics(jac: tf.Tensor, *, threshold: float = 1e-3, relative: bool = False) -> dict:
    """Per-example size and sparsity of input Jacobians.

    Args:
        jac: Jacobians ``[N, ...]``.
        threshold: an entry is near zero if ``|J_i| <= threshold``.
        relative: take ``threshold`` as a fraction of the example's largest ``|J_i|``.

    Returns:
        ``{"l1", "l2", "linf", "near_zero_share"}``, each ``[N]``.
    """
    flat = tf.reshape(jac, [tf.shape(jac)[0], -1])
    mag = tf.abs(flat)
    linf = tf.reduce_max(mag, axis=-1)
    thr = tf.cast(threshold, mag.dtype)
    if relative:
        thr = thr * linf[:, None]
    return {
        "l1": tf.reduce_sum(mag, axis=-1),
        "l2": tf.norm(flat, axis=-1),
        "linf": linf,
        "near_zero_share": tf.reduce_mean(tf.cast(mag <= thr, mag.dtype), axis=-1),
    }


def scalar_function(model, y: tf.Tensor, of: str = "decision"):
    """The per-example scalar whose Hessian is measured: ``x -> d(x)`` or ``x -> CE(x, y)``."""
    utils.check_choice("hessian_of", of, HESSIAN_OF)
    fn = losses.decision_margin if of == "decision" else losses.cross_entropy
    return lambda x: fn(model(x, training=False), y)


@dataclasses.dataclass(frozen=True)
class HessianSpectrum:
    """Eigenvalue estimates of per-example input Hessians.

    Attributes:
        top: eigenvalues of largest magnitude ``[N, top_k]``, signed, by descending ``|λ|``.
        ritz: all Ritz values ``[N, k]`` (Lanczos), or ``None`` (power iteration).
        weights: quadrature weights of the Ritz values ``[N, k]``, or ``None``.
    """

    top: tf.Tensor
    ritz: tf.Tensor | None = None
    weights: tf.Tensor | None = None

    def near_zero_share(self, threshold: float, relative: bool = False) -> tf.Tensor | None:
        """Estimated share of eigenvalues with ``|λ| <= threshold`` per example (Lanczos only)."""
        if self.ritz is None:
            return None
        return linalg.near_zero_share(linalg.LanczosResult(self.ritz, self.weights, None), threshold,
                                      relative=relative)


def hessian_eigenvalues(model, x, y, *, of: str = "decision", method: str = "lanczos", k: int = 20,
                        top_k: int = 5, iters: int = 30, seed: int = 0) -> HessianSpectrum:
    """Top eigenvalues of the input Hessian of ``d`` (or of the loss), per example.

    Matrix-free: every product ``Hv`` is a forward-over-backward pass.

    Args:
        model: classifier returning logits.
        x: inputs ``[N, ...]``; examples must not interact (inference mode).
        y: integer labels ``[N]``.
        of: ``"decision"`` (``d``) or ``"loss"`` (cross-entropy).
        method: ``"lanczos"`` (``k`` steps, full reorthogonalisation) or
            ``"power"`` (``top_k`` eigenvalues by deflated power iteration,
            ``iters`` products each).
        k: Lanczos steps.
        top_k: eigenvalues to return per example.
        iters: power-iteration steps per eigenvalue.
        seed: seed of the Gaussian start vectors (an int or a scalar tensor).

    Returns:
        :class:`HessianSpectrum`.
    """
    utils.check_choice("method", method, HESSIAN_METHODS)
    k = utils.check_positive_int("k", k)
    top_k = utils.check_positive_int("top_k", top_k)
    x = tf.convert_to_tensor(x)
    model = unwrap(model)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    op = linalg.hessian_operator(scalar_function(model, y, of), x)
    flat_shape = tf.stack([tf.shape(x)[0], tf.reduce_prod(tf.shape(x)[1:])])
    seed_pair = tf.cast(tf.stack([seed, 1]), tf.int64)
    v0 = tf.random.stateless_normal(flat_shape, seed=seed_pair, dtype=x.dtype)
    if method == "power":
        return HessianSpectrum(top=linalg.power_iteration(op, v0, iters, top_k))
    result = linalg.lanczos(op, v0, k)
    return HessianSpectrum(top=linalg.top_eigenvalues(result, min(top_k, k)), ritz=result.values,
                           weights=result.weights)


@dataclasses.dataclass
class IndicatorResult:
    """Per-example indicator values of one model on one set of inputs (numpy arrays ``[N]``)."""

    margin: np.ndarray
    normalised_margin: np.ndarray
    correct: np.ndarray
    jacobian: dict
    hessian: dict
    settings: dict
    seconds: float = 0.0

    def summary(self) -> dict:
        """JSON-friendly statistics: mean/median/quantiles of every per-example value."""
        out = {
            "clean_accuracy": float(np.mean(self.correct)),
            "margin": summarize(self.margin),
            "normalised_margin": summarize(self.normalised_margin),
            "jacobian": {name: summarize(v) for name, v in self.jacobian.items()},
        }
        hess = {}
        for of, values in self.hessian.items():
            entry = {"spectral_norm": summarize(np.abs(values["top"][:, 0])),
                     "top_eigenvalues_mean": [float(v) for v in np.mean(values["top"], axis=0)],
                     "top_abs_eigenvalues_mean": [float(v) for v in np.mean(np.abs(values["top"]), axis=0)]}
            if values.get("near_zero_share") is not None:
                entry["near_zero_share"] = summarize(values["near_zero_share"])
            hess[of] = entry
        out["hessian"] = hess
        return out


@tf.function(reduce_retracing=True)
def _first_order(model, x, y, threshold, relative, norm):
    d, grad = decision_and_gradient(model, x, y)
    stats = jacobian_statistics(grad, threshold=threshold, relative=relative)
    return d, normalised_margin(d, grad, norm), stats


@tf.function(reduce_retracing=True)
def _second_order(model, x, y, of, method, k, top_k, iters, eigen_threshold, relative, seed):
    spec = hessian_eigenvalues(model, x, y, of=of, method=method, k=k, top_k=top_k, iters=iters, seed=seed)
    share = spec.near_zero_share(eigen_threshold, relative)
    return spec.top, (share if share is not None else tf.zeros([0], x.dtype))


def _checked_settings(batch_size: int, jacobian_threshold: float, eigen_threshold: float, method: str, k: int,
                      top_k: int, hessian_of: Sequence[str]) -> tuple[int, int, int, tuple[str, ...]]:
    """``batch_size``, ``k``, ``top_k`` and ``hessian_of`` (a tuple) of :func:`robustness_indicator`, checked
    with the thresholds and ``method``; a ``ValueError`` names the first bad one."""
    batch_size = utils.check_positive_int("batch_size", batch_size)
    utils.check_positive("jacobian_threshold", jacobian_threshold, allow_zero=True)
    utils.check_positive("eigen_threshold", eigen_threshold, allow_zero=True)
    utils.check_choice("method", method, HESSIAN_METHODS)
    k = utils.check_positive_int("k", k)
    top_k = utils.check_positive_int("top_k", top_k)
    hessian_of = tuple(hessian_of)
    for of in hessian_of:
        utils.check_choice("hessian_of", of, HESSIAN_OF)
    return batch_size, k, top_k, hessian_of


def _float_inputs(x) -> tf.Tensor:
    """``x`` as a floating tensor (float32 if it was not floating); refuses one with no examples."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    if int(x.shape[0]) == 0:
        raise ValueError("x has no examples")
    return x


def _joined_hessians(hess_parts: dict, method: str) -> dict:
    """Per Hessian: the batches' top eigenvalues and (Lanczos only, else ``None``) near-zero shares, joined."""
    hessian = {}
    for of, batches in hess_parts.items():
        top = np.concatenate([p[0].numpy() for p in batches])
        share = np.concatenate([p[1].numpy() for p in batches]) if method == "lanczos" else None
        hessian[of] = {"top": top, "near_zero_share": share}
    return hessian


def robustness_indicator(
    model,
    x,
    y=None,
    *,
    batch_size: int = 50,
    jacobian_threshold: float = 1e-3,
    eigen_threshold: float = 1e-3,
    relative: bool = False,
    hessian_of: Sequence[str] = HESSIAN_OF,
    method: str = "lanczos",
    k: int = 20,
    top_k: int = 5,
    iters: int = 30,
    norm: str = "linf",
    seed: int = 0,
    progress: bool = False,
) -> IndicatorResult:
    """The robustness indicator of ``model`` over ``(x, y)``, without any attack.

    Args:
        model: classifier returning logits (a RobustModel is unwrapped).
        x: inputs ``[N, ...]``.
        y: integer labels ``[N]``; ``None`` uses the predictions.
        batch_size: examples per batch of products.
        jacobian_threshold: a Jacobian entry is near zero if ``|J_i| <=`` this.
        eigen_threshold: a Hessian eigenvalue is near zero if ``|λ| <=`` this.
        relative: both thresholds are fractions of the example's largest entry / ``|λ|``.
        hessian_of: which Hessians to measure (subset of :data:`HESSIAN_OF`).
        method: ``"lanczos"`` or ``"power"`` (power gives no near-zero share).
        k: Lanczos steps.
        top_k: eigenvalues kept per example.
        iters: power-iteration steps per eigenvalue.
        norm: threat norm for the normalised margin.
        seed: seed of the start vectors.
        progress: show a progress bar.

    Returns:
        :class:`IndicatorResult`.

    Raises:
        ValueError: naming a bad argument.
    """
    start = time.perf_counter()
    batch_size, k, top_k, hessian_of = _checked_settings(batch_size, jacobian_threshold, eigen_threshold, method,
                                                         k, top_k, hessian_of)
    model = unwrap(model)
    x = _float_inputs(x)
    n = int(x.shape[0])
    y = resolve_labels(model, x, y, targeted=False)

    parts: list = []
    hess_parts: dict = {of: [] for of in hessian_of}
    slices = list(utils.batches(n, batch_size))
    for i, s in enumerate(utils.progress(slices, enabled=progress, total=len(slices), desc="indicator")):
        parts.append(_first_order(model, x[s], y[s], jacobian_threshold, relative, norm))
        for of in hessian_of:
            batch_seed = tf.constant(seed * 100003 + i, tf.int64)
            hess_parts[of].append(_second_order(model, x[s], y[s], of, method, k, top_k, iters, eigen_threshold,
                                                relative, batch_seed))

    margin = np.concatenate([p[0].numpy() for p in parts])
    jac = {name: np.concatenate([p[2][name].numpy() for p in parts]) for name in parts[0][2]}
    hessian = _joined_hessians(hess_parts, method)
    settings = {"batch_size": batch_size, "jacobian_threshold": jacobian_threshold,
                "eigen_threshold": eigen_threshold, "relative_thresholds": relative,
                "hessian_of": list(hessian_of), "method": method, "lanczos_steps": k, "top_k": top_k,
                "power_iters": iters, "margin_norm": norm, "seed": seed}
    return IndicatorResult(margin=margin, normalised_margin=np.concatenate([p[1].numpy() for p in parts]),
                           correct=margin > 0, jacobian=jac, hessian=hessian, settings=settings,
                           seconds=time.perf_counter() - start)
