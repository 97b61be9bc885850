"""Gradient-masking sanity checks of an evaluation (docs/architecture.md)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks import AttackConfig, eval_attack
from tfrobust.evaluation.cascade import Draws, attacks_where, correct_under, run_attacks
from tfrobust.utils import batches

__all__ = [
    "seed_tolerance",
    "sanity_checks",
]


_TOL = 0.01  # accuracy tolerance for monotonicity checks (sampling noise of random starts)


SEED_SUBSET = 200  # examples rerun with seed + 1 for the seed-stability check


_SEED_DEPENDENT_SHARE = 0.05  # share of seed-dependent examples the seed check tolerates


def gradient_stats(model, x, y, batch_size) -> dict:
    @tf.function(reduce_retracing=True)
    def grads(xb, yb):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xb)
            logits = model(xb, training=False)
            d = losses.decision_margin(logits, yb)
            ce = losses.cross_entropy(logits, yb)
        zero = tf.UnconnectedGradients.ZERO
        return (norms.per_example_norm(tape.gradient(d, xb, unconnected_gradients=zero), "l2"),
                norms.per_example_norm(tape.gradient(ce, xb, unconnected_gradients=zero), "l2"),
                logits)

    d_norms, ce_norms, logits = [], [], []
    for s in batches(len(x), batch_size):
        a, b, z = grads(tf.constant(x[s]), tf.constant(y[s]))
        d_norms.append(a.numpy())
        ce_norms.append(b.numpy())
        logits.append(z.numpy())
    return {"margin_grad": np.concatenate(d_norms), "ce_grad": np.concatenate(ce_norms),
            "logits": np.concatenate(logits)}


def seed_tolerance(m: int, share: float = _SEED_DEPENDENT_SHARE) -> float:
    """Largest accuracy change between two seeds on ``m`` examples the sanity check accepts.

    If a ``share`` of the examples is seed-dependent (example i survives a run
    with probability p_i in (0, 1)) and the rest is not, the difference of two
    runs' accuracies has mean 0 and variance ``2 Σ p_i (1 - p_i) / m²``, at
    most ``share / (2 m)``. The tolerance is three such standard deviations, so
    an evaluation with at most 5% seed-dependent examples fails the check with
    probability about 0.3% or less, while one whose result moves by more is
    flagged. ``m=200`` gives 0.034.
    """
    return 3.0 * math.sqrt(share / (2.0 * max(int(m), 1)))


def sanity_checks(result: dict, eps_values: dict[str, float], *, grad_stats: dict | None = None,
                  unbounded_accuracy: float | None = None, num_classes: int = 10,
                  black_box_gain: dict[str, float] | None = None,
                  seed_check: dict | None = None) -> dict:
    """The ``sanity`` block: each check with ``passed`` and a ``detail``.

    Args:
        result: an evaluation dict with ``attacks`` and ``clean_accuracy``.
        eps_values: eps key (as written) -> its value.
        grad_stats: per-example input-gradient norms and logits (from the evaluation).
        unbounded_accuracy: accuracy under an attack whose eps covers the clip range.
        num_classes: for the chance level of the unbounded check.
        black_box_gain: eps key -> share of examples the black-box Square attack
            broke although every white-box attack run on them failed. Without it,
            the check compares accuracies (Square's against the strongest white-box one).
        seed_check: the worst case rerun with another seed: ``eps`` (key), ``m``
            (examples), ``accuracy`` and ``accuracy_rerun``, ``changed`` (examples
            whose outcome differs), ``tolerance``, ``what`` (what was rerun).
    """
    checks = []
    rising = []
    for name, table in result["attacks"].items():
        accs = sorted((eps_values[k], acc) for k, acc in table.items())
        prev = result["clean_accuracy"]
        for eps, acc in accs:
            if acc > prev + _TOL:
                rising.append(f"{name} at eps {eps:g}: {acc:.3f} > {prev:.3f}")
            prev = acc
    checks.append({"name": "accuracy_falls_with_eps", "passed": not rising,
                   "detail": "; ".join(rising) or "accuracy never rises with eps (tolerance 0.01)"})

    iterative = attacks_where(result["attacks"], "iterative")
    if "fgsm" in result["attacks"] and iterative:
        checks.append(_iterative_check(result["attacks"], iterative))

    white = [a for a in result["attacks"] if not eval_attack(a).black_box]
    if "square" in result["attacks"] and white:
        checks.append(_white_box_check(result["attacks"], white, black_box_gain))

    if seed_check is not None:
        diff = abs(seed_check["accuracy"] - seed_check["accuracy_rerun"])
        checks.append({"name": "stable_across_seeds", "passed": diff <= seed_check["tolerance"],
                       "detail": f"{seed_check['what']} at eps {seed_check['eps']} on "
                                 f"{seed_check['m']} examples: {seed_check['accuracy']:.3f} with seed "
                                 f"{seed_check['seed']}, {seed_check['accuracy_rerun']:.3f} with seed "
                                 f"{seed_check['seed'] + 1} ({seed_check['changed']} examples changed; "
                                 f"tolerance {seed_check['tolerance']:.3f})"})

    if unbounded_accuracy is not None:
        limit = max(0.05, 1.0 / num_classes)
        checks.append({"name": "unbounded_attack_reaches_zero",
                       "passed": unbounded_accuracy <= limit,
                       "detail": f"accuracy {unbounded_accuracy:.3f} under PGD with eps covering the "
                                 f"whole input range (must be <= {limit:.2f})"})

    if grad_stats is not None:
        zero_d = float(np.mean(grad_stats["margin_grad"] <= norms.TINY))
        zero_ce = float(np.mean(grad_stats["ce_grad"] <= norms.TINY))
        checks.append({"name": "gradients_not_vanishing", "passed": zero_d < 0.01,
                       "detail": f"{zero_d:.1%} of examples have a zero margin gradient; "
                                 f"{zero_ce:.1%} a zero cross-entropy gradient (saturated softmax"
                                 f"{': prefer the cw attack' if zero_ce > 0.1 else ''}); median margin "
                                 f"gradient L2 norm {float(np.median(grad_stats['margin_grad'])):.3g}"})
        z = grad_stats["logits"]
        probs_like = bool(np.all((z >= 0) & (z <= 1)) and np.allclose(z.sum(-1), 1.0, atol=1e-4))
        checks.append({"name": "logits_not_probabilities", "passed": not probs_like,
                       "detail": "outputs are probabilities: attacks on them are unreliable"
                       if probs_like else "outputs are unnormalised logits"})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def _iterative_check(accuracies: dict, iterative: list[str]) -> dict:
    """``iterative_not_weaker_than_fgsm``: at every eps the strongest iterative attack is at least
    as strong as FGSM (``accuracies``: attack -> eps key -> accuracy)."""
    weaker = []
    for key, fg in accuracies["fgsm"].items():
        best = min(accuracies[a][key] for a in iterative if a in accuracies and key in accuracies[a])
        if best > fg + _TOL:
            weaker.append(f"eps {key}: iterative {best:.3f} > fgsm {fg:.3f}")
    return {"name": "iterative_not_weaker_than_fgsm", "passed": not weaker,
            "detail": "; ".join(weaker) or "the strongest iterative attack is at least as "
                                           "strong as FGSM at every eps"}


def _white_box_check(accuracies: dict, white: list[str], black_box_gain: dict[str, float] | None) -> dict:
    """``white_box_not_weaker_than_square``: on the examples (``black_box_gain``) or, without it,
    on the accuracies, the black-box Square attack does not beat the white-box attacks ``white``."""
    stronger = []
    if black_box_gain is not None:
        for key, gain in black_box_gain.items():
            if gain > _TOL:
                stronger.append(f"eps {key}: square broke {gain:.3f} of the examples that every "
                                "white-box attack failed on")
        ok_detail = ("square broke at most 0.01 of the examples at every eps beyond what the "
                     "white-box attacks broke")
    else:
        for key, sq in accuracies["square"].items():
            best = min(accuracies[a][key] for a in white if key in accuracies[a])
            if sq < best - _TOL:
                stronger.append(f"eps {key}: square {sq:.3f} < white-box {best:.3f}")
        ok_detail = "no white-box attack is weaker than square (tolerance 0.01)"
    return {"name": "white_box_not_weaker_than_square", "passed": not stronger,
            "detail": ("; ".join(stronger) + ": gradients are masked, trust the black-box "
                       "number") if stronger else ok_detail}


def black_box_gain(runs: dict, order: list[str], eps_list) -> dict[str, float]:
    """Per eps: share of examples Square broke that every white-box attack attacked and failed on."""
    white = [a for a in order if not eval_attack(a).black_box]
    gain = {}
    for key, _ in eps_list:
        attacked, robust = runs["square"][key]
        broken = attacked & ~robust
        for name in white:
            w_attacked, w_robust = runs[name][key]
            broken &= w_attacked & w_robust
        gain[key] = float(broken.mean()) if white else 0.0
    return gain


def seed_check(clf, x, y, clean_correct, order, stages, eps_list, make_config, robust_all, runs, *,
                seed, steps, norm, batch_size, clip, bar, strategy=None) -> dict:
    """Reruns the randomised attacks with ``seed + 1`` on the first examples at one eps.

    ``x`` are the evaluation's first examples (global indices from 0), so the rerun's draws
    differ from the evaluation's by the seed alone.

    The eps is the one whose worst case is nearest 0.5 (where seed dependence
    shows most). Deterministic standalone attacks keep their results; a cascade
    with a randomised stage is rerun whole. Without any randomised attack,
    PGD with random start is run with both seeds instead.
    """
    m = len(x)
    key, value = min(eps_list, key=lambda kv: abs(float(robust_all[kv[0]].mean()) - 0.5))
    randomised = attacks_where(order, "randomised")
    rerun_stages = stages if attacks_where(stages, "randomised") else []
    rerun_alone = [a for a in randomised if a not in stages]
    if randomised:
        rerun = run_attacks(clf, x, y, clean_correct, rerun_stages + rerun_alone, rerun_stages,
                             [(key, value)], make_config, batch_size=batch_size, clip=clip, bar=bar,
                             draws=Draws.of(seed + 1, m), strategy=strategy)
        before = robust_all[key][:m]
        after = clean_correct.copy()
        for name in order:
            after &= rerun[name][key][1] if name in rerun else runs[name][key][1][:m]
        what = "worst case"
    else:
        pgd = AttackConfig(name="pgd", eps=value, steps=steps, norm=norm, random_start=True)
        results = []
        for s in (seed, seed + 1):
            bar.set_postfix_str(f"sanity: pgd seed {s}")
            results.append(clean_correct & correct_under(clf, pgd, x, y, batch_size, clip, bar,
                                                         draws=Draws.of(s, m), use=("sanity-pgd",),
                                                         strategy=strategy))
        before, after = results
        what = f"pgd-{steps} with random start (no randomised attack was run)"
    return {"eps": key, "m": int(m), "seed": int(seed), "accuracy": float(before.mean()),
            "accuracy_rerun": float(after.mean()), "changed": int((before != after).sum()),
            "tolerance": seed_tolerance(m), "what": what}
