"""Input-gradient (Jacobian) saliency maps through tf-keras-vis: Saliency and SmoothGrad.

The score is the decision function ``d = z_y - max_{i≠y} z_i`` of each input's
label (or its logit ``z_y``), so a map shows ``|∂d/∂x|``: the input Jacobian
that the robustness indicator measures. Robust models are known to have
sparser, more object-aligned input gradients.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfrobust import losses
from tfrobust import utils
from tfrobust.models import unwrap

__all__ = ["METHODS", "SCORES", "saliency_maps", "plot_saliency"]

METHODS = ("saliency", "smoothgrad")
"""Saliency methods: vanilla gradient, SmoothGrad (Smilkov et al. 2017)."""

SCORES = ("decision", "logit")
"""What a map differentiates: the decision function ``d`` or the logit ``z_y``."""


def saliency_maps(model, x, y, *, method: str = "saliency", score: str = "decision",
                  smooth_samples: int = 20, smooth_noise: float = 0.2, normalize: bool = False,
                  seed: int = 0) -> np.ndarray:
    """``|∂ score / ∂x|`` per input, reduced over channels, by tf-keras-vis.

    Args:
        model: classifier returning logits (a RobustModel is unwrapped).
        x: inputs ``[N, H, W, C]``.
        y: integer labels ``[N]``.
        method: ``"saliency"`` or ``"smoothgrad"``.
        score: ``"decision"`` or ``"logit"``.
        smooth_samples: noisy copies per input (SmoothGrad).
        smooth_noise: noise standard deviation relative to the input range (SmoothGrad).
        normalize: scale each map to ``[0, 1]`` (tf-keras-vis' default); off
            by default so maps of different models stay comparable.
        seed: seed of SmoothGrad's noise.

    Returns:
        Maps ``[N, H, W]`` (absolute values, max over channels).
    """
    from tf_keras_vis.saliency import Saliency  # pylint: disable=import-outside-toplevel

    utils.check_choice("method", method, METHODS)
    utils.check_choice("score", score, SCORES)
    model = unwrap(model)
    x = np.asarray(x, dtype=np.float32)
    labels = tf.constant(np.asarray(y).reshape(-1), tf.int32)

    def score_fn(output):
        if score == "logit":
            return tf.gather(output, labels, axis=1, batch_dims=1)
        return losses.decision_margin(output, labels)

    tf.random.set_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras 3 warns about the list-wrapped input
        saliency = Saliency(model, clone=False)
        kwargs: dict[str, Any] = {"normalize_map": normalize}
        if method == "smoothgrad":
            kwargs.update(smooth_samples=int(smooth_samples), smooth_noise=float(smooth_noise))
        maps = saliency(score_fn, x, **kwargs)
    return np.asarray(maps, dtype=np.float32)


def plot_saliency(models: Mapping[str, object], x, y, *, methods: Sequence[str] = METHODS,
                  score: str = "decision", smooth_samples: int = 20, smooth_noise: float = 0.2,
                  title: str | None = None):
    """Saliency maps of several models side by side.

    One row per input; the first column shows the input, then one column per
    (model, method). Each map is scaled by its own maximum, which is printed
    in its corner (so the sizes of the gradients compare across models).

    Args:
        models: ``{name: model}``.
        x: inputs ``[N, H, W, C]``.
        y: labels ``[N]``.
        methods: subset of :data:`METHODS`.
        score: see :func:`saliency_maps`.
        smooth_samples: SmoothGrad samples.
        smooth_noise: SmoothGrad noise level.
        title: figure title.

    Returns:
        The figure.
    """
    from tfrobust.analysis.plots import new_figure  # pylint: disable=import-outside-toplevel

    for m in methods:
        utils.check_choice("method", m, METHODS)
    x = np.asarray(x, dtype=np.float32)
    columns = [(name, m) for name in models for m in methods]
    maps = {(name, m): saliency_maps(models[name], x, y, method=m, score=score, smooth_samples=smooth_samples,
                                     smooth_noise=smooth_noise)
            for name, m in columns}
    n = x.shape[0]
    fig = new_figure(1.7 * (len(columns) + 1), 1.75 * n + 0.6)
    for i in range(n):
        ax = fig.add_subplot(n, len(columns) + 1, i * (len(columns) + 1) + 1)
        img = x[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        if i == 0:
            ax.set_title("input", fontsize=8)
        for j, key in enumerate(columns):
            ax = fig.add_subplot(n, len(columns) + 1, i * (len(columns) + 1) + j + 2)
            m = maps[key][i]
            ax.imshow(m, cmap="inferno", vmin=0.0, vmax=max(float(m.max()), 1e-12))
            ax.set_axis_off()
            if i == 0:
                ax.set_title(f"{key[0]}\n{key[1]}", fontsize=8)
            ax.text(0.02, 0.02, f"max {m.max():.2g}", transform=ax.transAxes, color="w", fontsize=6)
    fig.suptitle(title or f"|∂{'d' if score == 'decision' else 'z_y'}/∂x| saliency (tf-keras-vis)", fontsize=10)
    fig.tight_layout()
    return fig
