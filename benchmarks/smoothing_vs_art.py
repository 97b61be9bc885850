"""Randomized-smoothing CERTIFY, ours against ART 1.20's ``TensorFlowV2RandomizedSmoothing`` (issue #21).

The same base classifier, the same points (the first N MNIST test images), the same σ, n0, n and
alpha go through ``tfrobust.smoothing.certify`` and through ART's
``TensorFlowV2RandomizedSmoothing(sample_size=n0, scale=σ, alpha=α).certify(x, n)``, one after the
other in one process, with the same TensorFlow thread settings.

Protocol (read off ART 1.20.1's ``RandomizedSmoothingMixin.certify``): both are Cohen et al.'s
CERTIFY. ART draws ``sample_size`` (= n0) noisy copies to select the class (argmax of the counts),
then n fresh copies to estimate, and bounds ``p_A`` with ``statsmodels``'
``proportion_confint(k, n, alpha=2α, method="beta")[0]``: the two-sided Clopper–Pearson interval at
2α, whose lower end is the one-sided bound at level α that ours computes
(``clopper_pearson_lower``; the two agree to float precision). Both abstain when the bound is
below 1/2 and certify ``σ Φ⁻¹(p_A_lower)`` otherwise, and neither clips the noisy inputs. The
differences are in the draws only: ART's noise is ``np.random.normal`` (the global NumPy generator,
seeded here with ``--seed``), ours is stateless TensorFlow noise keyed by ``(seed, example, draw)``;
so the radii can only agree within Monte-Carlo noise, never exactly. ART 1.20's
``TensorFlowV2Classifier.predict`` ignores its ``batch_size``: each of ART's two samples per
point is one compiled forward pass over all its copies (n at once); ours runs ``--batch`` noisy
inputs per forward pass.

Tolerance: the two runs are independent, so per point the radius difference has standard
deviation √2·sd(r), where sd(r) ≈ |dr/dk|·√(n p(1-p)) is the delta method on
``r(k) = σ Φ⁻¹(CP_lower(k, n, α))`` around the pooled count k̄ of the two runs (the derivative is
taken as a finite difference over ±√(n p(1-p)), at least ±1 draw and clipped at k = n, so that
points where nearly every draw is the top class, r at its cap σ Φ⁻¹(α^(1/n)), get a non-zero
spread; away from the cap this is σ·sd(p)/φ(Φ⁻¹(p))). A point agrees when both give the same
class or both abstain; its radii agree when |Δr| ≤ 3·√2·sd(r) (99.7% of points if the two are
the same procedure).

Timing: the first call of each (one point, the same n0 and n) traces its functions and is
reported separately as ``first_call_seconds``; the timed runs that follow are over the N points
and trace nothing, and the ratio is of these. They alternate in ``--rounds`` parts (ours, then
ART, on each part's points; the seconds summed), so that load from other jobs on the machine
falls on both alike; ours takes ``seed + part`` (its draws are keyed by the position in the
call), ART continues NumPy's generator. A bare compiled forward pass over n0 + n inputs per
point in batches of ``--batch`` (no noise, no counting) is the floor both share, and NumPy's
noise generation alone splits ART's time; both are timed on ``--noise-points`` points and
scaled to N.

Run in the benchmark environment (see ``benchmarks/requirements-peers.txt``; ART's certify needs
``statsmodels``)::

    .venv-bench/bin/python benchmarks/smoothing_vs_art.py --model runs/art_smooth_025/model.keras \\
        --points 100 --n 10000 --threads 1 --out benchmarks/results/smoothing_vs_art.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import tensorflow as tf
from scipy import special, stats

from common import hardware, write_result  # noqa: I001  (benchmarks/ is on sys.path when run as a script)
from tfrobust import data
from tfrobust.models import load_model, unwrap
from tfrobust.smoothing import ABSTAIN, certify
from tfrobust.smoothing.stats import clopper_pearson_lower
from tfrobust.utils import set_threads


def art_smoother(clf, input_shape, sigma: float, n0: int, alpha: float):
    """ART's TF2 randomized-smoothing estimator around the logits model ``clf`` (n0 = ``sample_size``)."""
    from art.estimators.certification.randomized_smoothing import (  # pylint: disable=import-outside-toplevel
        TensorFlowV2RandomizedSmoothing)

    return TensorFlowV2RandomizedSmoothing(
        model=clf, nb_classes=10, input_shape=tuple(input_shape), clip_values=(0.0, 1.0),
        sample_size=n0, scale=sigma, alpha=alpha)


def radius_of_count(k, n: int, alpha: float, sigma: float) -> np.ndarray:
    """``σ Φ⁻¹(CP_lower(k, n, α))`` for real-valued counts ``k`` (0 where the bound is ≤ 1/2)."""
    k = np.asarray(k, np.float64)  # Beta(k, n - k + 1)'s alpha quantile, as clopper_pearson_lower
    p = np.where(k > 0, special.betaincinv(np.maximum(k, 1e-12), n - k + 1.0, alpha), 0.0)
    return np.where(p > 0.5, sigma * stats.norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


def count_of_bound(p_lower, n: int, alpha: float) -> np.ndarray:
    """The count k whose Clopper–Pearson lower bound is ``p_lower`` (the bound is increasing in k)."""
    table = clopper_pearson_lower(np.arange(n + 1, dtype=np.int64), np.int64(n), alpha)
    k = np.clip(np.searchsorted(table, np.asarray(p_lower, np.float64) - 1e-12), 0, n)
    return k.astype(np.int64)


def radius_spread(k_mean, n: int, alpha: float, sigma: float) -> np.ndarray:
    """Delta-method standard deviation of one run's radius around the count ``k_mean`` (see the docstring)."""
    k_mean = np.asarray(k_mean, np.float64)
    p = k_mean / n
    s = np.maximum(np.sqrt(n * p * (1 - p)), 1.0)
    hi, lo = np.minimum(k_mean + s, n), np.maximum(k_mean - s, 0.0)
    slope = (radius_of_count(hi, n, alpha, sigma) - radius_of_count(lo, n, alpha, sigma)) / (hi - lo)
    return np.abs(slope) * s


def forward_floor(clf, x, draws: int, batch: int) -> float:
    """Seconds of compiled forward passes over ``len(x) * draws`` inputs in batches of ``batch``."""
    forward = tf.function(lambda v: tf.argmax(clf(v, training=False), axis=-1),
                          input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32)])
    total = len(x) * draws
    block = np.repeat(x[:1], batch, axis=0)
    forward(tf.constant(block))  # trace
    t = time.perf_counter()
    for start in range(0, total, batch):
        forward(tf.constant(block[: min(batch, total - start)]))
    return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a .keras MNIST smoothing base classifier")
    parser.add_argument("--points", type=int, default=100, help="first N MNIST test images")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=100, help="selection draws (ART's sample_size)")
    parser.add_argument("--n", type=int, default=10_000, help="estimation draws")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=1000, help="our noisy inputs per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="our noise seed and NumPy's (ART's) seed")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10, help="the timed runs alternate over this many parts")
    parser.add_argument("--noise-points", type=int, default=5,
                        help="points on which the forward floor and NumPy's noise are timed")
    parser.add_argument("--out", default="benchmarks/results/smoothing_vs_art.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    clf = unwrap(load_model(args.model))
    x_all, y_all = data.load("mnist", "test", args.points + 1)
    x_all = x_all.astype(np.float32)
    x, y = x_all[: args.points], y_all[: args.points]
    warm = x_all[args.points:]  # one more image, for the first (tracing) calls
    settings = {"sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha}

    # First calls: set-up and tracing, on the extra image.
    t = time.perf_counter()
    certify(clf, warm, batch_size=args.batch, seed=args.seed, **settings)
    ours_first = time.perf_counter() - t
    t = time.perf_counter()
    smoother = art_smoother(clf, x.shape[1:], args.sigma, args.n0, args.alpha)
    np.random.seed(args.seed)
    smoother.certify(warm, n=args.n, batch_size=args.batch)
    art_first = time.perf_counter() - t
    print(f"first call (1 point, tracing): tfrobust {ours_first:.2f} s, ART {art_first:.2f} s", file=sys.stderr)

    # Timed runs, alternating in rounds (ours, then ART, on the round's points) so that both see the
    # same mix of load from other jobs; ours takes seed + round (its draws are keyed by the position
    # in the call), ART continues NumPy's generator seeded once.
    np.random.seed(args.seed)
    ours_out, art_out, ours_s, art_s = [], [], 0.0, 0.0
    for r, part in enumerate(np.array_split(np.arange(len(x)), min(args.rounds, len(x)))):
        t = time.perf_counter()
        ours_out.append(certify(clf, x[part], batch_size=args.batch, seed=args.seed + r, **settings))
        ours_s += time.perf_counter() - t
        t = time.perf_counter()
        art_out.append(smoother.certify(x[part], n=args.n, batch_size=args.batch))
        art_s += time.perf_counter() - t
        print(f"round {r + 1}: {part[-1] + 1} points, tfrobust {ours_s:.1f} s, ART {art_s:.1f} s", file=sys.stderr)
    ours_class, ours_radius, ours_p = (np.concatenate(v) for v in zip(*ours_out, strict=True))
    art_class, art_radius = (np.concatenate(v) for v in zip(*art_out, strict=True))
    art_class, art_radius = art_class.astype(np.int64), art_radius.astype(np.float64)

    noise_points = min(args.noise_points, len(x))
    floor_s = forward_floor(clf, x[:noise_points], args.n0 + args.n, args.batch) / noise_points * len(x)
    rng = np.random.RandomState(args.seed)
    t = time.perf_counter()
    for _ in range(noise_points):  # what ART's _noisy_samples draws per point (n0 + n copies)
        (x[:1].repeat(args.n0 + args.n, 0) + rng.normal(scale=args.sigma, size=(args.n0 + args.n, *x.shape[1:]))
         .astype(np.float32))
    noise_s = (time.perf_counter() - t) / noise_points * len(x)

    # Per-point comparison. ART returns no counts: its count is read back from its radius.
    ours_k = count_of_bound(ours_p, args.n, args.alpha)
    art_p = np.where(art_class == ABSTAIN, np.nan, stats.norm.cdf(art_radius / args.sigma))
    art_k = np.where(art_class == ABSTAIN, -1, count_of_bound(np.nan_to_num(art_p, nan=0.0), args.n, args.alpha))
    same_class = ours_class == art_class
    both = same_class & (ours_class != ABSTAIN)
    delta = ours_radius - art_radius
    spread = np.sqrt(2.0) * radius_spread((ours_k + np.maximum(art_k, 0)) / 2.0, args.n, args.alpha, args.sigma)
    within = np.abs(delta) <= 3 * spread
    cap = float(radius_of_count(args.n, args.n, args.alpha, args.sigma))
    points = [
        {"index": i, "label": int(y[i]),
         "tfrobust": {"class": int(ours_class[i]), "radius": round(float(ours_radius[i]), 5), "count": int(ours_k[i])},
         "art": {"class": int(art_class[i]), "radius": round(float(art_radius[i]), 5),
                 "count": None if art_k[i] < 0 else int(art_k[i])},
         "agree": bool(same_class[i]), "radius_difference": round(float(delta[i]), 5),
         "difference_sd": round(float(spread[i]), 5), "within_3sd": bool(within[i])}
        for i in range(len(x))]
    d, sd = np.abs(delta[both]), spread[both]
    below = both & ~((ours_k == args.n) & (art_k == args.n))  # not both at the radius cap
    mean_se = float(np.sqrt(np.sum(sd ** 2)) / max(len(sd), 1))
    summary = {
        "points": len(x), "class_or_abstain_agree": round(float(same_class.mean()), 4),
        "both_certified_same_class": int(both.sum()),
        "abstain": {"tfrobust": int((ours_class == ABSTAIN).sum()), "art": int((art_class == ABSTAIN).sum())},
        "at_radius_cap": {"tfrobust": int((ours_k == args.n).sum()), "art": int((art_k == args.n).sum()),
                          "cap": round(cap, 4)},
        "max_abs_radius_difference": round(float(d.max()) if d.size else 0.0, 4),
        "median_abs_radius_difference": round(float(np.median(d)) if d.size else 0.0, 4),
        "median_predicted_difference_sd": round(float(np.median(sd)) if sd.size else 0.0, 4),
        "share_within_3sd": round(float(within[both].mean()) if d.size else 1.0, 4),
        "below_cap": {"points": int(below.sum()),
                      "median_abs_radius_difference": round(float(np.median(np.abs(delta[below]))), 4)
                      if below.any() else None,
                      "median_predicted_difference_sd": round(float(np.median(spread[below])), 4)
                      if below.any() else None,
                      "share_within_3sd": round(float(within[below].mean()), 4) if below.any() else None},
        "mean_radius_difference": round(float(delta[both].mean()) if d.size else 0.0, 5),
        "mean_radius_difference_se": round(mean_se, 5),
        "mean_radius": {"tfrobust": round(float(ours_radius.mean()), 4), "art": round(float(art_radius.mean()), 4)},
        "certified_accuracy_r0.5": {"tfrobust": round(float(((ours_class == y) & (ours_radius >= 0.5)).mean()), 4),
                                    "art": round(float(((art_class == y) & (art_radius >= 0.5)).mean()), 4)},
    }
    model_dir = Path(args.model).parent
    history = model_dir / "history.json"
    epochs = len(json.loads(history.read_text())["loss"]) if history.exists() else None
    result = {
        "hardware": hardware(), "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "model": args.model, "model_sha256": hashlib.sha256(Path(args.model).read_bytes()).hexdigest(),
        "model_epochs": epochs,
        "model_note": ("the recipe mnist_smooth_025's base classifier trained for model_epochs epochs only "
                       "(the recipe trains 90): the comparison is of two CERTIFY implementations on one fixed model"),
        "dataset": "mnist test, first N images", "points": len(x), **settings,
        "batch": args.batch, "seed": args.seed, "threads": args.threads, "rounds": min(args.rounds, len(x)),
        "art_version": metadata.version("adversarial-robustness-toolbox"),
        "statsmodels_version": metadata.version("statsmodels"), "tensorflow_version": tf.__version__,
        "seconds": {"tfrobust": round(ours_s, 2), "art": round(art_s, 2),
                    "tfrobust_per_point": round(ours_s / len(x), 4), "art_per_point": round(art_s / len(x), 4),
                    "first_call_seconds": {"tfrobust": round(ours_first, 2), "art": round(art_first, 2)},
                    "forward_floor": round(floor_s, 2), "art_numpy_noise_estimate": round(noise_s, 2)},
        "ratio_tfrobust_over_art": round(ours_s / art_s, 3), "speedup": round(art_s / ours_s, 2),
        "goal_speedup": 10.0,
        "summary": summary,
        "protocol": ("both Cohen et al.'s CERTIFY: n0 fresh draws select the class, n fresh draws bound p_A "
                     "(one-sided Clopper-Pearson at alpha; ART: statsmodels proportion_confint(alpha=2*alpha, "
                     "'beta') lower end, the same bound), abstain below 1/2, radius sigma*Phi^-1(p_A_lower), "
                     "noise unclipped. Differences: the draws (ART: np.random.normal, global generator seeded "
                     "with seed; ours: stateless TF noise keyed by seed, example and draw), so radii agree only "
                     "within Monte-Carlo noise; ART 1.20's TensorFlowV2Classifier.predict ignores batch_size "
                     "(one compiled forward pass over all n copies of a point), ours runs `batch` inputs per pass"),
        "timing_note": ("one timed run each on the same N points in one process, alternating in `rounds` "
                        "parts (ours then ART on each part, times summed; ours with seed + part), after one "
                        "first call each on image N (tracing and set-up, reported as first_call_seconds); "
                        "forward_floor: bare compiled forward passes over (n0+n) inputs per point in "
                        "batches of `batch`; "
                        "art_numpy_noise_estimate: NumPy drawing ART's N*(n0+n) noisy copies, timed on "
                        "noise_points points and scaled to N (both)"),
        "tolerance_note": ("difference_sd = sqrt(2) * delta-method sd of one run's radius at the pooled count "
                           "(finite difference over +-sqrt(n p (1-p)), at least 1 draw, clipped at k = n); "
                           "ART's count is read back from its radius"),
        "noise_points": noise_points,
        "per_point": points,
    }
    write_result(args.out, result, result["command"])
    print(json.dumps({"seconds": result["seconds"], "speedup": result["speedup"], "summary": summary}, indent=1),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
