"""Per-layer singular-value spectra: the regularisation view (Wen, Li, Jia 2020; docs/architecture.md).

Adversarial training makes each layer respond more evenly to input changes:
the singular values of its weight operator, and of its Jacobian at data points,
shrink and spread less. Two sources of spectra:

* **weights** (:func:`weight_spectrum`): the singular values of a Dense
  kernel exactly (SVD); for a convolution either of its kernel reshaped to a
  ``(kh·kw·c_in) x c_out`` matrix (``conv="kernel"``), or of the convolution as
  a linear operator on the layer's ``H x W`` input, exactly for circular
  padding through the 2-D Fourier transform (Sedghi, Gupta, Long 2019;
  ``conv="operator"``).
* **jacobian** (:func:`layer_jacobian_spectrum`): the top singular values of
  the Jacobian of a layer's output (after its activation) with respect to its
  input, at each data point, by Lanczos on ``JᵀJ`` built from a JVP followed
  by a VJP (:func:`~tfrobust.analysis.linalg.gram_operator`).

The *spread* of a spectrum (:func:`spread`) is summarised by its coefficient
of variation (std / mean) and the ratio of the largest to the median value.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

import keras
import numpy as np
import tensorflow as tf

from tfrobust.analysis import linalg
from tfrobust import utils
from tfrobust.models import unwrap

__all__ = [
    "SOURCES",
    "CONV_MODES",
    "spectral_layers",
    "weight_spectrum",
    "weight_spectra",
    "layer_jacobian_spectrum",
    "jacobian_spectra",
    "spread",
    "LayerSpectrum",
]

SOURCES = ("weights", "jacobian")
"""Where spectra come from."""

CONV_MODES = ("operator", "kernel")
"""How a convolution's weight spectrum is taken."""


def _kernel(layer) -> np.ndarray | None:
    kernel = getattr(layer, "kernel", None)
    return None if kernel is None else np.asarray(keras.ops.convert_to_numpy(kernel))


def spectral_layers(model) -> list:
    """The layers with a kernel (Dense and 2-D convolutions), in model order."""
    model = unwrap(model)
    out = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) in (2, 4):
            out.append(layer)
    return out


def _conv_operator_singular_values(kernel: np.ndarray, height: int, width: int) -> np.ndarray:
    """All singular values of a stride-1 circular 2-D convolution on ``height x width`` inputs.

    Sedghi et al. (2019): the operator is block-diagonalised by the 2-D DFT; its
    singular values are those of the ``c_in x c_out`` matrices of the kernel's
    transform at every frequency.
    """
    transform = np.fft.fft2(kernel, s=(height, width), axes=(0, 1))  # [H, W, c_in, c_out]
    return np.linalg.svd(transform, compute_uv=False).reshape(-1)


def weight_spectrum(layer, *, conv: str = "operator", input_shape=None) -> np.ndarray:
    """Singular values of a layer's weight operator, descending.

    Args:
        layer: a Dense-like layer (2-D kernel ``[in, out]``) or a 2-D convolution (kernel ``[kh, kw, in, out]``).
        conv: ``"operator"`` (circular convolution on the layer's input size; stride ignored) or ``"kernel"``.
        input_shape: the conv layer's ``(H, W, C)`` input; defaults to ``layer.input.shape``.

    Raises:
        ValueError: if the layer has no 2-D or 4-D kernel, or ``conv`` is unknown.
    """
    utils.check_choice("conv", conv, CONV_MODES)
    kernel = _kernel(layer)
    if kernel is None or kernel.ndim not in (2, 4):
        raise ValueError(f"layer {getattr(layer, 'name', layer)!r} has no Dense or Conv2D kernel")
    if kernel.ndim == 2:
        values = np.linalg.svd(kernel, compute_uv=False)
    elif conv == "kernel":
        values = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)
    else:
        shape = input_shape if input_shape is not None else tuple(layer.input.shape[1:])
        values = _conv_operator_singular_values(kernel, int(shape[0]), int(shape[1]))
    return np.sort(values)[::-1]


def weight_spectra(model, *, conv: str = "operator") -> dict[str, np.ndarray]:
    """``{layer name: singular values}`` for every Dense / Conv2D layer of ``model``."""
    return {layer.name: weight_spectrum(layer, conv=conv) for layer in spectral_layers(model)}


def _layer_input_model(model, layer):
    """A model mapping the network input to ``layer``'s input."""
    return keras.Model(model.inputs, layer.input)


def layer_jacobian_spectrum(model, layer, x, *, k: int = 10, steps: int | None = None, batch_size: int = 64,
                            seed: int = 0, progress: bool = False) -> np.ndarray:
    """Top-``k`` singular values of ``∂ layer(h) / ∂h`` at each data point, ``[N, k]`` descending.

    ``h`` is the layer's input when the network sees ``x``; the layer includes
    its own activation, so the Jacobian includes the activation pattern.

    Args:
        model: the classifier (a RobustModel is unwrapped); must be a Keras
            functional or Sequential model with ``inputs``.
        layer: one of its layers.
        x: inputs ``[N, ...]``.
        k: singular values returned (the largest).
        steps: Lanczos steps on ``JᵀJ``; default ``2 k + 2``, enough for the top
            ``k`` to converge in practice (the smallest Ritz values of a short run
            are not singular values: never read the tail of a ``k``-step run).
        batch_size: examples per batch.
        seed: seed of the start vectors.
        progress: show a progress bar.
    """
    return _jacobian_spectra(model, [layer], x, k=k, steps=steps, batch_size=batch_size, seed=seed,
                             progress=progress)[layer.name]


def jacobian_spectra(model, x, *, k: int = 10, steps: int | None = None, batch_size: int = 64, seed: int = 0,
                     progress: bool = False) -> dict[str, np.ndarray]:
    """``{layer name: [N, k] top singular values}`` of every Dense / Conv2D layer's Jacobian at ``x``.

    Arguments as in :func:`layer_jacobian_spectrum`.
    """
    return _jacobian_spectra(model, spectral_layers(model), x, k=k, steps=steps, batch_size=batch_size,
                             seed=seed, progress=progress)


_FEEDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _feeds(model, layers) -> tuple:
    """Models mapping the network input to each layer's input, cached per model."""
    cache = _FEEDS.setdefault(model, {})
    for layer in layers:
        if layer.name not in cache:
            cache[layer.name] = keras.Model(model.inputs, layer.input)
    return tuple(cache[layer.name] for layer in layers)


@tf.function(reduce_retracing=True)
def _spectra_step(layers, feeds, x, seed, k, steps):
    out = []
    for i, (layer, feed) in enumerate(zip(layers, feeds)):
        h = feed(x, training=False)
        op = linalg.gram_operator(functools.partial(layer, training=False), h)
        shape = tf.stack([tf.shape(h)[0], tf.reduce_prod(tf.shape(h)[1:])])
        v0 = tf.random.stateless_normal(shape, seed=tf.stack([seed, tf.constant(i, tf.int64)]), dtype=h.dtype)
        values = linalg.lanczos(op, v0, steps).values
        out.append(tf.sqrt(tf.maximum(tf.reverse(values, axis=[-1])[:, :k], 0.0)))
    return out


def _jacobian_spectra(model, layers, x, *, k, steps, batch_size, seed, progress) -> dict[str, np.ndarray]:
    model = unwrap(model)
    k = utils.check_positive_int("k", k)
    steps = 2 * k + 2 if steps is None else utils.check_positive_int("steps", steps)
    if steps < k:
        raise ValueError(f"steps={steps} must be at least k={k}")
    batch_size = utils.check_positive_int("batch_size", batch_size)
    layers = tuple(layers)
    feeds = _feeds(model, layers)
    x = tf.convert_to_tensor(x)
    slices = list(utils.batches(int(x.shape[0]), batch_size))
    parts = [[v.numpy() for v in _spectra_step(layers, feeds, x[s], tf.constant(seed * 100003 + i, tf.int64), k,
                                               steps)]
             for i, s in enumerate(utils.progress(slices, enabled=progress, desc="layer spectra"))]
    return {layer.name: np.concatenate([p[j] for p in parts]) for j, layer in enumerate(layers)}


def spread(values) -> dict:
    """Summary of a spectrum: max, mean, std, coefficient of variation, max / median."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    mean = float(v.mean())
    median = float(np.median(v))
    return {"max": float(v.max()), "mean": mean, "std": float(v.std()),
            "cv": float(v.std() / mean) if mean > 0 else 0.0,
            "max_over_median": float(v.max() / median) if median > 0 else float("inf")}


@dataclasses.dataclass
class LayerSpectrum:
    """A layer's spectrum and its spread, for JSON."""

    layer: str
    values: np.ndarray

    def to_dict(self, keep: int = 32) -> dict:
        """``{"layer", "top": first ``keep`` values, "count", **spread}``."""
        v = np.asarray(self.values).reshape(-1) if np.ndim(self.values) == 1 else np.mean(self.values, axis=0)
        return {"layer": self.layer, "top": [float(a) for a in v[:keep]], "count": int(np.size(self.values)),
                **spread(self.values)}
