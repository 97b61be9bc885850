"""Training objectives as small, composable, Keras-serialisable terms.

An :class:`Objective` is a sum of :class:`Term` s. Each term returns one value
per example (its coefficient already applied); the objective averages each
over the batch, adds them up and reports every term as a metric. Terms that
need adversarial points name their :class:`~tfrobust.attacks.AttackConfig`;
the :class:`StepContext` generates each such point once per step, outside the
weight tape, and shares it between terms.

Input-gradient penalties use double backprop: a persistent inner tape on the
input records the forward pass inside the weight tape, so the penalty's
gradient with respect to the weights flows through the input gradient
(docs/architecture.md). With ``method="finite_difference"`` they instead use Finlay &
Oberman's difference quotient along the (stop-gradient) steepest direction:
two forward/backward passes, no double backprop.

Terms: :class:`CrossEntropy`, :class:`AdversarialTraining`,
:class:`FastAdversarialTraining`, :class:`Trades`, :class:`Mart`,
:class:`CertifiedTraining` (IBP and CROWN-IBP; base losses), :class:`GaussianNoise` (training
for randomized smoothing; a base loss) with :class:`Consistency` (its penalty) and
:class:`DecisionJacobian`, :class:`InputGradient`, :class:`EffectiveMargin` (penalties). TRADES' KL attack is a
:func:`KLAttack` point, usable wherever an attack config is.

Example::

    objective = CrossEntropy() + DecisionJacobian(c=500.0, norm="l2")
    pgd = AttackConfig(eps=8 / 255, steps=10, step_size=2 / 255)
    at_emr = AdversarialTraining(pgd) + EffectiveMargin.from_authors(3.0, 128, temperature=40, at=pgd)
"""

from tfrobust.attacks.kl import KLAttack, gaussian_noise, kl_divergence, kl_pgd
from tfrobust.objectives.base import (AdversarialTraining, CrossEntropy, FastAdversarialTraining, Objective,
                                      Term, as_objective)
from tfrobust.objectives.certified import CertifiedTraining
from tfrobust.objectives.context import CLEAN, StepContext
from tfrobust.objectives.penalties import (GRADIENT_METHODS, PENALTY_NORMS, DecisionCurvature, DecisionJacobian,
                                           EffectiveMargin, InputGradient, finite_difference_direction,
                                           finite_difference_penalty, linearity_gap,
                                           min_finite_difference_step, penalty_norm,
                                           resolve_penalty_norm)
from tfrobust.objectives.smoothing import Consistency, GaussianNoise, NoisyCopy, consistency_loss, noisy_copies
from tfrobust.objectives.trades import Mart, Trades, mart_loss

__all__ = [
    "PENALTY_NORMS",
    "penalty_norm",
    "StepContext",
    "Term",
    "CrossEntropy",
    "AdversarialTraining",
    "FastAdversarialTraining",
    "resolve_penalty_norm",
    "DecisionJacobian",
    "InputGradient",
    "DecisionCurvature",
    "linearity_gap",
    "Objective",
    "as_objective",
    "CLEAN",
    "GRADIENT_METHODS",
    "finite_difference_direction",
    "finite_difference_penalty",
    "min_finite_difference_step",
    "EffectiveMargin",
    "kl_divergence",
    "gaussian_noise",
    "kl_pgd",
    "KLAttack",
    "Trades",
    "mart_loss",
    "Mart",
    "CertifiedTraining",
    "NoisyCopy",
    "noisy_copies",
    "consistency_loss",
    "GaussianNoise",
    "Consistency",
]
