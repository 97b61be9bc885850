"""Attacks by name, and :class:`AttackConfig`: one fully specified attack."""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks.apgd import apgd
from tfrobust.attacks.base import check_number, default_step_size, scale_radius
from tfrobust.attacks.gradient import bim, cw, fgsm, pgd
from tfrobust.attacks.minimal import fab, fmn
from tfrobust.attacks.square import square

__all__ = [
    "ATTACKS",
    "get_attack",
    "AttackConfig",
    "Budget",
    "EvalAttack",
    "EVAL_ATTACK_REGISTRY",
    "CASCADES",
    "eval_attack",
]


ATTACKS: dict[str, Callable] = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "cw": cw, "apgd": apgd,
                               "square": square, "fab": fab, "fmn": fmn}
"""Attack name -> function."""


def get_attack(name: str) -> Callable:
    """Looks up an attack by name.

    Raises:
        ValueError: naming the unknown attack and listing the known ones.
    """
    if name not in ATTACKS:
        raise ValueError(f"attack {name!r} is unknown; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A fully specified attack, for training objectives and evaluation.

    ``step_size=None`` means ``2.5 * eps / steps`` (Madry et al.). For
    ``name="apgd"`` the step is adaptive (``step_size`` is ignored) and
    ``loss`` picks APGD-CE or APGD-DLR, or ``target_rank`` makes it one run of
    APGD-T (see :func:`apgd`); for ``name="square"`` ``steps`` is the query
    budget, the loss is always the margin and ``norm`` must be ``"linf"``.
    The minimal-norm attacks ``"fab"`` (``target_rank``: FAB-T) and ``"fmn"``
    run as bounded attacks here: they return their closest adversarial point
    where it lies within ``eps``, else the clean input (:meth:`minimal` gives
    the distances themselves).
    """

    name: str = "pgd"
    eps: float = 0.3
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    loss: str = "ce"
    random_start: bool | None = None
    targeted: bool = False
    target_rank: int | None = None

    def __post_init__(self):
        get_attack(self.name)
        check_number("eps", self.eps)
        check_number("steps", self.steps, integer=True)
        if self.step_size is not None:
            check_number("step_size", self.step_size)
        norms.validate_norm(self.norm)
        losses.attack_loss(self.loss)
        if self.name == "square" and self.norm != "linf":
            raise ValueError(f"norm={self.norm!r}: square supports only 'linf'")
        if self.target_rank is not None and self.name not in ("apgd", "fab"):
            raise ValueError(f"target_rank={self.target_rank!r}: only apgd (APGD-T) and fab (FAB-T) "
                             "take a target rank")

    @property
    def resolved_step_size(self) -> float:
        """The step size actually used."""
        return default_step_size(self.eps, self.steps) if self.step_size is None else float(self.step_size)

    @property
    def resolved_random_start(self) -> bool:
        """Whether the attack starts at a random point of the ball (PGD and APGD do by default)."""
        if self.random_start is not None:
            return bool(self.random_start)
        return self.name in ("pgd", "apgd")

    @property
    def resolved_loss(self) -> str:
        """The loss the attack actually climbs (C&W: the margin; Square: the margin; APGD-T: targeted DLR;
        FAB: the linearised boundary; FMN: the margin)."""
        if self.name == "fab":
            return "linearised boundary" + (" (targeted)" if self.target_rank is not None else "")
        if self.name == "fmn":
            return "margin"
        if self.name in ("cw", "square"):
            return "cw" if self.name == "cw" else "margin"
        if self.target_rank is not None:
            return "targeted dlr"
        return self.loss

    def __call__(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False,
                 eps_scale: float | tf.Tensor | None = None,
                 step_scale: float | tf.Tensor | None = None,
                 keys: tf.Tensor | None = None) -> tf.Tensor:
        """Runs the attack on a batch.

        ``eps_scale`` (a scalar, possibly a tensor) multiplies ``eps`` and the
        step size: training uses it to ramp the threat radius up (eps warm-up).
        ``step_scale``, if given, multiplies the step size instead (evaluation
        passes both as tensors, so one trace serves every eps). ``keys`` (one ``uint32``
        per example) key the random draws by example (:mod:`tfrobust.keyed_random`), so a
        sharded evaluation attacks each example as one process would.
        """
        eps, step_size = scale_radius(self.eps, self.resolved_step_size, eps_scale)
        if step_scale is not None:
            step_size = scale_radius(self.eps, self.resolved_step_size, step_scale)[1]
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=eps, norm=self.norm, clip=clip, loss=self.loss,
                        targeted=self.targeted, training=training)
        if self.name == "apgd":
            return apgd(model, x, y, eps=eps, steps=self.steps, norm=self.norm, loss=self.loss,
                        clip=clip, targeted=self.targeted, training=training,
                        random_start=self.resolved_random_start,
                        target_rank=self.target_rank, keys=keys)
        if self.name == "square":
            return square(model, x, y, eps=eps, queries=self.steps, norm=self.norm, clip=clip,
                          targeted=self.targeted, training=training, keys=keys)
        if self.name in ("fab", "fmn"):
            x_adv, distance = self.minimal(model, x, y, clip=clip, training=training)
            within = norms.expand_like(distance <= tf.cast(eps, distance.dtype), x_adv)
            return tf.where(within, x_adv, tf.cast(x, x_adv.dtype))
        return pgd(model, x, y, eps=eps, steps=self.steps, step_size=step_size,
                   norm=self.norm, random_start=self.resolved_random_start, clip=clip, loss=self.resolved_loss,
                   targeted=self.targeted, training=training, keys=keys)

    def minimal(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False
                ) -> tuple[tf.Tensor, tf.Tensor]:
        """Runs a minimal-norm attack (``fab`` or ``fmn``): ``(x_adv, distance)`` per example.

        Raises:
            ValueError: if this config is not a minimal-norm attack.
        """
        if self.name == "fab":
            return fab(model, x, y, norm=self.norm, steps=self.steps, target_rank=self.target_rank,
                       clip=clip, training=training)
        if self.name == "fmn":
            return fmn(model, x, y, norm=self.norm, steps=self.steps, clip=clip, training=training)
        raise ValueError(f"attack {self.name!r} is not a minimal-norm attack (fab, fmn)")

    def to_dict(self) -> dict:
        """JSON-friendly description."""
        return dataclasses.asdict(self)


# -- evaluation attacks: name -> builder and metadata (docs/architecture.md) ------------------------------


@dataclasses.dataclass(frozen=True)
class Budget:
    """How hard the evaluation attacks try: everything besides eps that builds them.

    Args:
        steps: iterations of BIM, PGD and C&W.
        step_size: their step; ``None`` means ``2.5 * eps / steps``; a dict gives
            one per attack name (missing names get ``None``).
        norm: the threat norm.
        apgd_steps: iterations of each APGD run (published: 100).
        square_queries: Square's query budget (AutoAttack standard: 5000).
        apgd_targets: target classes of APGD-T, from the runner-up down (standard: 9).
        fab_steps: iterations of each FAB run (standard: 100).
        fab_targets: target classes of FAB-T (standard: 9).
        fmn_steps: iterations of FMN (published: 100 to 1000).
    """

    steps: int = 10
    step_size: float | dict | None = None
    norm: str = "linf"
    apgd_steps: int = 100
    square_queries: int = 5000
    apgd_targets: int = 9
    fab_steps: int = 100
    fab_targets: int = 9
    fmn_steps: int = 100

    def __post_init__(self):
        for name in ("steps", "apgd_steps", "square_queries", "apgd_targets", "fab_steps", "fab_targets",
                     "fmn_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        norms.validate_norm(self.norm)

    def step_for(self, name: str) -> float | None:
        """The step size given for attack ``name`` (``None``: the default rule)."""
        return self.step_size.get(name) if isinstance(self.step_size, dict) else self.step_size


@dataclasses.dataclass(frozen=True)
class EvalAttack:
    """One attack that evaluation, callbacks, recipes and the command line name.

    Args:
        name: the name on the command line and in reports.
        build: ``(eps, budget) -> tuple of AttackConfig`` (several run one after
            another on the survivors, as APGD-T's one run per target class).
        summary: one line for ``--help`` and the docs.
        iterative: takes several gradient steps (the sanity check compares it with FGSM).
        randomised: its result depends on the seed (the seed-stability check reruns it).
        black_box: uses scores only (the masking check compares it with the white-box attacks).
        targeted: attacks towards chosen classes.
        fixed: settings of the algorithm that the budget does not change, reported as they ran.
    """

    name: str
    build: Callable[[float, Budget], tuple]
    summary: str
    iterative: bool = False
    randomised: bool = False
    black_box: bool = False
    targeted: bool = False
    fixed: tuple = ()

    def configs(self, eps: float, budget: Budget) -> tuple[AttackConfig, ...]:
        """The attack configs to run at ``eps``, in order."""
        return self.build(eps, budget)

    def settings(self, budget: Budget) -> dict:
        """The settings that ran, read off the configs this budget builds (for the report)."""
        configs = self.configs(1.0, budget)
        first = configs[0]
        out = {"norm": first.norm, "loss": first.resolved_loss, "random_start": first.resolved_random_start}
        if first.name == "square":
            out["queries"] = first.steps
        elif first.name != "fgsm":
            out["steps"] = first.steps
        if first.name in ("fab", "fmn"):
            out["minimal_norm"] = True
        if first.name in ("bim", "pgd", "cw"):
            given = budget.step_for(self.name)
            out["step_size"] = "2.5*eps/steps" if given is None else float(given)
        if len(configs) > 1:
            out["targets"] = len(configs)
        if self.black_box:
            out["black_box"] = True
        out.update(dict(self.fixed))
        return out


def _gradient(name):
    def build(eps, budget):
        steps = 1 if name == "fgsm" else budget.steps
        return (AttackConfig(name=name, eps=eps, steps=steps, step_size=budget.step_for(name),
                             norm=budget.norm),)
    return build


def _apgd(loss):
    def build(eps, budget):
        return (AttackConfig(name="apgd", eps=eps, steps=budget.apgd_steps, norm=budget.norm, loss=loss),)
    return build


def _apgd_targeted(eps, budget):
    return tuple(AttackConfig(name="apgd", eps=eps, steps=budget.apgd_steps, norm=budget.norm, target_rank=r)
                 for r in range(2, 2 + budget.apgd_targets))


def _fab(eps, budget):
    return (AttackConfig(name="fab", eps=eps, steps=budget.fab_steps, norm=budget.norm),)


def _fab_targeted(eps, budget):
    return tuple(AttackConfig(name="fab", eps=eps, steps=budget.fab_steps, norm=budget.norm, target_rank=r)
                 for r in range(2, 2 + budget.fab_targets))


def _fmn(eps, budget):
    return (AttackConfig(name="fmn", eps=eps, steps=budget.fmn_steps, norm=budget.norm),)


def _square(eps, budget):
    return (AttackConfig(name="square", eps=eps, steps=budget.square_queries, norm=budget.norm),)


_APGD_FIXED = (("initial_step", "2*eps"), ("alpha", 0.75), ("rho", 0.75))
_FAB_FIXED = (("eta", 1.05), ("beta", 0.9), ("alpha_max", 0.1), ("restarts", 1))
EVAL_ATTACK_REGISTRY: dict[str, EvalAttack] = {a.name: a for a in (
    EvalAttack("fgsm", _gradient("fgsm"), "one signed-gradient step of CE (Goodfellow et al.)"),
    EvalAttack("bim", _gradient("bim"), "iterated FGSM, no random start (Kurakin et al.)", iterative=True),
    EvalAttack("pgd", _gradient("pgd"), "PGD on CE from a random start (Madry et al.)", iterative=True,
               randomised=True),
    EvalAttack("cw", _gradient("cw"), "PGD on the C&W margin (the decision-surface paper's C&W)",
               iterative=True),
    EvalAttack("apgd-ce", _apgd("ce"), "Auto-PGD on CE (Croce & Hein 2020)", iterative=True, randomised=True,
               fixed=_APGD_FIXED),
    EvalAttack("apgd-dlr", _apgd("dlr"), "Auto-PGD on the DLR loss", iterative=True, randomised=True,
               fixed=_APGD_FIXED),
    EvalAttack("apgd-t", _apgd_targeted, "targeted DLR APGD, one run per runner-up class on the survivors",
               iterative=True, randomised=True, targeted=True,
               fixed=(("loss", "targeted dlr"),
                      ("target", "classes ranked 2.. by the clean logits, one run each on the survivors"))
               + _APGD_FIXED),
    EvalAttack("fab", _fab, "minimal-norm FAB, untargeted: the nearest linearised boundary each step "
               "(Croce & Hein 2020)", iterative=True, fixed=_FAB_FIXED),
    EvalAttack("fab-t", _fab_targeted, "targeted FAB, one run per runner-up class on the survivors",
               iterative=True, targeted=True,
               fixed=(("target", "classes ranked 2.. by the clean logits, one run each on the survivors"),)
               + _FAB_FIXED),
    EvalAttack("fmn", _fmn, "minimal-norm FMN: margin descent in an adaptive ball (Pintor et al. 2021)",
               iterative=True, fixed=(("gamma", "0.05 -> 0.001"), ("alpha", "1 -> 0.01 of the radius"))),
    EvalAttack("square", _square, "score-based random search (Andriushchenko et al. 2020), L-inf only",
               randomised=True, black_box=True, fixed=(("p_init", 0.8),)),
)}
"""Every attack evaluation runs, by name."""

CASCADES: dict[str, tuple[str, ...]] = {
    "autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "autoattack-lite": ("apgd-ce", "apgd-dlr", "square"),
}
"""Named cascades: each stage attacks the survivors of the earlier ones. ``autoattack`` is the
standard AutoAttack of Croce & Hein (2020): APGD-CE, APGD-T (9 targets), FAB-T (9 targets),
Square (5,000 queries). ``autoattack-lite`` (APGD-CE, APGD-DLR, Square) was our ``autoattack``
before FAB-T existed: about a fifth of the standard version's gradient steps."""


def eval_attack(name: str) -> EvalAttack:
    """Looks up an evaluation attack.

    Raises:
        ValueError: naming the unknown attack and listing the known ones and cascades.
    """
    if name not in EVAL_ATTACK_REGISTRY:
        raise ValueError(f"attack {name!r} is unknown; choose from "
                         f"{list(EVAL_ATTACK_REGISTRY) + list(CASCADES)}")
    return EVAL_ATTACK_REGISTRY[name]
