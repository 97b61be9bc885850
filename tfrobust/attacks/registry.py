"""Attacks by name, and :class:`AttackConfig`: one fully specified attack."""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from tfrobust import losses, norms
from tfrobust.attacks.apgd import apgd
from tfrobust.attacks.base import check_number, default_step_size, scale_radius
from tfrobust.attacks.gradient import bim, cw, fgsm, pgd
from tfrobust.attacks.square import square

__all__ = [
    "ATTACKS",
    "get_attack",
    "AttackConfig",
]


ATTACKS: dict[str, Callable] = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "cw": cw, "apgd": apgd,
                               "square": square}
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
        if self.target_rank is not None and self.name != "apgd":
            raise ValueError(f"target_rank={self.target_rank!r}: only apgd (APGD-T) takes a target rank")

    @property
    def resolved_step_size(self) -> float:
        """The step size actually used."""
        return default_step_size(self.eps, self.steps) if self.step_size is None else float(self.step_size)

    def __call__(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False,
                 eps_scale: float | tf.Tensor | None = None) -> tf.Tensor:
        """Runs the attack on a batch.

        ``eps_scale`` (a scalar, possibly a tensor) multiplies ``eps`` and the
        step size: training uses it to ramp the threat radius up (eps warm-up).
        """
        eps, step_size = scale_radius(self.eps, self.resolved_step_size, eps_scale)
        if self.name == "fgsm":
            return fgsm(model, x, y, eps=eps, norm=self.norm, clip=clip, loss=self.loss,
                        targeted=self.targeted, training=training)
        if self.name == "apgd":
            return apgd(model, x, y, eps=eps, steps=self.steps, norm=self.norm, loss=self.loss,
                        clip=clip, targeted=self.targeted, training=training,
                        random_start=True if self.random_start is None else self.random_start,
                        target_rank=self.target_rank)
        if self.name == "square":
            return square(model, x, y, eps=eps, queries=self.steps, norm=self.norm, clip=clip,
                          targeted=self.targeted, training=training)
        random_start = self.name == "pgd" if self.random_start is None else self.random_start
        loss = "cw" if self.name == "cw" else self.loss
        return pgd(model, x, y, eps=eps, steps=self.steps, step_size=step_size,
                   norm=self.norm, random_start=random_start, clip=clip, loss=loss,
                   targeted=self.targeted, training=training)

    def to_dict(self) -> dict:
        """JSON-friendly description."""
        return dataclasses.asdict(self)
