"""Running attacks over a dataset: standalone, or as a cascade on the survivors."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfrobust import keyed_random
from tfrobust.attacks import CASCADES, EVAL_ATTACK_REGISTRY, AttackConfig, Budget, eval_attack
from tfrobust.utils import batches

__all__ = [
    "EVAL_ATTACKS",
    "AUTOATTACK",
    "expand_attacks",
    "attacks_where",
    "attack_settings",
    "run_attacks",
    "correct_under",
    "reseed",
    "Draws",
    "predict_labels",
    "run_cascade",
]


EVAL_ATTACKS = tuple(EVAL_ATTACK_REGISTRY) + tuple(CASCADES)
"""Names ``evaluate`` accepts: the attacks of the registry and its named cascades."""

AUTOATTACK = CASCADES["autoattack"]
"""The standard AutoAttack cascade (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square."""


def attacks_where(names, flag: str) -> list[str]:
    """The attacks of ``names`` whose registry entry has ``flag`` (``"iterative"``, ``"randomised"``, ...)."""
    return [n for n in names if getattr(eval_attack(n), flag)]


_PREDICT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def predict_labels(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The class ``model`` predicts for each image of ``x``, in batches of ``batch_size`` (one trace
    per model and input shape)."""
    table = _PREDICT.setdefault(model, {})
    key = (x.shape[1:], x.dtype.str)
    if key not in table:
        table[key] = tf.function(lambda t: tf.argmax(model(t, training=False), -1),
                                 input_signature=[tf.TensorSpec([None, *x.shape[1:]], x.dtype)])
    fn = table[key]
    return np.concatenate([fn(tf.constant(x[s])).numpy() for s in batches(len(x), batch_size)])


class _Silent:
    """A progress bar that shows nothing (APGD-T advances the real one per target)."""

    def update(self, n):
        pass


_SILENT = _Silent()


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _unit_radius(config: AttackConfig) -> tuple[AttackConfig, float, float]:
    """``config`` at eps 1 and step 1, and the eps and step that scale it back exactly.

    With the default step (``2.5 * eps / steps``) the step scales with eps.
    """
    if config.step_size is None:
        return dataclasses.replace(config, eps=1.0), float(config.eps), float(config.eps)
    return dataclasses.replace(config, eps=1.0, step_size=1.0), float(config.eps), float(config.step_size)


@dataclasses.dataclass(frozen=True)
class Draws:
    """Where an evaluation's random numbers come from: its seed and each example's global index.

    Every random start and every draw of Square's search is keyed by ``(seed, global index,
    use)`` (:mod:`tfrobust.keyed_random`), never by batch, replica or worker: a sharded
    evaluation attacks each example exactly as one process does.
    """

    seed: int
    index: np.ndarray

    @classmethod
    def of(cls, seed: int, n: int, start: int = 0) -> "Draws":
        """The draws of ``n`` consecutive examples from global index ``start``."""
        return cls(int(seed), np.arange(start, start + n, dtype=np.int64))

    def take(self, idx) -> "Draws":
        """The draws of a subset (positions ``idx`` into this one)."""
        return Draws(self.seed, self.index[idx])

    def keys(self, *use) -> np.ndarray:
        """One ``uint32`` key per example for the use named by ``use`` (attack, eps, target)."""
        base = keyed_random.example_keys(self.seed, tf.constant(self.index, tf.int64))
        return keyed_random.combine(base, keyed_random.stream_id(*use)).numpy()


def _compiled_check(model, config: AttackConfig, clip, x: np.ndarray, y: np.ndarray):
    """One traced ``(x, y, eps, step, keys) -> correct`` per model, attack, clip range and input kind.

    The batch size is left open and eps and the step are tensors, so every eps, and every
    batch of the survivors a cascade stage attacks, reuses the same trace (no retracing).
    """
    table = _COMPILED.setdefault(model, {})
    key = (config, None if clip is None else tuple(clip), x.shape[1:], x.dtype.str, y.dtype.str)
    if key not in table:
        scalar = tf.TensorSpec([], tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None, *x.shape[1:]], x.dtype),
                                      tf.TensorSpec([None], y.dtype), scalar, scalar,
                                      tf.TensorSpec([None], tf.uint32)])
        def step(xb, yb, eps, step_size, keys):
            x_adv = config(model, xb, yb, clip=clip, eps_scale=eps, step_scale=step_size, keys=keys)
            return tf.equal(tf.argmax(model(x_adv, training=False), -1, output_type=tf.int32),
                            tf.cast(yb, tf.int32))
        table[key] = step
    return table[key]


def reseed(seed: int) -> None:
    """Seeds TF's global random generator. The attacks of an evaluation draw nothing from it
    (their draws are keyed by example, :class:`Draws`), so their traces are kept across
    evaluations; this only makes anything else random in the model reproducible."""
    tf.random.set_seed(seed)


def _on_replicas(strategy, step, xb, yb, eps, step_size, keys) -> np.ndarray:
    """``step`` on one batch, its rows split in order over the strategy's replicas."""
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    if replicas == 1 or len(xb) < replicas:
        return step(tf.constant(xb), tf.constant(yb), eps, step_size, tf.constant(keys)).numpy()
    bounds = np.linspace(0, len(xb), replicas + 1).astype(int)

    def part(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[bounds[ctx.replica_id_in_sync_group]:
                                          bounds[ctx.replica_id_in_sync_group + 1]]))

    # A Python callable (not the tf.function itself), so each replica gets its own slice.
    out = strategy.run(lambda *args: step(*args), args=(part(xb), part(yb), eps, step_size, part(keys)))
    return np.concatenate([t.numpy() for t in strategy.experimental_local_results(out)])


def correct_under(model, config: AttackConfig, x, y, batch_size, clip, progress, *, draws: Draws,
                  use: tuple = (), strategy: tf.distribute.Strategy | None = None) -> np.ndarray:
    """Per example, whether ``model`` still classifies ``x`` correctly under the attack ``config``.

    ``draws`` key the attack's random numbers by example and ``use`` (see :class:`Draws`); a
    ``strategy`` splits every batch over its replicas.
    """
    unit, eps, step_size = _unit_radius(config)
    step = _compiled_check(model, unit, clip, x, y)
    eps, step_size = tf.constant(eps, tf.float32), tf.constant(step_size, tf.float32)
    keys = draws.keys(*use)
    out = []
    for s in batches(len(x), batch_size):
        out.append(_on_replicas(strategy, step, x[s], y[s], eps, step_size, keys[s]))
        progress.update(s.stop - s.start)
    return np.concatenate(out) if out else np.zeros([0], bool)


def expand_attacks(names: Sequence[str], cascade: bool = False) -> tuple[list[str], list[str]]:
    """Resolves an attack list into the attacks to run and the cascade among them.

    A cascade name of :data:`~tfrobust.attacks.CASCADES` (``autoattack`` =
    APGD-CE → APGD-T → FAB-T → Square) runs as a cascade at its place in the list;
    listing one of its attacks as well adds nothing and is dropped. With ``cascade=True`` the whole list is
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
        if name not in CASCADES:
            eval_attack(name)  # raises, naming the unknown attack
    in_cascades = {a for name in names if name in CASCADES for a in CASCADES[name]}
    order: list[str] = []
    for name in names:
        for item in CASCADES.get(name, (name,)):
            if item in order or (name not in CASCADES and item in in_cascades):
                continue
            order.append(item)
    stages = list(order) if cascade else [a for a in order if a in in_cascades]
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


def attack_settings(name: str, budget: Budget, *, clip, stages: list[str]) -> dict:
    """The report's settings of attack ``name``: what the registry built for ``budget``, its cascade stage."""
    settings = {"eps_scale": f"[{clip[0]:g},{clip[1]:g}]", **eval_attack(name).settings(budget)}
    if name in stages:
        settings["cascade"] = {"stage": stages.index(name) + 1, "of": list(stages),
                               "accuracy": "after this stage; it attacked only the examples "
                                           "that survived the earlier stages"}
    return settings


def run_attacks(clf, x, y, alive, order, stages, eps_list, make_config, *, batch_size, clip,
                 bar, draws: Draws, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Runs every attack of ``order`` at every eps; cascade ``stages`` share their survivors.

    ``draws`` key the random numbers by example (:class:`Draws`), ``strategy`` splits the
    batches over its replicas.

    Returns ``{name: {key: (attacked, robust)}}``: boolean masks over the
    examples, ``robust`` being cumulative for a cascade stage.
    """
    n = len(x)
    out: dict = {name: {} for name in order}

    def stage_fn(name, value, key):
        cfgs = make_config(name, value)

        def stage(idx):
            bar.set_postfix_str(f"{name} eps={key}")
            if len(cfgs) == 1:
                return correct_under(clf, cfgs[0], x[idx], y[idx], batch_size, clip, bar,
                                     draws=draws.take(idx), use=(name, key), strategy=strategy)
            ok = np.ones(len(idx), bool)
            for i, cfg in enumerate(cfgs):  # APGD-T: one run per target, each on what the earlier ones left
                sub = np.flatnonzero(ok)
                if len(sub):
                    ok[sub] = correct_under(clf, cfg, x[idx[sub]], y[idx[sub]], batch_size, clip,
                                             _SILENT, draws=draws.take(idx[sub]), use=(name, key, i),
                                             strategy=strategy)
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
