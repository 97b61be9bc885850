"""Certified accuracy of a smoothed classifier over a dataset (issue #21): the ``certify`` report.

Runs Cohen et al.'s CERTIFY (:func:`tfrobust.smoothing.certify`) on every example, a chunk of
examples at a time, each chunk written atomically into a resume directory when one is given (a
stopped run continues where it stopped; :class:`~tfrobust.evaluation.sharded.ChunkStore`), and
reports the certified accuracy at every L2 radius, the abstention rate and the seconds per example.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from tfrobust.evaluation.sharded import ChunkStore, chunk_slices, fingerprint, merge_chunks
from tfrobust.models import unwrap
from tfrobust.smoothing import ABSTAIN, certified_accuracy, certify
from tfrobust.utils import as_arrays, check_positive_int

__all__ = ["DEFAULT_RADII", "certify_dataset", "plot_certified_accuracy"]

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
"""The L2 radii of the report (Cohen et al.'s and the MNIST papers' grid)."""


def certify_dataset(model, x, y, *, sigma: float, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                    batch_size: int = 1000, seed: int = 0, radii: Sequence[float] = DEFAULT_RADII,
                    chunk: int = 10, resume: str | os.PathLike | None = None, progress: bool = True,
                    meta: dict | None = None) -> dict:
    """CERTIFY on every example of ``(x, y)``: certified accuracy per L2 radius, abstentions, time.

    Args:
        model: the base classifier (logits); a RobustModel is unwrapped.
        x, y: inputs in ``[0, 1]`` and integer labels.
        sigma: the noise level the smoothed classifier uses.
        n0: selection draws per example.
        n: estimation draws per example.
        alpha: the certificate fails with probability at most ``alpha`` per example.
        batch_size: noisy inputs per forward pass.
        seed: the noise seed (draws are keyed by example, so chunks change nothing).
        radii: the L2 radii to report the certified accuracy at.
        chunk: examples certified between two saves (and progress updates).
        resume: a directory where each finished chunk is written; rerunning continues.
        progress: show a progress bar.
        meta: extra top-level fields (model, dataset, split).

    Returns:
        The report: settings, ``certified_accuracy`` ``{radius: fraction}``, ``abstain_rate``,
        ``accuracy`` of the smoothed classifier (certified at radius 0), ``seconds_per_example``
        and the per-example ``radius``, ``prediction`` and ``label`` lists.

    Raises:
        ValueError: naming a bad argument, or a resume directory holding another run.
    """
    x, y = as_arrays(x, y)
    if y is None or len(x) == 0:
        raise ValueError("certify_dataset needs a non-empty (x, y)")
    chunk = check_positive_int("chunk", chunk)
    grid = [float(r) for r in radii]
    if not grid or any(not r >= 0 for r in grid):
        raise ValueError(f"radii={list(radii)!r} must be a non-empty list of radii >= 0")
    clf = unwrap(model)
    x, y = x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)
    settings = {"sigma": float(sigma), "n0": int(n0), "n": int(n), "alpha": float(alpha), "seed": int(seed),
                "chunk": chunk, "examples": len(x)}
    store = ChunkStore(resume, {} if resume is None else fingerprint(settings, x, y, clf.get_weights()))
    slices = chunk_slices(len(x), chunk)
    bar = tqdm(total=len(x), desc="certify", unit="img", disable=not progress, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    start, computed = time.time(), 0
    for c, s in enumerate(slices):
        if not store.done(c):
            t = time.perf_counter()
            classes, radius, p_lower = certify(clf, x[s], sigma, n0, n, alpha, batch_size, seed, clip=(0.0, 1.0))
            store.save(c, {"prediction": classes, "radius": radius, "p_a_lower": p_lower,
                           "seconds": np.full(len(classes), (time.perf_counter() - t) / len(classes))})
            computed += s.stop - s.start
        bar.update(s.stop - s.start)
    bar.close()
    arrays = merge_chunks([store.load(c) for c in range(len(slices))])
    correct = arrays["prediction"] == y
    return {**(meta or {}), **settings, "norm": "l2",
            "certified_accuracy": {f"{r:g}": float(a) for r, a in
                                   zip(grid, certified_accuracy(arrays["radius"], correct, grid))},
            "accuracy": float(correct.mean()),
            "abstain_rate": float((arrays["prediction"] == ABSTAIN).mean()),
            "seconds_per_example": float(np.median(arrays["seconds"])),
            "seconds": round(time.time() - start, 2), "examples_computed_this_run": int(computed),
            "radius": [float(r) for r in arrays["radius"]],
            "prediction": [int(p) for p in arrays["prediction"]], "label": [int(v) for v in y]}


def plot_certified_accuracy(reports: dict[str, dict], path, *, title: str = "") -> None:
    """Certified accuracy against L2 radius, one line per report (``{label: report}``), as a PNG."""
    from tfrobust.analysis.plots import figure_to_png, new_figure  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import atomic_write  # pylint: disable=import-outside-toplevel

    fig = new_figure(5.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    for label, report in reports.items():
        radii = np.asarray(report["radius"])
        correct = np.asarray(report["prediction"]) == np.asarray(report["label"])
        grid = np.linspace(0.0, max(2.0, float(radii.max()) * 1.05), 400)
        ax.plot(grid, certified_accuracy(radii, correct, grid),
                label=f"{label} (σ={report['sigma']:g}, n={report['n']:,})")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title or "randomized smoothing (Cohen et al. CERTIFY)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, figure_to_png(fig))
