"""Accuracy under attack, worst case over attacks, and gradient-masking sanity checks.

:func:`evaluate_model` runs every attack at every eps on the same examples and
counts an example as robust at an eps only if it survives *all* attacks run
(per-example worst case, stronger than the minimum of the accuracies).

Attacks run standalone (each on every clean-correct example) or as a cascade
(AutoAttack-style, docs/architecture.md): each stage attacks only the examples
that survived the earlier stages, and reports the accuracy after it. The list
entry ``autoattack`` is the standard AutoAttack cascade APGD-CE → APGD-T → FAB-T →
Square (``autoattack-lite``: APGD-CE → APGD-DLR → Square); ``cascade=True``
(``--cascade``) makes the whole list one cascade in the order given.

``curve=`` (``--curve``) adds one minimal-norm attack run (:mod:`tfrobust.evaluation.curve`):
the distance found per example, hence the accuracy at every eps at once.

The ``sanity`` block flags the usual signs of gradient masking (docs/architecture.md,
§3.10): accuracy rising with eps, iterative attacks weaker than FGSM, an
unbounded attack that fails to reach ~0%, vanishing gradients, probability
outputs, a black-box attack (Square) that breaks examples every white-box
attack failed on, and a worst case that moves with the random seed.

The result is the evaluation JSON of docs/architecture.md
"""

from tfrobust.attacks import Budget
from tfrobust.evaluation.certified import certified_radii, soundness_check, verified_examples
from tfrobust.evaluation.cascade import AUTOATTACK, EVAL_ATTACKS, expand_attacks, run_cascade
from tfrobust.evaluation.curve import (CERTIFIED_CURVES, CURVE_ATTACKS, MINIMAL_ATTACKS, accuracy_at,
                                      check_curve_attack, minimal_distances, plot_curve)
from tfrobust.evaluation.report import evaluate_model, format_table, load_model, parse_eps_list
from tfrobust.evaluation.sanity import sanity_checks, seed_tolerance

__all__ = [
    "evaluate_model",
    "Budget",
    "verified_examples",
    "certified_radii",
    "soundness_check",
    "sanity_checks",
    "run_cascade",
    "expand_attacks",
    "seed_tolerance",
    "AUTOATTACK",
    "load_model",
    "parse_eps_list",
    "EVAL_ATTACKS",
    "format_table",
    "CURVE_ATTACKS",
    "MINIMAL_ATTACKS",
    "check_curve_attack",
    "CERTIFIED_CURVES",
    "accuracy_at",
    "minimal_distances",
    "plot_curve",
]
