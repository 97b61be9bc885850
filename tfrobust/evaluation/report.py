"""The evaluation of one model: :func:`evaluate_model` and its JSON report (docs/architecture.md)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfrobust import losses
from tfrobust.attacks import CASCADES, AttackConfig, Budget, eval_attack
from tfrobust.models import load_model, unwrap
from tfrobust.names import BOUND_METHODS
from tfrobust.utils import as_arrays, check_choice, check_range
from tfrobust.evaluation.cascade import (Draws, attack_settings, attacks_where, reseed,
                                         correct_under, predict_labels, run_attacks, expand_attacks)
from tfrobust.evaluation.certified import certified_radii, soundness_check, verified_examples
from tfrobust.evaluation.curve import CERTIFIED_CURVES, check_curve_attack, curve_report, minimal_distances
from tfrobust.evaluation.sharded import (ChunkStore, Shard, chunk_slices, fingerprint, merge_chunks,
                                         owned_chunks, shard_of)
from tfrobust.evaluation.sanity import SEED_SUBSET, black_box_gain, gradient_stats, seed_check, sanity_checks

__all__ = [
    "evaluate_model",
    "check_norm_support",
    "load_model",
    "parse_eps_list",
    "format_table",
]


def parse_eps_list(text: str | Sequence) -> list[tuple[str, float]]:
    """Parses ``"0.1,0.2,8/255"`` into ``[("0.1", 0.1), ...]``, keeping the text as written.

    Raises:
        ValueError: naming a bad or negative eps.
    """
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    out = []
    for item in items:
        item = item.strip()
        try:
            if "/" in item:
                num, den = item.split("/")
                value = float(num) / float(den)
            else:
                value = float(item)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"eps {item!r} is not a number") from None
        if not value >= 0 or math.isinf(value):
            raise ValueError(f"eps {item!r} must be a finite number >= 0")
        out.append((item, value))
    if not out:
        raise ValueError("eps list is empty")
    return out


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What every chunk of an evaluation runs (the same on every worker)."""

    order: list
    stages: list
    eps_list: list
    budget: Budget
    batch_size: int
    clip: tuple
    certify: str | None
    curve: str | None

    def make_config(self, name, value):
        return eval_attack(name).configs(value, self.budget)


def _chunk_arrays(clf, x, y, draws: Draws, plan: _Plan, bar, strategy) -> dict[str, np.ndarray]:
    """Everything an evaluation measures per example, on one chunk: clean correctness, the
    attacked/robust masks of every attack at every eps, the verified masks, the curve's distances."""
    clean = predict_labels(clf, x, plan.batch_size) == y
    runs = run_attacks(clf, x, y, clean, plan.order, plan.stages, plan.eps_list, plan.make_config,
                       batch_size=plan.batch_size, clip=plan.clip, bar=bar, draws=draws, strategy=strategy)
    arrays = {"clean": clean}
    for name in plan.order:
        for key, _ in plan.eps_list:
            arrays[f"attacked|{name}|{key}"], arrays[f"robust|{name}|{key}"] = runs[name][key]
    if plan.certify is not None:
        bar.set_postfix_str(f"certify: {plan.certify}")
        verified = verified_examples(clf, x, y, plan.eps_list, method=plan.certify, clip=plan.clip,
                                     batch_size=plan.batch_size)
        arrays.update({f"verified|{key}": v for key, v in verified.items()})
    if plan.curve in CERTIFIED_CURVES:
        arrays["distances"] = certified_radii(clf, x, y, method=plan.curve.removeprefix("certified-"),
                                              clip=plan.clip, max_eps=float(plan.clip[1] - plan.clip[0]),
                                              batch_size=plan.batch_size)
    elif plan.curve is not None:
        arrays["distances"] = minimal_distances(clf, x, y, plan.curve, plan.budget, batch_size=plan.batch_size,
                                                clip=plan.clip, progress=False)
    if plan.curve is not None:
        bar.update(len(x))
    return arrays


def _local_strategy(strategy: tf.distribute.Strategy | None, shard: Shard):
    """The strategy whose replicas split each batch on this worker: a multi-worker strategy's
    own local devices (cross-worker collectives are never used), else ``strategy`` itself."""
    if strategy is None or shard.workers == 1:
        return strategy
    return tf.distribute.MirroredStrategy(list(strategy.extended.worker_devices),
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


def _run_chunks(clf, x, y, seed, plan: _Plan, store: ChunkStore, shard: Shard, strategy, bar) -> list | None:
    """Runs this worker's chunks (skipping finished ones); on the chief, waits for the others'
    and returns every chunk's arrays in order; elsewhere returns ``None``."""
    slices = chunk_slices(len(x), plan.batch_size)
    per_example = len(plan.order) * len(plan.eps_list) + (plan.curve is not None)
    for c in owned_chunks(len(slices), shard):
        s = slices[c]
        if store.done(c):
            bar.update(per_example * (s.stop - s.start))
            continue
        store.save(c, _chunk_arrays(clf, x[s], y[s], Draws.of(seed, s.stop - s.start, s.start), plan, bar,
                                    strategy))
    if not shard.chief:
        return None
    others = [c for c in range(len(slices)) if c not in set(owned_chunks(len(slices), shard))]
    if others:
        bar.set_postfix_str(f"waiting for {shard.workers - 1} worker(s)")
    store.wait(others, lambda c: bar.update(per_example * (slices[c].stop - slices[c].start)))
    return [store.load(c) for c in range(len(slices))]


def evaluate_model(
    model: keras.Model | Callable,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    attacks: Sequence[str] = ("fgsm", "bim", "cw"),
    eps: Sequence[tuple[str, float]] | str = "0.1,0.2,0.3",
    budget: Budget | None = None,
    clip: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 250,
    seed: int = 0,
    sanity: bool = True,
    progress: bool = True,
    meta: dict | None = None,
    cascade: bool = False,
    curve: str | None = None,
    certify: str | None = None,
    strategy: tf.distribute.Strategy | None = None,
    cluster: tf.distribute.cluster_resolver.ClusterResolver | None = None,
    resume: str | os.PathLike | None = None,
    **deprecated,
) -> dict | None:
    """Accuracy of ``model`` under every attack at every eps (docs/architecture.md JSON).

    The examples are cut into chunks of ``batch_size``; every random number an attack draws
    is keyed by the seed and the example's global index (:class:`~tfrobust.evaluation.cascade.Draws`),
    so one process, the replicas of a ``strategy`` and the workers of a ``cluster`` give the
    same per-example results (:mod:`tfrobust.evaluation.sharded`).

    Args:
        model: a Keras classifier returning logits (a RobustModel is unwrapped).
        x, y: images in the ``clip`` range and their labels (``(N,)``, ``(N, 1)`` or one-hot;
            numpy or tensors), or ``x`` a ``tf.data.Dataset`` of ``(x, y)`` batches and ``y=None``.
        attacks: names from :data:`EVAL_ATTACKS`; ``autoattack`` is the standard
            AutoAttack cascade APGD-CE → APGD-T → FAB-T → Square, ``autoattack-lite``
            APGD-CE → APGD-DLR → Square (see :func:`expand_attacks`).
        eps: ``[(text, value), ...]`` or a comma-separated string.
        budget: how hard the attacks try (:class:`~tfrobust.attacks.Budget`: steps, step sizes,
            the threat norm, APGD/Square/FAB/FMN budgets; default ``Budget()``, the published
            settings). Target counts are capped at the model's classes - 1.
        clip: valid input range.
        batch_size: examples per attack batch, and per chunk of a sharded or resumable run.
        seed: keys the random starts and Square's search, with each example's global index.
        sanity: run the gradient-masking checks (adds an unbounded PGD run and a
            rerun of the randomised attacks with ``seed + 1`` on up to 200 examples).
        progress: show a progress bar (on the chief only).
        meta: extra top-level fields (model path, dataset, split).
        cascade: run the whole attack list as one cascade, in order: each
            attack only sees the examples the earlier ones did not break, and
            its accuracy is the accuracy after it.
        curve: also run this minimal-norm attack (``fab``, ``fab-t``, ``fmn``, or
            ``fmn+fab`` / ``fmn+fab-t``, the per-example minimum of the two; or the certified
            radii of ``certified-ibp`` / ``certified-crown-ibp``, L∞) once and add
            ``result["curve"]``: the distance found per example, accuracy at
            every eps at once, and where the curve lies above a bounded
            attack's worst case (see :mod:`tfrobust.evaluation.curve`).
        certify: also prove robustness by bound propagation (``"ibp"`` or ``"crown-ibp"``, L∞
            only) and add ``result["verified"]``: the verified accuracy at every eps. The sanity
            checks then fail if any verified example was broken by an attack (a soundness bug).
        strategy: a ``tf.distribute`` strategy whose replicas split every batch (build or load
            the model under its scope). A multi-worker strategy's cluster shards the chunks
            over its workers, each using its own devices.
        cluster: the cluster to shard over when ``strategy`` has none, e.g.
            ``tf.distribute.cluster_resolver.TFConfigClusterResolver()`` (``TF_CONFIG``).
        resume: a directory (shared by all workers) where each finished chunk is written
            atomically; a run given the same directory skips the finished chunks. Needed with
            more than one worker.
        **deprecated: the budget's fields as keywords (``steps=``, ``norm=``, ``apgd_steps=``, ...),
            as before 0.2; they warn (DeprecationWarning) and will be removed: pass ``budget=``.


    Returns:
        The evaluation dict; ``None`` on a worker that is not the chief (the chief merges
        every worker's chunks and writes the one report).

    Raises:
        TypeError: on an unknown keyword, or ``budget=`` together with its fields as keywords.
        ValueError: naming a bad value, an attack that does not support the norm, a model with
            too few classes for an attack, or a resume directory holding another evaluation.
    """
    eps_list = parse_eps_list(eps) if isinstance(eps, str) else list(eps)
    order, stages = expand_attacks(list(attacks), cascade)
    budget = _budget(budget, deprecated)
    norm = budget.norm
    _check_curve_and_certify(curve, certify, norm)
    check_norm_support(order, norm, attacks)
    shard = _shard(strategy, cluster, resume)
    x, y = _labelled_examples(x, y, clip)
    clf = unwrap(model)
    losses.check_logits(clf, name="model")
    reseed(seed)
    start = time.time()
    x = x.astype(np.float32, copy=False)
    y = y.astype(np.int64, copy=False)
    n = len(x)
    budget = _capped_budget(clf, x, order, curve, budget)
    plan = _Plan(order, stages, eps_list, budget, int(batch_size), tuple(clip), certify, curve)
    local = _local_strategy(strategy, shard)
    store = _chunk_store(resume, plan, seed, x, y, clf)
    bar = _progress_bar(_progress_total(plan, n, sanity), enabled=progress and shard.chief)
    chunks = _run_chunks(clf, x, y, seed, plan, store, shard, local, bar)
    if chunks is None:
        bar.close()
        return None
    arrays = merge_chunks(chunks)
    result = {**(meta or {}), "n": int(n), "seed": int(seed)}
    runs, robust_all, verified = _add_accuracies(result, arrays, plan, clip)
    if sanity:
        _add_sanity(result, clf, x, y, arrays["clean"], plan, runs, robust_all, verified, norm=norm, seed=seed,
                    batch_size=batch_size, clip=clip, bar=bar, strategy=local)
    bar.close()
    if curve is not None:
        result["curve"] = curve_report(arrays["distances"], curve, result["worst_case"], dict(eps_list),
                                       clip=clip)
    result["distribution"] = _distribution(shard, local, batch_size)
    result["seconds"] = round(time.time() - start, 2)
    return result


def _distribution(shard: Shard, local: tf.distribute.Strategy | None, batch_size: int) -> dict:
    """The report's ``distribution``: workers, replicas per worker and chunk size."""
    return {"workers": shard.workers, "replicas": 1 if local is None else int(local.num_replicas_in_sync),
            "chunk_size": int(batch_size)}


def _shard(strategy: tf.distribute.Strategy | None, cluster, resume) -> Shard:
    """This worker's shard of the cluster (``cluster``, else the strategy's); refuses more than one
    worker without a ``resume`` directory."""
    shard = shard_of(cluster if cluster is not None else getattr(strategy, "cluster_resolver", None))
    if shard.workers > 1 and resume is None:
        raise ValueError(f"an evaluation over {shard.workers} workers needs resume=DIR, a directory "
                         "every worker can read and write")
    return shard


def _capped_budget(clf, x: np.ndarray, order: Sequence[str], curve: str | None, budget: Budget) -> Budget:
    """``budget`` with its target counts capped at the classes of ``clf`` (counted by one call), after
    checking that every attack (and the curve) has the classes it needs."""
    num_classes = int(clf(tf.constant(x[:1]), training=False).shape[-1])
    _check_classes(order, curve, num_classes)
    return budget.capped(num_classes)


def _labelled_examples(x, y, clip: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as arrays (``x`` may be a dataset of batches), refusing no labels, no examples and
    inputs outside ``clip``."""
    x, y = as_arrays(x, y)
    if y is None:
        raise ValueError("evaluate_model needs labels: pass y, or a tf.data.Dataset of (x, y)")
    if len(x) == 0:
        raise ValueError("evaluate_model got no examples")
    check_range(x, clip)
    return x, y


def _chunk_store(resume, plan: _Plan, seed: int, x: np.ndarray, y: np.ndarray, clf) -> ChunkStore:
    """The store of finished chunks in ``resume`` (none when ``None``), keyed by the fingerprint of
    the plan, seed, examples and weights."""
    return ChunkStore(resume, {} if resume is None else fingerprint(
        {"plan": dataclasses.asdict(plan), "seed": int(seed), "n": len(x)}, x, y, clf.get_weights()))


def _progress_bar(total: int, *, enabled: bool):
    """The evaluation's progress bar on stderr (updated every 30 s when stderr is not a terminal)."""
    return tqdm(total=total, desc="evaluate", unit="img", disable=not enabled,
                file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30.0)


def _progress_total(plan: _Plan, n: int, sanity: bool) -> int:
    """The progress bar's length: one step per example per attack and eps (and for the curve), plus
    the sanity checks' unbounded PGD, gradient statistics and reruns of the randomised attacks."""
    m = min(n, SEED_SUBSET)
    randomised = attacks_where(plan.order, "randomised")
    reruns = len([a for a in plan.order
                  if a in randomised or (a in plan.stages and set(plan.stages) & set(randomised))])
    return ((len(plan.order) * len(plan.eps_list) + (plan.curve is not None)) * n
            + (2 * min(n, 500) + m * (reruns or 2) if sanity else 0))


def _add_accuracies(result: dict, arrays: dict, plan: _Plan,
                    clip: tuple[float, float]) -> tuple[dict, dict, dict | None]:
    """Adds the clean accuracy, every attack's robust accuracy and settings, the worst case and
    (``certify``) the verified accuracy to ``result``; returns the per-attack ``runs`` masks, the
    worst-case robust masks and the verified masks (``None`` without ``certify``)."""
    eps_list = plan.eps_list
    result.update({"clean_accuracy": float(arrays["clean"].mean()), "attacks": {}, "worst_case": {}, "settings": {}})
    runs = {name: {key: (arrays[f"attacked|{name}|{key}"], arrays[f"robust|{name}|{key}"])
                   for key, _ in eps_list} for name in plan.order}
    robust_all = {key: arrays["clean"].copy() for key, _ in eps_list}
    for name in plan.order:
        result["attacks"][name] = {key: float(runs[name][key][1].mean()) for key, _ in eps_list}
        for key, _ in eps_list:
            robust_all[key] &= runs[name][key][1]
        result["settings"][name] = attack_settings(name, plan.budget, clip=clip, stages=plan.stages)
    result["worst_case"] = {key: float(v.mean()) for key, v in robust_all.items()}
    verified = None
    if plan.certify is not None:
        verified = {key: arrays[f"verified|{key}"] for key, _ in eps_list}
        result["verified"] = {key: float(v.mean()) for key, v in verified.items()}
        result["settings"]["certify"] = {"method": plan.certify, "norm": "linf", "clip": [float(c) for c in clip]}
    return runs, robust_all, verified


def _add_sanity(result: dict, clf, x: np.ndarray, y: np.ndarray, clean_correct: np.ndarray, plan: _Plan, runs: dict,
                robust_all: dict, verified: dict | None, *, norm: str, seed: int, batch_size: int,
                clip: tuple[float, float], bar, strategy) -> None:
    """Adds ``result["sanity"]``: the gradient-masking checks (black-box gain, seed check, unbounded
    PGD, gradient statistics) and, with ``verified`` masks, the soundness check."""
    n, order, eps_list, budget = len(x), plan.order, plan.eps_list, plan.budget
    m = min(n, SEED_SUBSET)
    gain = black_box_gain(runs, order, eps_list) if "square" in order else None
    seeds = seed_check(clf, x[:m], y[:m], clean_correct[:m], order, plan.stages, eps_list,
                       plan.make_config, robust_all, runs, seed=seed, steps=budget.steps, norm=norm,
                       batch_size=batch_size, clip=clip, bar=bar, strategy=strategy)
    m_unb = min(n, 500)
    width = float(clip[1] - clip[0])
    unbounded = AttackConfig(name="pgd", eps=width, steps=max(budget.steps, 20), step_size=width / 10,
                             norm="linf", loss="cw")
    bar.set_postfix_str("sanity: unbounded pgd")
    unbounded_acc = float(correct_under(clf, unbounded, x[:m_unb], y[:m_unb], batch_size, clip,
                                        bar, draws=Draws.of(seed, m_unb),
                                        use=("sanity-unbounded",), strategy=strategy).mean())
    stats = gradient_stats(clf, x[:m_unb], y[:m_unb], batch_size)
    bar.update(m_unb)
    result["sanity"] = sanity_checks(result, dict(eps_list), grad_stats=stats,
                                     unbounded_accuracy=unbounded_acc,
                                     num_classes=int(stats["logits"].shape[-1]),
                                     black_box_gain=gain, seed_check=seeds)
    if verified is not None:
        result["sanity"]["checks"].append(soundness_check(verified, robust_all))
        result["sanity"]["passed"] = all(c["passed"] for c in result["sanity"]["checks"])


def _check_curve_and_certify(curve: str | None, certify: str | None, norm: str) -> None:
    """Raises ValueError on an unknown curve or bound method, or a certified one off L∞."""
    if curve is not None:
        check_curve_attack(curve)
        if curve in CERTIFIED_CURVES and norm != "linf":
            raise ValueError(f"norm={norm!r}: curve={curve!r} proves L∞ balls only")
    if certify is not None:
        check_choice("certify", certify, BOUND_METHODS)
        if norm != "linf":
            raise ValueError(f"norm={norm!r}: certify={certify!r} proves L∞ balls only")


def _check_classes(order: Sequence[str], curve: str | None, num_classes: int) -> None:
    """Raises ValueError if the model has fewer classes than an attack (or the curve) needs."""
    for name in order:
        need = eval_attack(name).min_classes
        if num_classes < need:
            raise ValueError(f"{name} needs at least {need} classes, the model has {num_classes}")
    if curve is not None and num_classes < 2:
        raise ValueError(f"a curve needs at least 2 classes, the model has {num_classes}")


def _budget(budget: Budget | None, deprecated: dict) -> Budget:
    """``budget``, or one built from the budget keywords of 0.1 (with a DeprecationWarning)."""
    fields = [f.name for f in dataclasses.fields(Budget)]
    unknown = sorted(set(deprecated) - set(fields))
    if unknown:
        raise TypeError(f"evaluate_model() got unexpected keyword arguments {unknown}")
    if not deprecated:
        return Budget() if budget is None else budget
    if budget is not None:
        raise TypeError(f"evaluate_model(): pass budget= or the keywords {sorted(deprecated)}, not both")
    given = ", ".join(f"{k}={v!r}" for k, v in deprecated.items())
    warnings.warn(f"evaluate_model({given}) is deprecated and goes in the next release; pass "
                  f"budget=Budget({given})", DeprecationWarning, stacklevel=3)
    return Budget(**deprecated)


def check_norm_support(order: Sequence[str], norm: str, requested: Sequence[str] = ()) -> None:
    """Raises ValueError naming the first attack of ``order`` whose spec does not support ``norm``
    (and the cascade of ``requested`` it came from)."""
    for name in order:
        norms = eval_attack(name).spec.norms
        if norm not in norms:
            within = [c for c in requested if c in CASCADES and name in CASCADES[c]]
            note = f" (also part of {', '.join(within)})" if within else ""
            raise ValueError(f"norm={norm!r}: the {name} attack{note} supports only {', '.join(norms)}")


def format_table(result: dict) -> str:
    """A plain-text table of an evaluation result."""
    keys = list(result["worst_case"])
    lines = [f"clean accuracy {result['clean_accuracy']:.3f} on n={result['n']}",
             "attack      " + "".join(f"{k:>9}" for k in keys)]
    rows = list(result["attacks"].items()) + [("worst case", result["worst_case"])]
    if "verified" in result:
        rows.append(("verified", result["verified"]))
    for name, table in rows:
        lines.append(f"{name:<12}" + "".join(f"{table[k]:>9.3f}" for k in keys))
    if "curve" in result:
        c = result["curve"]
        lines.append(f"curve ({c['attack']}): median distance {c['median_distance']:.4g}, "
                     f"found for {c['found']:.1%}; at eps "
                     + ", ".join(f"{k}: {v:.3f}" for k, v in c["at_eps"].items()))
        for d in c["disagreements"]:
            lines.append(f"  [WARN] eps {d['eps']}: curve {d['curve']:.3f} > worst case {d['worst_case']:.3f}: "
                         f"{d['note']}")
    if "sanity" in result:
        lines.append("sanity: " + ("passed" if result["sanity"]["passed"] else "FAILED"))
        for c in result["sanity"]["checks"]:
            lines.append(f"  [{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    return "\n".join(lines)
