"""Running attacks over a dataset: standalone, or as a cascade on the survivors."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfrobust.attacks import AttackConfig
from tfrobust.utils import batches

__all__ = [
    "EVAL_ATTACKS",
    "AUTOATTACK",
    "expand_attacks",
    "run_cascade",
]


EVAL_ATTACKS = ("fgsm", "bim", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack")
"""Names ``evaluate`` accepts; ``autoattack`` stands for the :data:`AUTOATTACK` cascade."""


AUTOATTACK = ("apgd-ce", "apgd-dlr", "square")
"""The AutoAttack-style cascade (Croce & Hein 2020, without FAB and APGD-T)."""


_ITERATIVE = ("bim", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t")


_BLACK_BOX = ("square",)


_RANDOMISED = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square")


def predict_labels(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    fn = tf.function(lambda t: tf.argmax(model(t, training=False), -1))
    return np.concatenate([fn(tf.constant(x[s])).numpy() for s in batches(len(x), batch_size)])


class _Silent:
    """A progress bar that shows nothing (APGD-T advances the real one per target)."""

    def update(self, n):
        pass


_SILENT = _Silent()


def correct_under(model, config: AttackConfig, x, y, batch_size, clip, progress) -> np.ndarray:
    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        x_adv = config(model, xb, yb, clip=clip)
        return tf.equal(tf.argmax(model(x_adv, training=False), -1, output_type=tf.int32),
                        tf.cast(yb, tf.int32))

    out = []
    for s in batches(len(x), batch_size):
        out.append(step(tf.constant(x[s]), tf.constant(y[s])).numpy())
        progress.update(s.stop - s.start)
    return np.concatenate(out) if out else np.zeros([0], bool)


def expand_attacks(names: Sequence[str], cascade: bool = False) -> tuple[list[str], list[str]]:
    """Resolves an attack list into the attacks to run and the cascade among them.

    ``autoattack`` stands for :data:`AUTOATTACK` (APGD-CE → APGD-DLR → Square)
    run as a cascade at its place in the list; listing one of its attacks as
    well adds nothing and is dropped. With ``cascade=True`` the whole list is
    one cascade in the order given. Repeated names are dropped.

    Args:
        names: attack names from :data:`EVAL_ATTACKS`.
        cascade: run every attack as a cascade stage.

    Returns:
        ``(order, stages)``: every attack to run in order, and the cascade stages in order.

    Raises:
        ValueError: naming an unknown attack.
    """
    for name in names:
        if name not in EVAL_ATTACKS:
            raise ValueError(f"attack {name!r} is unknown; choose from {list(EVAL_ATTACKS)}")
    auto = "autoattack" in names
    order: list[str] = []
    for name in names:
        items = AUTOATTACK if name == "autoattack" else (name,)
        for item in items:
            if item in order or (auto and name != "autoattack" and item in AUTOATTACK):
                continue
            order.append(item)
    stages = list(order) if cascade else [a for a in order if auto and a in AUTOATTACK]
    return order, stages


def run_cascade(stages: Sequence[Callable[[np.ndarray], np.ndarray]], alive: np.ndarray
                ) -> list[np.ndarray]:
    """Runs attack stages in turn, each on the examples that survived the earlier ones.

    Args:
        stages: callables taking the indices of the examples to attack and
            returning, for those examples, whether they are still classified
            correctly under the attack.
        alive: boolean mask of the examples to start from (the clean-correct ones).

    Returns:
        The mask of surviving examples after each stage; the last one is the
        per-example AND over all stages (the cascade's worst case).
    """
    alive = np.asarray(alive, bool).copy()
    out = []
    for stage in stages:
        idx = np.flatnonzero(alive)
        if len(idx):
            ok = np.asarray(stage(idx), bool)
            if ok.shape != idx.shape:
                raise ValueError(f"a cascade stage returned {ok.shape[0]} results for {len(idx)} examples")
            alive[idx] = ok
        out.append(alive.copy())
    return out


def attack_config(name: str, eps: float, *, steps: int, step_size, norm: str, apgd_steps: int,
                   square_queries: int, apgd_targets: int = 9) -> AttackConfig | tuple[AttackConfig, ...]:
    if name == "apgd-t":  # one APGD run per target class, each on the survivors of the last
        return tuple(AttackConfig(name="apgd", eps=eps, steps=apgd_steps, norm=norm, target_rank=r)
                     for r in range(2, 2 + apgd_targets))
    if name in ("apgd-ce", "apgd-dlr"):
        return AttackConfig(name="apgd", eps=eps, steps=apgd_steps, norm=norm, loss=name[5:])
    if name == "square":
        return AttackConfig(name="square", eps=eps, steps=square_queries, norm=norm)
    return AttackConfig(name=name, eps=eps, steps=1 if name == "fgsm" else steps, step_size=step_size,
                        norm=norm)


def attack_settings(name: str, *, norm: str, clip, steps: int, step, apgd_steps: int,
                     square_queries: int, stages: list[str], apgd_targets: int = 9) -> dict:
    settings = {"norm": norm, "eps_scale": f"[{clip[0]:g},{clip[1]:g}]"}
    if name in ("apgd-ce", "apgd-dlr"):
        settings.update(steps=int(apgd_steps), loss=name[5:], initial_step="2*eps", alpha=0.75,
                        rho=0.75, random_start=True)
    elif name == "apgd-t":
        settings.update(steps=int(apgd_steps), loss="targeted dlr", targets=int(apgd_targets),
                        target="classes ranked 2.. by the clean logits, one run each on the survivors",
                        initial_step="2*eps", alpha=0.75, rho=0.75, random_start=True)
    elif name == "square":
        settings.update(queries=int(square_queries), p_init=0.8, loss="margin", black_box=True)
    elif name != "fgsm":
        settings.update(steps=int(steps), step_size="2.5*eps/steps" if step is None
                        else float(step), random_start=name == "pgd",
                        loss="cw" if name == "cw" else "ce")
    if name in stages:
        settings["cascade"] = {"stage": stages.index(name) + 1, "of": list(stages),
                               "accuracy": "after this stage; it attacked only the examples "
                                           "that survived the earlier stages"}
    return settings


def run_attacks(clf, x, y, alive, order, stages, eps_list, make_config, *, batch_size, clip,
                 bar) -> dict:
    """Runs every attack of ``order`` at every eps; cascade ``stages`` share their survivors.

    Returns ``{name: {key: (attacked, robust)}}``: boolean masks over the
    examples, ``robust`` being cumulative for a cascade stage.
    """
    n = len(x)
    out: dict = {name: {} for name in order}

    def stage_fn(name, value, key):
        cfgs = make_config(name, value)
        cfgs = cfgs if isinstance(cfgs, tuple) else (cfgs,)

        def stage(idx):
            bar.set_postfix_str(f"{name} eps={key}")
            if len(cfgs) == 1:
                return correct_under(clf, cfgs[0], x[idx], y[idx], batch_size, clip, bar)
            ok = np.ones(len(idx), bool)
            for i, cfg in enumerate(cfgs):  # APGD-T: one run per target, each on what the earlier ones left
                sub = np.flatnonzero(ok)
                if len(sub):
                    ok[sub] = correct_under(clf, cfg, x[idx[sub]], y[idx[sub]], batch_size, clip,
                                             _SILENT)
                bar.update(len(idx) * (i + 1) // len(cfgs) - len(idx) * i // len(cfgs))
            return ok
        return stage

    for key, value in eps_list:
        if stages:
            before = alive
            for name, after in zip(stages, run_cascade([stage_fn(s, value, key) for s in stages], alive)):
                out[name][key] = (before.copy(), after)
                bar.update(n - int(before.sum()))  # examples this stage did not need to attack
                before = after
        for name in order:
            if name in stages:
                continue
            robust = run_cascade([stage_fn(name, value, key)], alive)[0]
            out[name][key] = (alive.copy(), robust)
            bar.update(n - int(alive.sum()))
    return out
