"""One :class:`AttackSpec` per attack: the registry every consumer reads (docs/architecture.md).

A spec says what an attack is called, what it does in one line, where its function lives
(imported only when it runs, so that ``tfrobust --help`` loads no TensorFlow), which
:class:`~tfrobust.attacks.AttackConfig` fields it reads and how they become the function's
arguments, its norms, whether training and evaluation use it, the evaluation entries it
provides (:class:`EvalAttack`: the names on the command line, how the :data:`Budget` builds
them, the settings they write into the report) and the budget knobs those need
(:class:`Knob`: one :data:`Budget` field and one ``tfrobust evaluate`` flag each).

This module imports nothing heavy; :mod:`tfrobust.attacks.registry` turns it into
``AttackConfig`` and the function table.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Callable, Mapping

from tfrobust.checks import check_choice, check_flag, check_number
from tfrobust.names import ATTACK_LOSSES, NORMS

__all__ = [
    "AttackSpec",
    "EvalAttack",
    "Knob",
    "Budget",
    "SPECS",
    "attack_spec",
    "EVAL_ATTACK_REGISTRY",
    "CASCADES",
    "eval_attack",
    "eval_spec",
    "KNOBS",
    "CONFIG_DEFAULTS",
    "check_field",
]

USES = ("training", "evaluation")
"""Where an attack may run: in a training objective, in an evaluation."""

CONFIG_DEFAULTS: dict[str, Any] = {"eps": 0.3, "steps": 10, "step_size": None, "norm": "linf", "loss": "ce",
                                   "random_start": None, "targeted": False, "target_rank": None,
                                   "init_std": 0.001}
"""The fields of :class:`~tfrobust.attacks.AttackConfig` besides ``name``, with their defaults."""


_FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "eps": lambda v: check_number("eps", v),
    "steps": lambda v: check_number("steps", v, integer=True),
    "step_size": lambda v: check_number("step_size", v, optional=True),
    "norm": lambda v: check_choice("norm", v, NORMS),
    "loss": lambda v: check_choice("loss", v, ATTACK_LOSSES),
    "random_start": lambda v: check_flag("random_start", v, optional=True),
    "targeted": lambda v: check_flag("targeted", v),
    "target_rank": lambda v: check_number("target_rank", v, integer=True, minimum=2, optional=True),
    "init_std": lambda v: check_number("init_std", v),
}


def check_field(field: str, value) -> None:
    """Raises ValueError naming ``value`` unless it is valid for the config field ``field``."""
    _FIELD_CHECKS[field](value)


@dataclasses.dataclass(frozen=True)
class Knob:
    """One integer budget setting of the evaluation attacks: a :data:`Budget` field and a flag.

    Args:
        name: the field (``apgd_steps``); the flag is ``--apgd-steps``.
        default: its value when not given (the published setting).
        help: the flag's help.
        per_class: a number of target classes, capped at the model's classes - 1.
    """

    name: str
    default: int
    help: str
    per_class: bool = False

    @property
    def flag(self) -> str:
        """The ``tfrobust evaluate`` flag."""
        return "--" + self.name.replace("_", "-")


def _step_size(config, budget, name):
    given = budget.step_for(name)
    return "2.5*eps/steps" if given is None else float(given)


REPORT_STEPS = (("steps", lambda config, budget, name: config.steps),)
"""Report entry: the iterations that ran."""
REPORT_STEP_SIZE = (("step_size", _step_size),)
"""Report entry: the step, or the rule that made it."""
REPORT_MINIMAL = (("minimal_norm", lambda config, budget, name: True),)
"""Report entry: a minimal-norm attack run as a bounded one."""


@dataclasses.dataclass(frozen=True)
class EvalAttack:
    """One attack that evaluation, callbacks, recipes and the command line name.

    Args:
        name: the name on the command line and in reports.
        build: ``(eps, budget) -> tuple of dicts of AttackConfig fields`` (several run one after
            another on the survivors, as APGD-T's one run per target class).
        summary: one line for ``--help`` and the docs.
        iterative: takes several gradient steps (the sanity check compares it with FGSM).
        randomised: its result depends on the seed (the seed-stability check reruns it).
        black_box: uses scores only (the masking check compares it with the white-box attacks).
        targeted: attacks towards chosen classes.
        fixed: settings of the algorithm that the budget does not change, reported as they ran.
        min_classes: the fewest classes a model needs for it.
        attack: the :class:`AttackSpec` it belongs to (set when the spec is built).
    """

    name: str
    build: Callable[[float, Any], tuple]
    summary: str
    iterative: bool = False
    randomised: bool = False
    black_box: bool = False
    targeted: bool = False
    fixed: tuple = ()
    min_classes: int = 2
    attack: str = ""

    @property
    def spec(self) -> "AttackSpec":
        """The attack this entry runs."""
        return attack_spec(self.attack)

    def configs(self, eps: float, budget) -> tuple:
        """The :class:`~tfrobust.attacks.AttackConfig` s to run at ``eps``, in order."""
        from tfrobust.attacks.registry import AttackConfig  # pylint: disable=import-outside-toplevel
        return tuple(AttackConfig(name=self.attack, **fields) for fields in self.build(eps, budget))

    def settings(self, budget) -> dict:
        """The settings that ran, read off the configs this budget builds (for the report)."""
        configs = self.configs(1.0, budget)
        first = configs[0]
        out = {"norm": first.norm, "loss": first.resolved_loss, "random_start": first.resolved_random_start}
        for key, value in self.spec.report:
            out[key] = value(first, budget, self.name)
        if len(configs) > 1:
            out["targets"] = len(configs)
        if self.black_box:
            out["black_box"] = True
        out.update(dict(self.fixed))
        return out


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """Everything the library knows about one attack; registering it is all a new attack needs.

    Args:
        name: the ``AttackConfig.name`` and the function's name.
        summary: one line for the docs and listings.
        function: ``"module:attribute"`` of the attack function, imported on first use.
        arguments: ``(argument, source)`` pairs: each keyword of the function and the config
            attribute it comes from (``"step_size"`` is the step after any eps scaling).
        fields: the config fields it reads; any other field must keep its default.
        norms: the threat norms it supports.
        uses: ``"training"``, ``"evaluation"`` or both.
        loss: the loss it climbs whatever ``loss`` says (``None``: ``config.loss``).
        target_loss: the loss reported when ``target_rank`` is set.
        random_start: whether it starts at a random point when ``random_start`` is ``None``.
        labels: the function takes ``y``.
        minimal: a minimal-norm attack: no ``eps``, returns ``(x_adv, distance)``.
        keyed: the function takes ``keys=`` (one ``uint32`` per example) and then draws its random
            numbers by example (:mod:`tfrobust.keyed_random`), so sharded evaluation is exact.
        report: ``(key, getter(config, budget, eval_name))`` entries of its report settings.
        evaluations: the evaluation entries it provides.
        knobs: the budget settings those entries read (beyond ``steps``, ``step_size``, ``norm``).
        quick: cheap field values (few steps) for smoke and contract tests.
    """

    name: str
    summary: str
    function: str
    arguments: tuple = ()
    fields: tuple = ("eps", "norm")
    norms: tuple = NORMS
    uses: tuple = USES
    loss: str | None = None
    target_loss: str | None = None
    random_start: bool = False
    labels: bool = True
    minimal: bool = False
    keyed: bool = False
    report: tuple = ()
    evaluations: tuple = ()
    knobs: tuple = ()
    quick: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unknown = [f for f in self.fields if f not in CONFIG_DEFAULTS]
        if unknown or any(u not in USES for u in self.uses) or not self.uses:
            raise ValueError(f"attack spec {self.name!r}: unknown fields {unknown} or uses {self.uses}")
        if ("evaluation" in self.uses) != bool(self.evaluations):
            raise ValueError(f"attack spec {self.name!r}: evaluation use needs evaluation entries and back")
        object.__setattr__(self, "evaluations",
                           tuple(dataclasses.replace(e, attack=self.name) for e in self.evaluations))

    @property
    def fn(self) -> Callable:
        """The attack function (imported now)."""
        module, attribute = self.function.split(":")
        return getattr(importlib.import_module(module), attribute)

    def check(self, values: Mapping[str, Any]) -> None:
        """Checks config ``values`` (every field) for this attack.

        Raises:
            ValueError: naming a bad value, a norm it does not support, or a field it does not
                read set away from its default.
        """
        for field, value in values.items():
            check_field(field, value)
            if field not in self.fields and value != CONFIG_DEFAULTS[field]:
                readers = [s.name for s in SPECS if field in s.fields]
                raise ValueError(f"{field}={value!r}: {self.name} does not take {field}; "
                                 f"only {', '.join(readers) or 'no attack'} do")
        if values["norm"] not in self.norms:
            raise ValueError(f"norm={values['norm']!r}: {self.name} supports only "
                             + ", ".join(repr(n) for n in self.norms))

    def kwargs(self, config, step_size) -> dict:
        """The function's keyword arguments for ``config`` (besides eps, clip and training)."""
        return {arg: step_size if source == "step_size" else getattr(config, source)
                for arg, source in self.arguments}


# -- the attacks ----------------------------------------------------------------------------------------------


def _gradient(name):
    def build(eps, budget):
        return ({"eps": eps, "steps": budget.steps, "step_size": budget.step_for(name), "norm": budget.norm},)
    return build


def _fields(**fields):
    return lambda eps, budget: ({"eps": eps, "norm": budget.norm, **{k: v(budget) for k, v in fields.items()}},)


def _targets(steps: str, count: str):
    return lambda eps, budget: tuple({"eps": eps, "steps": getattr(budget, steps), "norm": budget.norm,
                                      "target_rank": r} for r in range(2, 2 + getattr(budget, count)))


_PGD_ARGS = (("steps", "steps"), ("step_size", "step_size"), ("norm", "norm"),
             ("random_start", "resolved_random_start"), ("loss", "resolved_loss"), ("targeted", "targeted"))
_PGD_FIELDS = ("eps", "steps", "step_size", "norm", "loss", "random_start", "targeted")
_TARGETS = "classes ranked 2.. by the clean logits, one run each on the survivors"
_APGD_FIXED = (("initial_step", "2*eps"), ("alpha", 0.75), ("rho", 0.75))
_FAB_FIXED = (("eta", 1.05), ("beta", 0.9), ("alpha_max", 0.1), ("restarts", 1))


def _gradient_spec(name, summary, evaluation, *, loss=None, random_start=False, report=REPORT_STEPS
                   + REPORT_STEP_SIZE, quick=None, keyed=False, **flags):
    fields = tuple(f for f in _PGD_FIELDS if not (loss and f == "loss"))
    return AttackSpec(name, summary, f"tfrobust.attacks.gradient:{name}", _PGD_ARGS, fields, loss=loss,
                      random_start=random_start, keyed=keyed, report=report,
                      quick=quick or {"steps": 3, "step_size": 0.1},
                      evaluations=(EvalAttack(name, _gradient(name), evaluation, **flags),))


SPECS: tuple[AttackSpec, ...] = (
    AttackSpec("fgsm", "one signed-gradient step of size eps (Goodfellow et al. 2015)",
               "tfrobust.attacks.gradient:fgsm", (("norm", "norm"), ("loss", "loss"), ("targeted", "targeted")),
               ("eps", "norm", "loss", "targeted"),
               evaluations=(EvalAttack("fgsm", _fields(), "one signed-gradient step of CE (Goodfellow et al.)"),)),
    _gradient_spec("bim", "iterated FGSM, projected, no random start (Kurakin et al. 2017)",
                   "iterated FGSM, no random start (Kurakin et al.)", iterative=True),
    _gradient_spec("pgd", "projected gradient ascent from a random start (Madry et al. 2018)",
                   "PGD on CE from a random start (Madry et al.)", random_start=True, keyed=True,
                   iterative=True, randomised=True),
    _gradient_spec("cw", "PGD on the C&W margin", "PGD on the C&W margin (the decision-surface paper's C&W)",
                   loss="cw", iterative=True),
    AttackSpec("apgd", "Auto-PGD: adaptive step, momentum, best point kept (Croce & Hein 2020)",
               "tfrobust.attacks.apgd:apgd",
               (("steps", "steps"), ("norm", "norm"), ("loss", "loss"), ("targeted", "targeted"),
                ("random_start", "resolved_random_start"), ("target_rank", "target_rank")),
               ("eps", "steps", "norm", "loss", "random_start", "targeted", "target_rank"),
               target_loss="targeted dlr", random_start=True, keyed=True, report=REPORT_STEPS,
               quick={"steps": 6},
               knobs=(Knob("apgd_steps", 100, "iterations of apgd-ce, apgd-dlr and each apgd-t run "
                                              "(default 100, as published)"),
                      Knob("apgd_targets", 9, "target classes of apgd-t, from the runner-up down "
                                              "(default 9, as in AutoAttack)", per_class=True)),
               evaluations=(
                   EvalAttack("apgd-ce", _fields(steps=lambda b: b.apgd_steps, loss=lambda b: "ce"),
                              "Auto-PGD on CE (Croce & Hein 2020)", iterative=True, randomised=True,
                              fixed=_APGD_FIXED),
                   EvalAttack("apgd-dlr", _fields(steps=lambda b: b.apgd_steps, loss=lambda b: "dlr"),
                              "Auto-PGD on the DLR loss", iterative=True, randomised=True, fixed=_APGD_FIXED,
                              min_classes=3),
                   EvalAttack("apgd-t", _targets("apgd_steps", "apgd_targets"),
                              "targeted DLR APGD, one run per runner-up class on the survivors",
                              iterative=True, randomised=True, targeted=True, min_classes=4,
                              fixed=(("loss", "targeted dlr"), ("target", _TARGETS)) + _APGD_FIXED))),
    AttackSpec("fab", "minimal-norm FAB: the nearest linearised boundary each step (Croce & Hein 2020)",
               "tfrobust.attacks.minimal:fab", (("norm", "norm"), ("steps", "steps"), ("target_rank", "target_rank")),
               ("eps", "steps", "norm", "target_rank"), uses=("evaluation",), loss="linearised boundary",
               target_loss="linearised boundary (targeted)", minimal=True, report=REPORT_STEPS + REPORT_MINIMAL,
               quick={"steps": 5},
               knobs=(Knob("fab_steps", 100, "iterations of each fab / fab-t run (default 100)"),
                      Knob("fab_targets", 9, "target classes of fab-t (default 9)", per_class=True)),
               evaluations=(
                   EvalAttack("fab", _fields(steps=lambda b: b.fab_steps),
                              "minimal-norm FAB, untargeted: the nearest linearised boundary each step "
                              "(Croce & Hein 2020)", iterative=True, fixed=_FAB_FIXED),
                   EvalAttack("fab-t", _targets("fab_steps", "fab_targets"),
                              "targeted FAB, one run per runner-up class on the survivors", iterative=True,
                              targeted=True, fixed=(("target", _TARGETS),) + _FAB_FIXED))),
    AttackSpec("fmn", "minimal-norm FMN: margin descent in an adaptive ball (Pintor et al. 2021)",
               "tfrobust.attacks.minimal:fmn", (("norm", "norm"), ("steps", "steps")), ("eps", "steps", "norm"),
               uses=("evaluation",), loss="margin", minimal=True, report=REPORT_STEPS + REPORT_MINIMAL,
               quick={"steps": 5},
               knobs=(Knob("fmn_steps", 100, "iterations of fmn (default 100)"),),
               evaluations=(EvalAttack("fmn", _fields(steps=lambda b: b.fmn_steps),
                                       "minimal-norm FMN: margin descent in an adaptive ball (Pintor et al. 2021)",
                                       iterative=True,
                                       fixed=(("gamma", "0.05 -> 0.001"), ("alpha", "1 -> 0.01 of the radius"))),)),
    AttackSpec("square", "score-based random search over squares (Andriushchenko et al. 2020)",
               "tfrobust.attacks.square:square", (("queries", "steps"), ("norm", "norm"), ("targeted", "targeted")),
               ("eps", "steps", "norm", "targeted"), norms=("linf",), uses=("evaluation",), loss="margin",
               keyed=True, report=(("queries", lambda config, budget, name: config.steps),), quick={"steps": 30},
               knobs=(Knob("square_queries", 5000, "query budget of square (default 5000, as in AutoAttack)"),),
               evaluations=(EvalAttack("square", _fields(steps=lambda b: b.square_queries),
                                       "score-based random search (Andriushchenko et al. 2020), L-inf only",
                                       randomised=True, black_box=True, fixed=(("p_init", 0.8),)),)),
    AttackSpec("kl_pgd", "TRADES' inner maximisation: PGD on KL(p(x) || p(x')) from a Gaussian start "
               "(Zhang et al. 2019)", "tfrobust.attacks.kl:kl_pgd",
               (("steps", "steps"), ("step_size", "step_size"), ("norm", "norm"), ("init_std", "init_std")),
               ("eps", "steps", "step_size", "norm", "init_std"), uses=("training",), loss="kl",
               random_start=True, labels=False, quick={"steps": 3, "step_size": 0.1}),
)
"""Every attack, in the order listings show them."""

_BY_NAME = {s.name: s for s in SPECS}
EVAL_ATTACK_REGISTRY: dict[str, EvalAttack] = {e.name: e for s in SPECS for e in s.evaluations}
"""Every attack evaluation runs, by name."""

CASCADES: dict[str, tuple[str, ...]] = {
    "autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "autoattack-lite": ("apgd-ce", "apgd-dlr", "square"),
}
"""Named cascades: each stage attacks the survivors of the earlier ones. ``autoattack`` is the
standard AutoAttack of Croce & Hein (2020): APGD-CE, APGD-T (9 targets), FAB-T (9 targets),
Square (5,000 queries). ``autoattack-lite`` (APGD-CE, APGD-DLR, Square) was our ``autoattack``
before FAB-T existed: about a fifth of the standard version's gradient steps."""

KNOBS: tuple[Knob, ...] = (Knob("steps", 10, "iterations of bim, pgd and cw"),) + tuple(
    k for s in SPECS for k in s.knobs)
"""Every integer budget setting, from the specs (``steps`` is shared by the gradient attacks)."""


def attack_spec(name: str) -> AttackSpec:
    """The spec of attack ``name``.

    Raises:
        ValueError: naming the unknown attack and listing the known ones.
    """
    if name not in _BY_NAME:
        raise ValueError(f"attack {name!r} is unknown; choose one of {sorted(_BY_NAME)}")
    return _BY_NAME[name]


def eval_attack(name: str) -> EvalAttack:
    """Looks up an evaluation attack.

    Raises:
        ValueError: naming the unknown attack and listing the known ones and cascades.
    """
    if name not in EVAL_ATTACK_REGISTRY:
        raise ValueError(f"attack {name!r} is unknown; choose from "
                         f"{list(EVAL_ATTACK_REGISTRY) + list(CASCADES)}")
    return EVAL_ATTACK_REGISTRY[name]


def eval_spec(name: str) -> AttackSpec:
    """The spec behind evaluation attack ``name``."""
    return eval_attack(name).spec


def _budget_post_init(self) -> None:
    for knob in KNOBS:
        check_number(knob.name, getattr(self, knob.name), integer=True, minimum=1)
    check_choice("norm", self.norm, NORMS)
    if isinstance(self.step_size, dict):
        for name, value in self.step_size.items():
            check_number(f"step_size[{name!r}]", value, optional=True)
    else:
        check_number("step_size", self.step_size, optional=True)


def _step_for(self, name: str) -> float | None:
    """The step size given for attack ``name`` (``None``: the default rule)."""
    return self.step_size.get(name) if isinstance(self.step_size, dict) else self.step_size


def _capped(self, num_classes: int):
    """This budget with every number of target classes capped at ``num_classes - 1``."""
    return dataclasses.replace(self, **{k.name: min(int(getattr(self, k.name)), num_classes - 1)
                                        for k in KNOBS if k.per_class})


if TYPE_CHECKING:
    # Not named Budget: inspect (and so pdoc) would take this declaration for the class's source.
    @dataclasses.dataclass(frozen=True, init=False)
    class _DeclaredBudget:
        """What a type checker sees of :data:`Budget`, the dataclass built below from :data:`KNOBS`."""

        step_size: float | dict | None = None
        norm: str = "linf"

        def __init__(self, *, step_size: float | dict | None = None, norm: str = "linf",
                     **knobs: int) -> None: ...

        def __getattr__(self, knob: str) -> int: ...

        def step_for(self, name: str) -> float | None: ...

        def capped(self, num_classes: int) -> _DeclaredBudget: ...

    Budget = _DeclaredBudget
else:
    Budget = dataclasses.make_dataclass(
        "Budget",
        [(k.name, int, dataclasses.field(default=k.default)) for k in KNOBS]
        + [("step_size", "float | dict | None", dataclasses.field(default=None)),
           ("norm", str, dataclasses.field(default="linf"))],
        namespace={"__post_init__": _budget_post_init, "step_for": _step_for, "capped": _capped},
        frozen=True)
Budget.__module__ = __name__
Budget.__doc__ = ("How hard the evaluation attacks try: everything besides eps that builds them.\n\n"
                  "Built from the specs' knobs (:data:`KNOBS`), so a new attack's setting is a field here "
                  "and a ``tfrobust evaluate`` flag at once.\n\nArgs:\n"
                  + "".join(f"    {k.name}: {k.help}.\n" for k in KNOBS)
                  + "    step_size: the step of bim, pgd and cw; ``None`` means ``2.5 * eps / steps``; a dict "
                    "gives one per attack name (missing names get ``None``).\n"
                    "    norm: the threat norm.\n")
