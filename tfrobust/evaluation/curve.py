"""Robustness curves: one minimal-norm attack run gives the accuracy at every eps at once.

A minimal-norm attack (:mod:`tfrobust.attacks.minimal`) finds, per example, a
distance to the nearest adversarial input it can reach; the robust accuracy
at eps is then the share of examples whose distance exceeds eps. That share
is an *upper bound* like any attack's result, so it must never lie above the
worst case of the bounded attacks at an eps both measured; where it does, the
minimal-norm attack was the weaker one there and the report says so.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfrobust.attacks import SPECS, Budget, eval_attack
from tfrobust.utils import batches

__all__ = [
    "CURVE_ATTACKS",
    "MINIMAL_ATTACKS",
    "CERTIFIED_CURVES",
    "check_curve_attack",
    "minimal_distances",
    "accuracy_at",
    "curve_report",
    "plot_curve",
]

MINIMAL_ATTACKS = tuple(e.name for s in SPECS if s.minimal for e in s.evaluations)
"""The evaluation entries of the minimal-norm attacks (read off the registry): each can draw a curve,
and ``+`` joins several into one that keeps the smaller distance per example."""

CURVE_ATTACKS = MINIMAL_ATTACKS + ("fmn+fab", "fmn+fab-t")
"""The curves the command line lists: each minimal-norm attack, and ``fmn+fab`` (the strongest we
have: on a 10-class MNIST CNN, 100 steps of untargeted FAB cost about a third of FAB-T's 9 targets).
Any other ``+`` join of :data:`MINIMAL_ATTACKS` is accepted too."""

CERTIFIED_CURVES = ("certified-ibp", "certified-crown-ibp")
"""Curves from certified radii (:func:`tfrobust.evaluation.certified_radii`): certified accuracy at every
eps, a lower bound that must never lie above an attack's worst case."""

_GRID = 101


def check_curve_attack(name: str) -> str:
    """Returns ``name`` if a curve can be drawn from it: a certified curve, or one or more distinct
    minimal-norm attacks joined by ``+``.

    Raises:
        ValueError: naming the bad value and the choices.
    """
    parts = name.split("+") if isinstance(name, str) else [name]
    if name not in CERTIFIED_CURVES and (len(set(parts)) != len(parts)
                                         or any(p not in MINIMAL_ATTACKS for p in parts)):
        raise ValueError(f"curve attack {name!r} is unknown; choose one of "
                         f"{', '.join(CURVE_ATTACKS + CERTIFIED_CURVES)} (or join minimal-norm attacks with '+')")
    return name


def _distance_fn(model, config, clip, x: np.ndarray):
    @tf.function(input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32),
                                  tf.TensorSpec([None], tf.int64)])
    def run(xb, yb):
        return config.minimal(model, xb, yb, clip=clip)[1]
    return run


def minimal_distances(model, x: np.ndarray, y: np.ndarray, attack: str, budget: Budget, *,
                      batch_size: int = 250, clip=(0.0, 1.0), progress: bool = True) -> np.ndarray:
    """Per example, the smallest adversarial distance ``attack`` found (``budget.norm``).

    ``0`` where ``x`` is misclassified, ``inf`` where nothing adversarial was
    found. FAB-T runs every target of the budget on every example and keeps the
    smallest distance (unlike the cascade stage, which stops at the first success).

    Args:
        model: a classifier returning logits.
        x, y: float32 inputs in ``clip`` and integer labels.
        attack: one of :data:`CURVE_ATTACKS`.
        budget: steps, targets and norm of the attacks.
        batch_size: examples per batch.
        clip: valid input range.
        progress: show a progress bar.

    Returns:
        float64 array of shape ``[len(x)]``.
    """
    check_curve_attack(attack)
    names = attack.split("+")
    configs = [c for name in names for c in eval_attack(name).configs(math.inf, budget)]
    best = np.full(len(x), np.inf)
    with tqdm(total=len(configs) * len(x), desc=f"curve {attack}", unit="img", disable=not progress,
              mininterval=1.0) as bar:
        for config in configs:
            fn = _distance_fn(model, config, clip, x)
            for s in batches(len(x), batch_size):
                d = fn(tf.constant(x[s], tf.float32), tf.constant(y[s], tf.int64)).numpy()
                best[s] = np.minimum(best[s], d)
                bar.update(s.stop - s.start)
    return best


def accuracy_at(distances: np.ndarray, eps) -> np.ndarray:
    """Robust accuracy at each ``eps``: the share of examples whose distance exceeds it."""
    d = np.asarray(distances, float)[None, :]
    return (d > np.asarray(eps, float).reshape(-1, 1)).mean(axis=1)


def curve_report(distances: np.ndarray, attack: str, worst_case: Mapping[str, float],
                 eps_values: Mapping[str, float], *, clip=(0.0, 1.0), tolerance: float = 0.0) -> dict:
    """The ``curve`` block of an evaluation report.

    Args:
        distances: per-example distances from :func:`minimal_distances`.
        attack: the minimal-norm attack that found them.
        worst_case: the bounded attacks' worst-case accuracy per eps key.
        eps_values: eps key -> value.
        clip: valid input range (the grid runs from 0 to its width).
        tolerance: how far the curve may lie above the worst case before it is reported.

    Returns:
        ``{"attack", "distances" (None for inf), "median_distance", "found", "eps", "accuracy",
        "at_eps", "disagreements"}``.
    """
    d = np.asarray(distances, float)
    finite = d[np.isfinite(d)]
    top = float(np.max(finite)) * 1.05 if len(finite) and np.max(finite) > 0 else float(clip[1] - clip[0])
    grid = np.linspace(0.0, top, _GRID)
    at_eps = {k: float(accuracy_at(d, [v])[0]) for k, v in eps_values.items()}
    note = ("certified accuracy above an attack's: a soundness bug in the bound" if attack in CERTIFIED_CURVES
            else "the minimal-norm attack missed adversarial inputs the bounded attacks found here")
    disagreements = [
        {"eps": k, "curve": at_eps[k], "worst_case": float(worst_case[k]), "note": note}
        for k in eps_values if k in worst_case and at_eps[k] > float(worst_case[k]) + tolerance]
    return {"attack": attack, "distances": [float(v) if np.isfinite(v) else None for v in d],
            "median_distance": float(np.median(d)), "found": float(np.isfinite(d).mean()),
            "eps": grid.tolist(), "accuracy": accuracy_at(d, grid).tolist(), "at_eps": at_eps,
            "disagreements": disagreements}


def plot_curve(report: dict, path, *, worst_case: Mapping[str, float] | None = None,
               eps_values: Mapping[str, float] | None = None, title: str = "") -> None:
    """Writes the accuracy-vs-eps curve of ``report`` (and the bounded worst cases as points) to a PNG."""
    from tfrobust.analysis.plots import figure_to_png, new_figure  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import atomic_write  # pylint: disable=import-outside-toplevel

    fig = new_figure(5.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    what = "certified radius" if report["attack"] in CERTIFIED_CURVES else "per-example distance"
    ax.plot(report["eps"], report["accuracy"], label=f"{report['attack']} ({what})")
    if worst_case and eps_values:
        keys = [k for k in eps_values if k in worst_case]
        ax.scatter([eps_values[k] for k in keys], [worst_case[k] for k in keys], color="C3", zorder=3,
                   label="bounded attacks, worst case")
    ax.axvline(report["median_distance"], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("eps")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title or f"median distance {report['median_distance']:.3g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, figure_to_png(fig))
