"""Graph-safe, batched attacks: white-box (FGSM, BIM, PGD, C&W, APGD) and black-box (Square).

Every attack is a pure function ``(model, x, y=None, *, eps, ...) -> x_adv``:
no ``.numpy()`` inside, usable eagerly, inside ``tf.function``, a
``train_step`` and a distribution strategy (it runs on whatever replica calls
it). The result is under ``tf.stop_gradient``, inside the ``eps`` ball of
``norm`` around ``x`` and inside ``clip``. Norm maths lives in
:mod:`tfrobust.norms` and losses in :mod:`tfrobust.losses` (docs/architecture.md).

``y=None`` attacks the model's own prediction; ``targeted=True`` with
``y=None`` targets the least-likely class.

The strong evaluation of docs/architecture.md uses :func:`apgd` (APGD-CE and APGD-DLR,
Croce & Hein 2020) and the score-based black-box :func:`square` attack
(Andriushchenko et al. 2020); :mod:`tfrobust.evaluation` runs them as a cascade.
"""

from tfrobust.attacks.apgd import apgd, apgd_checkpoints
from tfrobust.attacks.base import default_step_size, resolve_labels, scale_radius
from tfrobust.attacks.gradient import bim, cw, fgsm, pgd
from tfrobust.attacks.registry import (
                                       ATTACKS,
                                       CASCADES,
                                       EVAL_ATTACK_REGISTRY,
                                       AttackConfig,
                                       Budget,
                                       EvalAttack,
                                       eval_attack,
                                       get_attack,
)
from tfrobust.attacks.square import square, square_p_schedule

__all__ = [
    "fgsm",
    "pgd",
    "bim",
    "cw",
    "apgd",
    "square",
    "apgd_checkpoints",
    "square_p_schedule",
    "scale_radius",
    "ATTACKS",
    "get_attack",
    "AttackConfig",
    "Budget",
    "EvalAttack",
    "EVAL_ATTACK_REGISTRY",
    "CASCADES",
    "eval_attack",
    "resolve_labels",
    "default_step_size",
]
