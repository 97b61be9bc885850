"""Median training-step time of each objective on the MNIST CNN, in one run.

Every method trains its own copy of ``tfrobust.models.mnist_cnn()`` (same
initial weights) on one fixed synthetic batch through Keras' compiled train
function (``model.train_on_batch``; its numpy logs force the step to finish
before the clock stops). After warm-up (tracing and one step) the methods are
timed round-robin, one step each per round with the order rotated every round,
so that load from other processes on a shared machine falls on all of them
alike. Reported: the median step time per method, the ratio of medians to
natural training, and the median of per-round ratios (robust to slow drifts in
load).

Floors (issue #14): three bare parts are timed in the same rounds, compiled, on
the same batch and weights: ``forward`` (inference), ``attack_pass`` (forward +
input gradient of the summed CE: one attack step without the projection) and
``double_backprop_pass`` (forward, input gradient of the decision margin, and
the weight gradient of its L1 norm: the penalty's work without CE or update).
Each objective's floor is built from them with shared forward passes counted
once (:data:`FLOORS`), and ``ratio_to_floor`` is the step's median over it.

Usage::

    python benchmarks/step_time.py [--repeats 20] [--warmup 2] [--batch 128] [--threads N] \
        [--out benchmarks/results/step_time.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hardware, write_result  # noqa: E402

from tfrobust import models  # noqa: E402
from tfrobust import objectives as O  # noqa: E402
from tfrobust.attacks import AttackConfig  # noqa: E402
from tfrobust.utils import set_threads  # noqa: E402

EPS = 0.3
PGD10 = AttackConfig(name="pgd", eps=EPS, steps=10, step_size=2.5 * EPS / 10, random_start=True)
KL10 = O.KLAttack(eps=EPS, steps=10, step_size=2.5 * EPS / 10)
PGD40 = AttackConfig(name="pgd", eps=EPS, steps=40, step_size=0.01, random_start=True)  # Madry et al.
PGD7 = AttackConfig(name="pgd", eps=EPS, steps=7, random_start=True)  # recipe mnist_pgd7_emr

METHODS = {
    "natural": lambda: O.CrossEntropy(),
    "jacobian_double_backprop": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.638, norm="l2"),
    # The dual-norm recipes of issue #10 (mnist_jacobian, mnist_jacobian_curvature).
    "jacobian_dual": lambda: O.CrossEntropy() + O.DecisionJacobian(c=0.01, threat="linf"),
    "jacobian_curvature": lambda: (O.CrossEntropy() + O.DecisionJacobian(c=0.01, threat="linf")
                                   + O.DecisionCurvature(c=1.0, h=0.3)),
    "jacobian_finite_difference": lambda: O.CrossEntropy() + O.DecisionJacobian(
        c=0.638, norm="l2", method="finite_difference", h=0.01),
    "input_gradient": lambda: O.CrossEntropy() + O.InputGradient(c=10.0),
    "emr_clean": lambda: O.CrossEntropy() + O.EffectiveMargin(lam=3 / 128, temperature=40.0),
    # The same penalty sharing the loss's forward pass (training=None): identical values for a
    # model without dropout or batch norm such as this one, one forward pass fewer.
    "emr_clean_shared_forward": lambda: O.CrossEntropy() + O.EffectiveMargin(
        lam=3 / 128, temperature=40.0, training=None),
    "pgd_at_10": lambda: O.AdversarialTraining(PGD10),
    "trades_10": lambda: O.Trades(beta=6.0, attack=KL10),
    "mart_10": lambda: O.Mart(beta=6.0, attack=PGD10),
    # Table 1's compute comparison (issue #6): Madry's PGD-40 AT against PGD-7 AT + EMR.
    "pgd_at_40": lambda: O.AdversarialTraining(PGD40),
    "pgd7_at_emr": lambda: O.AdversarialTraining(PGD7) + O.EffectiveMargin(lam=3 / 128, temperature=40.0,
                                                                           at=PGD7),
}
"""Method name -> objective. Attacks: 10 steps, eps 0.3, step 0.075 (L∞), except the last two."""


FLOORS = {
    "natural": "N",
    "jacobian_double_backprop": "D + N - A",
    "jacobian_dual": "D + N - A",
    "jacobian_curvature": "D + N",
    "jacobian_finite_difference": "2 A + N - F",
    "input_gradient": "D + N - A",
    "emr_clean": "D + N - A",
    "emr_clean_shared_forward": "D + N - A",
    "pgd_at_10": "10 A + N",
    "trades_10": "10 A + 2 N",
    "mart_10": "10 A + 2 N",
    "pgd_at_40": "40 A + N",
    "pgd7_at_emr": "7 A + D + N - A",
}
"""Each objective's floor in the parts: N natural step, F forward, A attack pass, D double-backprop pass.
A penalty on the input gradient needs the double-backprop pass plus what a natural step adds to a
forward and input gradient (its weight gradient and update): ``D + N - A``. The curvature term adds
one forward and input gradient at the stepped point: ``D + N``. Finite differences: two input
gradients and a natural step sharing a forward: ``2 A + N - F``. PGD-k AT: ``k`` attack passes and a
natural step on the result. TRADES-k and MART-k: ``k`` attack passes and a loss on two forward passes
(clean and adversarial), counted as two natural steps. PGD-7 + EMR at the same point: 7 attack passes,
then the EMR penalty's double backprop sharing the adversarial forward."""


def floor_seconds(expression: str, parts: dict) -> float:
    """Evaluates a :data:`FLOORS` expression such as ``"10 A + 2 N - F"`` on the part medians."""
    total, sign, coef = 0.0, 1.0, 1.0
    for token in expression.split():
        if token in "+-":
            sign = 1.0 if token == "+" else -1.0
        elif token in parts:
            total += sign * coef * parts[token]
            sign, coef = 1.0, 1.0
        else:
            coef = float(token)
    return total


def bare_parts(classifier, x, y):
    """The compiled parts the floors are built from (each returns a tensor to block on)."""
    from tfrobust import losses, norms  # pylint: disable=import-outside-toplevel

    @tf.function
    def forward(xb):
        return classifier(xb, training=False)

    @tf.function
    def attack_pass(xb, yb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            loss = tf.reduce_sum(losses.cross_entropy(classifier(xb, training=False), yb))
        return tape.gradient(loss, xb)

    @tf.function
    def double_backprop_pass(xb, yb):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(xb)
                d = tf.reduce_sum(losses.decision_margin(classifier(xb, training=True), yb))
            g = inner.gradient(d, xb)
            penalty = tf.reduce_sum(norms.per_example_norm(g, "l1"))
        return outer.gradient(penalty, classifier.trainable_variables)

    return {"F": lambda: forward(x).numpy(), "A": lambda: attack_pass(x, y).numpy(),
            "D": lambda: double_backprop_pass(x, y)[0].numpy()}


PART_NAMES = {"F": "forward", "A": "attack_pass", "D": "double_backprop_pass"}


def readme_table(result: dict) -> str:
    """docs/results.md's step-time table, from a ``step_time.json`` result (tests/test_results.py checks it)."""
    rows = ["| objective | step / natural | step / floor | floor |", "|---|---|---|---|"]
    for name, ratio in result["median_per_round_ratio_to_natural"].items():
        rows.append(f"| {name} | {ratio:.2f} | {result['ratio_to_floor'][name]:.2f} | "
                    f"{result['floor_formula'][name]} |")
    return "\n".join(rows)


def build(objective_fn, init, width=1.0):
    model = models.RobustModel(models.mnist_cnn(width=width), objective_fn())
    model.classifier.set_weights(init)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=float, default=1.0, help="CNN width multiplier (1: the paper's)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra-op threads (0: TensorFlow's default)")
    parser.add_argument("--out", default="benchmarks/results/step_time.json")
    args = parser.parse_args(argv)
    set_threads(args.threads, inter=False)
    if "natural" not in args.methods:
        parser.error("--methods must include natural (the ratios' reference)")

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(args.batch, 28, 28, 1)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, args.batch).astype("int32"))
    init = models.mnist_cnn(width=args.width).get_weights()

    trained = {}
    for name in args.methods:
        t = time.perf_counter()
        trained[name] = build(METHODS[name], init, args.width)
        for _ in range(args.warmup):
            trained[name].train_on_batch(x, y)
        print(f"warm-up {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)

    probe = models.mnist_cnn(width=args.width)
    probe.set_weights(init)
    parts = bare_parts(probe, x, y)
    steps = {name: (lambda m=trained[name]: m.train_on_batch(x, y)) for name in args.methods}
    steps.update({PART_NAMES[k]: fn for k, fn in parts.items()})
    for name in PART_NAMES.values():
        for _ in range(args.warmup):
            steps[name]()
    samples = {name: [] for name in steps}
    order = list(steps)
    for r in range(args.repeats):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            t = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.repeats}", file=sys.stderr)

    median = {n: statistics.median(s) for n, s in samples.items()}
    ratio = {n: median[n] / median["natural"] for n in args.methods}
    part_median = {k: median[PART_NAMES[k]] for k in PART_NAMES}
    part_median["N"] = median["natural"]
    floors = {n: floor_seconds(FLOORS[n], part_median) for n in args.methods}
    paired = {n: statistics.median(a / b for a, b in zip(samples[n], samples["natural"]))
              for n in args.methods}
    command = "python benchmarks/step_time.py " + " ".join(
        [f"--repeats {args.repeats}", f"--warmup {args.warmup}", f"--batch {args.batch}"]
        + ([f"--width {args.width:g}"] if args.width != 1.0 else [])
        + ([f"--threads {args.threads}"] if args.threads else [])
        + ([f"--methods {' '.join(args.methods)}"] if args.methods != list(METHODS) else [])
        + [f"--out {args.out}"])
    result = {
        "hardware": hardware(),
        "model": f"tfrobust.models.mnist_cnn(width={args.width:g}) (at width 1: conv5x5-32, pool, "
                 "conv5x5-64, pool, dense 1024, dense 10), synthetic 28x28x1 uniform inputs",
        "batch": args.batch,
        "command": command,
        "median_seconds": {n: round(v, 5) for n, v in median.items()},
        "ratio_to_natural": {n: round(v, 3) for n, v in ratio.items()},
        "median_per_round_ratio_to_natural": {n: round(v, 3) for n, v in paired.items()},
        "parts_median_seconds": {PART_NAMES[k]: round(part_median[k], 5) for k in PART_NAMES},
        "floor_formula": {n: FLOORS[n] for n in args.methods},
        "floor_seconds": {n: round(v, 5) for n, v in floors.items()},
        "ratio_to_floor": {n: round(median[n] / floors[n], 3) for n in args.methods},
        "quartiles_seconds": {n: [round(q, 5) for q in statistics.quantiles(s, n=4)]
                              for n, s in samples.items()},
        "min_seconds": {n: round(min(s), 5) for n, s in samples.items()},
        "ratio_of_minimums_to_natural": {n: round(min(s) / min(samples["natural"]), 3)
                                         for n, s in samples.items()},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "settings": {"attacks": "10 steps, eps 0.3, step 0.075, linf; PGD/MART random start, "
                                "TRADES 0.001*N(0,1) start; pgd_at_40: 40 steps of 0.01; pgd7_at_emr: "
                                "7 steps of 2.5*0.3/7 with EMR at the same point",
                     "jacobian": "c=0.638, l2, h=0.01 for finite differences",
                     "jacobian_dual": "c=0.01, l1 (the dual of linf)",
                     "jacobian_curvature": "c=0.01 l1 + DecisionCurvature(c=1, h=0.3)",
                     "input_gradient": "c=10, l2_squared",
                     "emr": "lam=3/128, T=40, at clean, inference-mode forward "
                            "(emr_clean_shared_forward: the step's forward, training=None)",
                     "optimizer": "SGD 0.01", "jit_compile": bool(trained["natural"].jit_compile),
                     "intra_op_threads": args.threads or "tensorflow default"},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": platform.python_version()},
        "caveat": "CPU shared with other processes during the run (load not controlled): methods were "
                  "interleaved round-robin with rotating order so contention hits them alike, but "
                  "absolute times and, less so, ratios are noisy; see quartiles.",
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    width = max(map(len, args.methods))
    print(f"{'method':<{width}}  median s  ratio  per-round ratio  min s  ratio of mins  / floor")
    for n in args.methods:
        mins = min(samples[n]) / min(samples["natural"])
        print(f"{n:<{width}}  {median[n]:8.4f}  {ratio[n]:5.2f}  {paired[n]:15.2f}  "
              f"{min(samples[n]):5.3f}  {mins:13.2f}  {median[n] / floors[n]:7.2f}")
    print("parts: " + ", ".join(f"{PART_NAMES[k]} {part_median[k]:.4f} s" for k in PART_NAMES))
    write_result(args.out, result, command)
    print(readme_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
