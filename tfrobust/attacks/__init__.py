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
(Andriushchenko et al. 2020); :mod:`tfrobust.evaluation` runs them as a cascade. The
minimal-norm attacks :func:`fab` (FAB and FAB-T, Croce & Hein 2020) and :func:`fmn`
(Pintor et al. 2021) return ``(x_adv, distance)``: the closest adversarial point found per
example and its distance, from which one run gives the accuracy at every eps.

Every attack is registered by one :class:`~tfrobust.attack_specs.AttackSpec`
(:data:`SPECS`); :class:`AttackConfig`, the evaluation registry and :class:`Budget` read them.
"""

from tfrobust.attacks.apgd import apgd, apgd_checkpoints
from tfrobust.attacks.base import default_step_size, resolve_labels, scale_radius
from tfrobust.attacks.gradient import bim, cw, fgsm, pgd
from tfrobust.attacks.minimal import fab, fmn, project_onto_hyperplane
from tfrobust.attacks.registry import (
                                       ATTACKS,
                                       CASCADES,
                                       EVAL_ATTACK_REGISTRY,
                                       SPECS,
                                       AttackConfig,
                                       AttackSpec,
                                       Budget,
                                       EvalAttack,
                                       as_attack,
                                       attack_spec,
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
    "fab",
    "fmn",
    "project_onto_hyperplane",
    "apgd_checkpoints",
    "square_p_schedule",
    "scale_radius",
    "ATTACKS",
    "get_attack",
    "AttackConfig",
    "as_attack",
    "AttackSpec",
    "SPECS",
    "attack_spec",
    "Budget",
    "EvalAttack",
    "EVAL_ATTACK_REGISTRY",
    "CASCADES",
    "eval_attack",
    "resolve_labels",
    "default_step_size",
]
