"""Monte-Carlo counts of a base classifier under Gaussian noise, and Cohen et al.'s PREDICT and CERTIFY."""

from __future__ import annotations

import weakref
from typing import Callable

import numpy as np
import tensorflow as tf
from scipy import stats

from tfrobust import losses
from tfrobust.attacks.base import prepare_inputs
from tfrobust.smoothing.stats import (binomial_test_two_sided, check_alpha, clopper_pearson_lower,
                                      clopper_pearson_lower_tf)
from tfrobust.utils import check_positive, check_positive_int

__all__ = [
    "ABSTAIN",
    "MAX_SEED",
    "NOISE_BLOCK",
    "check_seed",
    "noise_seeds",
    "block_noise",
    "sample_counts",
    "predict",
    "certify",
    "smoothed_radius",
    "certified_accuracy",
    "certify_graph",
]

ABSTAIN = -1
"""The class :func:`predict` and :func:`certify` return when they abstain."""

MAX_SEED = 2 ** 31 - 1
"""Largest seed: the stateless seed of each draw packs ``(seed, example)`` into one int64."""

NOISE_BLOCK = 64
"""Draws per stateless noise block: one random op serves 64 draws of one example."""

SELECTION, ESTIMATION = 0, 1  # the noise streams of CERTIFY's two samples

_COUNTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def check_seed(seed) -> int:
    """Returns ``seed`` if it is an integer in ``[0, MAX_SEED]``, else raises ValueError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed!r} must be an integer in [0, {MAX_SEED}]")
    return int(seed)


def noise_seeds(example: tf.Tensor, block: tf.Tensor, seed: tf.Tensor, stream: tf.Tensor) -> tf.Tensor:
    """Stateless seeds ``[k, 2]`` of noise blocks ``(example, block)``, independent of the batching."""
    return tf.stack([seed * 2 ** 32 + example, stream * 2 ** 40 + block], axis=1)


def block_noise(example: tf.Tensor, sample: tf.Tensor, n: tf.Tensor, seed: tf.Tensor, stream: tf.Tensor,
                spec: tf.TensorSpec) -> tf.Tensor:
    """Standard normal noise of draws ``(example, sample)`` (consecutive in flattened order).

    Draw ``j`` of example ``i`` is row ``j mod NOISE_BLOCK`` of one ``stateless_normal`` block seeded
    by ``(seed, i, j // NOISE_BLOCK, stream)``: the blocks the draws touch are generated (one op
    each) and the rows gathered, so a draw's noise never depends on which forward batch holds it.
    """
    per_example = (n + NOISE_BLOCK - 1) // NOISE_BLOCK
    block = example * per_example + sample // NOISE_BLOCK  # global block id, non-decreasing
    ids = tf.range(block[0], block[-1] + 1)
    shape = [NOISE_BLOCK, *spec.shape]
    blocks = tf.map_fn(lambda s: tf.random.stateless_normal(shape, s, dtype=spec.dtype),
                       noise_seeds(ids // per_example, ids % per_example, seed, stream),
                       fn_output_signature=tf.TensorSpec(shape, spec.dtype))
    rows = tf.reshape(blocks, [-1, *spec.shape])
    return tf.gather(rows, (block - block[0]) * NOISE_BLOCK + sample % NOISE_BLOCK)


def _count_function(get_model: Callable, num_classes: int, example: tf.TensorSpec) -> Callable:
    scalars = [tf.TensorSpec([], example.dtype)] + [tf.TensorSpec([], tf.int64)] * 4

    @tf.function(input_signature=[tf.TensorSpec([None, *example.shape], example.dtype), *scalars])
    def count(x, sigma, n, batch_size, seed, stream):
        total = tf.cast(tf.shape(x)[0], tf.int64) * n

        def body(start, counts):
            t = tf.range(start, tf.minimum(start + batch_size, total))
            index, sample = t // n, t % n
            noise = block_noise(index, sample, n, seed, stream, example)
            logits = losses.logits_of(get_model(), tf.gather(x, index) + sigma * noise, False)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int64)
            counts = tf.tensor_scatter_nd_add(counts, tf.stack([index, predicted], 1), tf.ones_like(index))
            return start + batch_size, counts

        counts = tf.zeros(tf.stack([tf.shape(x, out_type=tf.int64)[0], num_classes]), tf.int64)
        _, counts = tf.while_loop(lambda start, _: start < total, body, (tf.constant(0, tf.int64), counts))
        return counts

    return count


def _counter(model: Callable, num_classes: int, example: tf.TensorSpec) -> Callable:
    """The traced counting loop of ``model``, one per (classes, example shape, dtype), kept with it."""
    try:
        table = _COUNTERS.setdefault(model, {})
    except TypeError:  # not weak-referenceable: trace afresh
        return _count_function(lambda: model, num_classes, example)
    key = (num_classes, tuple(example.shape), example.dtype)
    if key not in table:  # a weak reference, so that the cache does not keep the model alive
        table[key] = _count_function(weakref.ref(model), num_classes, example)
    return table[key]


def sample_counts(model: Callable, x, sigma: float, n: int, batch_size: int = 1000, seed: int = 0, *,
                  clip: tuple[float, float] | None = (0.0, 1.0), stream: int = 0) -> np.ndarray:
    """Class counts of ``f(x + N(0, σ² I))`` over ``n`` draws per example.

    Draw ``j`` of example ``i`` comes from the stateless seed ``(seed, i, j // NOISE_BLOCK, stream)``
    (:func:`block_noise`), so the counts depend on ``seed`` and not on ``batch_size``, which only
    sets how many noisy inputs (from any examples) one forward pass takes. The noise is drawn in-graph
    and is not clipped (Cohen et al.); the model runs in inference mode.

    Args:
        model: the base classifier, mapping inputs to logits.
        x: a batch of inputs ``[B, ...]`` inside ``clip``.
        sigma: noise standard deviation, in input units.
        n: draws per example.
        batch_size: noisy inputs per forward pass.
        seed: integer in ``[0, MAX_SEED]``.
        clip: the valid input range, checked on ``x`` (eagerly); ``None`` skips the check.
        stream: separates independent samples of one seed (CERTIFY's selection and estimation).

    Returns:
        int64 array ``[B, C]``; each row sums to ``n``.

    Raises:
        ValueError: naming a bad ``sigma``, ``n``, ``batch_size``, ``seed``, clip range or input.
    """
    sigma = check_positive("sigma", sigma)
    n, batch_size = check_positive_int("n", n), check_positive_int("batch_size", batch_size)
    seed, stream = check_seed(seed), check_seed(stream)
    x = prepare_inputs(model, x, clip=clip, norm="l2")
    if x.shape.rank is None or x.shape.rank < 2 or x.shape[0] == 0:
        raise ValueError(f"x of shape {tuple(x.shape)} must be a non-empty batch [B, ...]")
    num_classes = int(losses.logits_of(model, x[:1], False).shape[-1])
    counter = _counter(model, num_classes, tf.TensorSpec(x.shape[1:], x.dtype))
    integers = (tf.constant(v, tf.int64) for v in (n, batch_size, seed, stream))
    counts = counter(x, tf.constant(sigma, x.dtype), *integers)
    return counts.numpy()


def predict(model: Callable, x, sigma: float, n: int, alpha: float, batch_size: int = 1000, seed: int = 0, *,
            clip: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
    """Cohen et al.'s PREDICT: ``g(x)`` per example, or :data:`ABSTAIN`.

    Counts ``n`` noisy predictions and returns the top class unless the two-sided binomial test
    of the top-2 counts (``n_A`` of ``n_A + n_B`` under ``p = 1/2``) has a p-value above
    ``alpha``. The returned class differs from ``g(x)`` with probability at most ``alpha``.

    Returns:
        int64 array ``[B]`` of classes or ``ABSTAIN``.
    """
    alpha = check_alpha(alpha)
    counts = sample_counts(model, x, sigma, n, batch_size, seed, clip=clip)
    order = np.argsort(-counts, axis=1, kind="stable")
    rows = np.arange(len(counts))
    top = counts[rows, order[:, 0]]
    second = counts[rows, order[:, 1]] if counts.shape[1] > 1 else np.zeros_like(top)
    p_value = binomial_test_two_sided(top, top + second)
    return np.where(p_value > alpha, ABSTAIN, order[:, 0]).astype(np.int64)


def smoothed_radius(p_lower, sigma: float) -> np.ndarray:
    """The certified L2 radius ``σ Φ⁻¹(p_lower)`` (0 where ``p_lower <= 1/2``)."""
    p_lower = np.asarray(p_lower, np.float64)
    return np.where(p_lower > 0.5, sigma * stats.norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)


def certify(model: Callable, x, sigma: float, n0: int, n: int, alpha: float, batch_size: int = 1000,
            seed: int = 0, *, clip: tuple[float, float] | None = (0.0, 1.0)
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cohen et al.'s CERTIFY: the class of ``g``, a certified L2 radius, and the bound on ``p_A``.

    The top class of ``n0`` draws (selection) is the guess ``c_A``; ``n`` fresh draws (estimation,
    another noise stream of the same seed) give ``p_A_lower``, the one-sided Clopper–Pearson
    bound at confidence ``1 - alpha`` on ``P(f(x + noise) = c_A)``. Below 1/2 it abstains
    (class ``ABSTAIN``, radius 0); otherwise, with probability at least ``1 - alpha``, ``g``
    predicts ``c_A`` everywhere within ``σ Φ⁻¹(p_A_lower)`` of ``x`` in L2.

    Returns:
        ``(classes, radii, p_a_lower)``: int64, float64 and float64 arrays ``[B]``.

    Raises:
        ValueError: naming a bad ``sigma``, ``n0``, ``n``, ``alpha``, ``batch_size``, ``seed`` or input.
    """
    alpha = check_alpha(alpha)
    check_positive_int("n0", n0)
    selection = sample_counts(model, x, sigma, n0, batch_size, seed, clip=clip, stream=SELECTION)
    guess = np.argmax(selection, axis=1)
    estimation = sample_counts(model, x, sigma, n, batch_size, seed, clip=clip, stream=ESTIMATION)
    p_lower = clopper_pearson_lower(estimation[np.arange(len(guess)), guess], np.int64(n), alpha)
    abstain = p_lower < 0.5
    classes = np.where(abstain, ABSTAIN, guess).astype(np.int64)
    return classes, np.where(abstain, 0.0, smoothed_radius(p_lower, sigma)), p_lower


def certified_accuracy(radii, correct, radii_grid) -> np.ndarray:
    """Certified accuracy at each radius of ``radii_grid``: the share of examples correct with radius ≥ r.

    Args:
        radii: certified radius per example (0 where it abstained).
        correct: whether the certified class is the label (false where it abstained).
        radii_grid: non-negative radii to evaluate.

    Returns:
        float64 array, one fraction per entry of ``radii_grid``.
    """
    radii, correct = np.asarray(radii, np.float64).reshape(-1), np.asarray(correct, bool).reshape(-1)
    grid = np.asarray(radii_grid, np.float64).reshape(-1)
    if radii.shape != correct.shape or radii.size == 0:
        raise ValueError(f"radii ({radii.size}) and correct ({correct.size}) must have one equal, "
                         "non-zero length")
    if np.any(grid < 0) or np.any(~np.isfinite(grid)):
        raise ValueError(f"radii_grid={radii_grid!r} must be finite and non-negative")
    return (correct[None, :] & (radii[None, :] >= grid[:, None])).mean(axis=1)


def certify_graph(model: Callable, x: tf.Tensor, sigma: float, n0: int, n: int, alpha: float,
                  batch_size: int, seed: tf.Tensor, num_classes: int) -> dict[str, tf.Tensor]:
    """:func:`certify` in TensorFlow ops only, for the served ``smoothed`` signature.

    The same draws as :func:`certify` for the same integer ``seed`` (example ``i`` of ``x`` is
    example ``i`` of the noise), and the Clopper–Pearson bound by bisection
    (:func:`~tfrobust.smoothing.stats.clopper_pearson_lower_tf`).

    Args:
        model: the base classifier (logits).
        x: float32 inputs ``[B, ...]`` (static per-example shape).
        sigma, n0, n, alpha, batch_size: as :func:`certify` (Python numbers, checked by the caller).
        seed: an int64 scalar tensor (a fixed seed, or one drawn per request).
        num_classes: the model's number of classes.

    Returns:
        ``{"smoothed_class": int64 [B] (ABSTAIN = -1), "certified_radius_l2": float32 [B],
        "p_a_lower": float32 [B]}``.
    """
    count = _counter(model, num_classes, tf.TensorSpec(x.shape[1:], x.dtype))
    common = (tf.constant(batch_size, tf.int64), tf.cast(seed, tf.int64))
    sigma_t = tf.constant(sigma, x.dtype)
    selection = count(x, sigma_t, tf.constant(n0, tf.int64), *common, tf.constant(SELECTION, tf.int64))
    guess = tf.argmax(selection, axis=1, output_type=tf.int64)
    estimation = count(x, sigma_t, tf.constant(n, tf.int64), *common, tf.constant(ESTIMATION, tf.int64))
    k = tf.gather(estimation, guess, axis=1, batch_dims=1)
    p_lower = clopper_pearson_lower_tf(k, n, alpha)
    certified = p_lower >= 0.5
    radius = tf.where(p_lower > 0.5, sigma * tf.math.ndtri(tf.clip_by_value(p_lower, 0.5, 1.0)), 0.0)
    return {"smoothed_class": tf.where(certified, guess, tf.constant(ABSTAIN, tf.int64)),
            "certified_radius_l2": tf.cast(radius, tf.float32), "p_a_lower": tf.cast(p_lower, tf.float32)}
