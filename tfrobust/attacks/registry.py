"""Attacks by name, and :class:`AttackConfig`: one fully specified attack.

Everything here is read off the specs of :mod:`tfrobust.attack_specs` (one per attack);
adding an attack is adding a spec there (docs/architecture.md, "Adding an attack").
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import tensorflow as tf

from tfrobust import norms
from tfrobust.attack_specs import (CASCADES, CONFIG_DEFAULTS, EVAL_ATTACK_REGISTRY, SPECS, AttackSpec, Budget,
                                   EvalAttack, attack_spec, eval_attack)
from tfrobust.attacks.base import default_step_size, scale_radius

__all__ = [
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
]


ATTACKS: dict[str, Callable] = {s.name: s.fn for s in SPECS}
"""Attack name -> function."""


def get_attack(name: str) -> Callable:
    """Looks up an attack function by name.

    Raises:
        ValueError: naming the unknown attack and listing the known ones.
    """
    return attack_spec(name).fn


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A fully specified attack, for training objectives and evaluation.

    ``name`` picks the attack's :class:`~tfrobust.attack_specs.AttackSpec`, which says
    which of the fields it reads (the others must keep their defaults), the norms it
    supports and how the fields become the function's arguments.
    ``step_size=None`` means ``2.5 * eps / steps`` (Madry et al.). For
    ``name="apgd"`` the step is adaptive and ``loss`` picks APGD-CE or APGD-DLR, or
    ``target_rank`` makes it one run of APGD-T (see :func:`apgd`); for ``name="square"``
    ``steps`` is the query budget. The minimal-norm attacks ``"fab"`` (``target_rank``:
    FAB-T) and ``"fmn"`` run as bounded attacks here: they return their closest
    adversarial point where it lies within ``eps``, else the clean input (:meth:`minimal`
    gives the distances themselves). ``"kl_pgd"`` is TRADES' attack (``init_std``: its
    Gaussian start; it ignores ``y``).
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
    init_std: float = 0.001

    def __post_init__(self):
        self.spec.check({f: getattr(self, f) for f in CONFIG_DEFAULTS})

    @property
    def spec(self) -> AttackSpec:
        """The attack's spec."""
        return attack_spec(self.name)

    @property
    def resolved_step_size(self) -> float:
        """The step size actually used."""
        return default_step_size(self.eps, self.steps) if self.step_size is None else float(self.step_size)

    @property
    def resolved_random_start(self) -> bool:
        """Whether the attack starts at a random point (the spec's default unless given)."""
        if self.random_start is not None:
            return bool(self.random_start)
        return self.spec.random_start

    @property
    def resolved_loss(self) -> str:
        """The loss the attack actually climbs (C&W, Square and FMN: the margin; APGD-T: targeted DLR;
        FAB: the linearised boundary; TRADES: the KL)."""
        if self.target_rank is not None and self.spec.target_loss:
            return self.spec.target_loss
        return self.spec.loss or self.loss

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
        spec = self.spec
        eps, step_size = scale_radius(self.eps, self.resolved_step_size, eps_scale)
        if step_scale is not None:
            step_size = scale_radius(self.eps, self.resolved_step_size, step_scale)[1]
        if spec.minimal:
            x_adv, distance = self.minimal(model, x, y, clip=clip, training=training)
            within = norms.expand_like(distance <= tf.cast(eps, distance.dtype), x_adv)
            return tf.stop_gradient(tf.where(within, x_adv, tf.cast(x, x_adv.dtype)))
        labels = (y,) if spec.labels else ()
        keyed = {"keys": keys} if spec.keyed and keys is not None else {}
        return spec.fn(model, x, *labels, eps=eps, clip=clip, training=training,
                       **spec.kwargs(self, step_size), **keyed)

    def minimal(self, model: Callable, x, y=None, *, clip=(0.0, 1.0), training: bool = False
                ) -> tuple[tf.Tensor, tf.Tensor]:
        """Runs a minimal-norm attack (``fab`` or ``fmn``): ``(x_adv, distance)`` per example.

        Raises:
            ValueError: if this config is not a minimal-norm attack.
        """
        spec = self.spec
        if not spec.minimal:
            raise ValueError(f"attack {self.name!r} is not a minimal-norm attack "
                             f"({', '.join(s.name for s in SPECS if s.minimal)})")
        return spec.fn(model, x, y, clip=clip, training=training, **spec.kwargs(self, self.resolved_step_size))

    def to_dict(self) -> dict:
        """JSON-friendly description: ``name`` and the fields this attack reads (it parses back)."""
        return {"name": self.name, **{f: getattr(self, f) for f in CONFIG_DEFAULTS if f in self.spec.fields}}


def as_attack(attack: AttackConfig | Mapping, *, use: str | None = None) -> AttackConfig:
    """The one way from a recipe's dict (or a config) to an attack, for objectives, monitors and recipes.

    Args:
        attack: an :class:`AttackConfig` or a dict of its fields (``name`` included).
        use: ``"training"`` or ``"evaluation"``: refuse an attack its spec does not mark for it.

    Raises:
        ValueError: naming an unknown attack, an unknown field, a bad value or the wrong use.
    """
    if isinstance(attack, AttackConfig):
        return _check_use(attack, use)
    if not isinstance(attack, Mapping):
        raise ValueError(f"attack={attack!r} must be an AttackConfig or a dict of its fields")
    unknown = sorted(set(attack) - {"name"} - set(CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"attack {dict(attack)!r}: unknown fields {unknown}; "
                         f"an attack takes name and {list(CONFIG_DEFAULTS)}")
    return _check_use(AttackConfig(**attack), use)


def _check_use(config: AttackConfig, use: str | None) -> AttackConfig:
    if use is not None and use not in config.spec.uses:
        raise ValueError(f"attack {config.name!r} is not a {use} attack; {use} attacks: "
                         f"{[s.name for s in SPECS if use in s.uses]}")
    return config
