"""Verified accuracy by bound propagation beside the attacks, and the check that ties them together."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrobust import bounds
from tfrobust.utils import batches, check_choice

__all__ = ["verified_examples", "certified_radii", "soundness_check"]


def _verifier(model, method: str, clip):
    @tf.function(reduce_retracing=True)
    def verify(xb, yb, eps):
        return bounds.verified(model, xb, yb, eps, method=method, clip=clip)
    return verify


def verified_examples(model, x: np.ndarray, y: np.ndarray, eps_list, *, method: str = "ibp",
                      clip=(0.0, 1.0), batch_size: int = 250, bar=None) -> dict[str, np.ndarray]:
    """Per eps key, which examples the bound proves correct everywhere in the L∞ ball.

    Args:
        model: the logits classifier.
        x, y: inputs and integer labels.
        eps_list: ``[(key, value), ...]``.
        method: ``"ibp"`` or ``"crown-ibp"``.
        clip: the valid input range.
        batch_size: examples per bound computation.
        bar: a progress bar to advance by the examples done, or ``None``.
    """
    check_choice("method", method, bounds.BOUND_METHODS)
    verify = _verifier(model, method, clip)
    out = {}
    for key, value in eps_list:
        parts = []
        for s in batches(len(x), batch_size):
            parts.append(verify(tf.constant(x[s]), tf.constant(y[s]), tf.constant(value, tf.float32)).numpy())
            if bar is not None:
                bar.update(len(parts[-1]))
        out[key] = np.concatenate(parts)
    return out


def certified_radii(model, x: np.ndarray, y: np.ndarray, *, method: str = "ibp", clip=(0.0, 1.0),
                    max_eps: float = 1.0, tolerance: float = 1.0 / 512, batch_size: int = 250) -> np.ndarray:
    """Per example the certified L∞ radius of the true label: 0 where the prediction is wrong."""
    check_choice("method", method, bounds.BOUND_METHODS)

    @tf.function(reduce_retracing=True)
    def radius(xb):
        return bounds.certified_radius(model, xb, method=method, clip=clip, max_eps=max_eps, tolerance=tolerance)

    radii = []
    for s in batches(len(x), batch_size):
        r, predicted = radius(tf.constant(x[s]))
        radii.append(np.where(predicted.numpy() == y[s], r.numpy(), 0.0))
    return np.concatenate(radii)


def soundness_check(verified: dict[str, np.ndarray], robust: dict[str, np.ndarray]) -> dict:
    """Fails when an example is verified at an eps where an attack broke it: a bug in the bound.

    ``robust[key]`` is the per-example worst case over the attacks (correct under every one).
    """
    broken = {key: int(np.sum(verified[key] & ~robust[key])) for key in verified if key in robust}
    bad = {key: n for key, n in broken.items() if n}
    detail = ("no verified example was broken by an attack"
              if not bad else "verified yet broken by an attack: "
              + ", ".join(f"{n} at eps {key}" for key, n in bad.items()) + " (a soundness bug in the bound)")
    return {"name": "verified_within_worst_case", "passed": not bad, "detail": detail}
