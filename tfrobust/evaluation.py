"""Accuracy under attack, worst case over attacks, and gradient-masking sanity checks.

:func:`evaluate_model` runs every attack at every eps on the same examples and
counts an example as robust at an eps only if it survives *all* attacks run
(per-example worst case, stronger than the minimum of the accuracies).

Attacks run standalone (each on every clean-correct example) or as a cascade
(AutoAttack-style, DESIGN §1.4, §3.10): each stage attacks only the examples
that survived the earlier stages, and reports the accuracy after it. The list
entry ``autoattack`` is the cascade APGD-CE → APGD-DLR → Square; ``cascade=True``
(``--cascade``) makes the whole list one cascade in the order given.

The ``sanity`` block flags the usual signs of gradient masking (DESIGN §1.1,
§3.10): accuracy rising with eps, iterative attacks weaker than FGSM, an
unbounded attack that fails to reach ~0%, vanishing gradients, probability
outputs, a black-box attack (Square) that breaks examples every white-box
attack failed on, and a worst case that moves with the random seed.

The result is the evaluation JSON of DESIGN §4.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfrobust import attacks as attacks_module
from tfrobust import data, losses, norms
from tfrobust.attacks import AttackConfig

__all__ = [
    "HELP",
    "add_arguments",
    "run",
    "evaluate_model",
    "sanity_checks",
    "run_cascade",
    "expand_attacks",
    "seed_tolerance",
    "AUTOATTACK",
    "load_model",
    "parse_eps_list",
    "EVAL_ATTACKS",
    "format_table",
]

HELP = "accuracy under each attack and eps, worst case, and gradient-masking sanity checks"

EVAL_ATTACKS = ("fgsm", "bim", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack")
"""Names ``evaluate`` accepts; ``autoattack`` stands for the :data:`AUTOATTACK` cascade."""
AUTOATTACK = ("apgd-ce", "apgd-dlr", "square")
"""The AutoAttack-style cascade (Croce & Hein 2020, without FAB and APGD-T)."""
_ITERATIVE = ("bim", "pgd", "cw", "apgd-ce", "apgd-dlr", "apgd-t")
_BLACK_BOX = ("square",)
_RANDOMISED = ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square")
_TOL = 0.01  # accuracy tolerance for monotonicity checks (sampling noise of random starts)
_SEED_SUBSET = 200  # examples rerun with seed + 1 for the seed-stability check
_SEED_DEPENDENT_SHARE = 0.05  # share of seed-dependent examples the seed check tolerates


def load_model(path: str | Path) -> keras.Model:
    """Loads a ``.keras`` model (plain or :class:`~tfrobust.models.RobustModel`).

    Raises:
        FileNotFoundError: naming the path.
    """
    import tfrobust.models  # noqa: F401  (registers RobustModel and the objectives)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {str(path)!r} does not exist")
    return keras.models.load_model(path, compile=False)


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


def _classifier(model: keras.Model) -> keras.Model:
    return getattr(model, "classifier", model)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def _predict(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    fn = tf.function(lambda t: tf.argmax(model(t, training=False), -1))
    return np.concatenate([fn(tf.constant(x[s])).numpy() for s in _batches(len(x), batch_size)])


class _Silent:
    """A progress bar that shows nothing (APGD-T advances the real one per target)."""

    def update(self, n):
        pass


_SILENT = _Silent()


def _correct_under(model, config: AttackConfig, x, y, batch_size, clip, progress) -> np.ndarray:
    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        x_adv = config(model, xb, yb, clip=clip)
        return tf.equal(tf.argmax(model(x_adv, training=False), -1, output_type=tf.int32),
                        tf.cast(yb, tf.int32))

    out = []
    for s in _batches(len(x), batch_size):
        out.append(step(tf.constant(x[s]), tf.constant(y[s])).numpy())
        progress.update(s.stop - s.start)
    return np.concatenate(out) if out else np.zeros([0], bool)


def _gradient_stats(model, x, y, batch_size) -> dict:
    @tf.function(reduce_retracing=True)
    def grads(xb, yb):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(xb)
            logits = model(xb, training=False)
            d = losses.decision_margin(logits, yb)
            ce = losses.cross_entropy(logits, yb)
        zero = tf.UnconnectedGradients.ZERO
        return (norms.per_example_norm(tape.gradient(d, xb, unconnected_gradients=zero), "l2"),
                norms.per_example_norm(tape.gradient(ce, xb, unconnected_gradients=zero), "l2"),
                logits)

    d_norms, ce_norms, logits = [], [], []
    for s in _batches(len(x), batch_size):
        a, b, z = grads(tf.constant(x[s]), tf.constant(y[s]))
        d_norms.append(a.numpy()), ce_norms.append(b.numpy()), logits.append(z.numpy())
    return {"margin_grad": np.concatenate(d_norms), "ce_grad": np.concatenate(ce_norms),
            "logits": np.concatenate(logits)}


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


def seed_tolerance(m: int, share: float = _SEED_DEPENDENT_SHARE) -> float:
    """Largest accuracy change between two seeds on ``m`` examples the sanity check accepts.

    If a ``share`` of the examples is seed-dependent (example i survives a run
    with probability p_i in (0, 1)) and the rest is not, the difference of two
    runs' accuracies has mean 0 and variance ``2 Σ p_i (1 - p_i) / m²``, at
    most ``share / (2 m)``. The tolerance is three such standard deviations, so
    an evaluation with at most 5% seed-dependent examples fails the check with
    probability about 0.3% or less, while one whose result moves by more is
    flagged. ``m=200`` gives 0.034.
    """
    return 3.0 * math.sqrt(share / (2.0 * max(int(m), 1)))


def sanity_checks(result: dict, eps_values: dict[str, float], *, grad_stats: dict | None = None,
                  unbounded_accuracy: float | None = None, num_classes: int = 10,
                  black_box_gain: dict[str, float] | None = None,
                  seed_check: dict | None = None) -> dict:
    """The ``sanity`` block: each check with ``passed`` and a ``detail``.

    Args:
        result: an evaluation dict with ``attacks`` and ``clean_accuracy``.
        eps_values: eps key (as written) -> its value.
        grad_stats: per-example input-gradient norms and logits (from the evaluation).
        unbounded_accuracy: accuracy under an attack whose eps covers the clip range.
        num_classes: for the chance level of the unbounded check.
        black_box_gain: eps key -> share of examples the black-box Square attack
            broke although every white-box attack run on them failed. Without it,
            the check compares accuracies (Square's against the strongest white-box one).
        seed_check: the worst case rerun with another seed: ``eps`` (key), ``m``
            (examples), ``accuracy`` and ``accuracy_rerun``, ``changed`` (examples
            whose outcome differs), ``tolerance``, ``what`` (what was rerun).
    """
    checks = []
    rising = []
    for name, table in result["attacks"].items():
        accs = sorted((eps_values[k], acc) for k, acc in table.items())
        prev = result["clean_accuracy"]
        for eps, acc in accs:
            if acc > prev + _TOL:
                rising.append(f"{name} at eps {eps:g}: {acc:.3f} > {prev:.3f}")
            prev = acc
    checks.append({"name": "accuracy_falls_with_eps", "passed": not rising,
                   "detail": "; ".join(rising) or "accuracy never rises with eps (tolerance 0.01)"})

    if "fgsm" in result["attacks"] and any(a in result["attacks"] for a in _ITERATIVE):
        weaker = []
        for key, fg in result["attacks"]["fgsm"].items():
            best = min(result["attacks"][a][key] for a in _ITERATIVE
                       if a in result["attacks"] and key in result["attacks"][a])
            if best > fg + _TOL:
                weaker.append(f"eps {key}: iterative {best:.3f} > fgsm {fg:.3f}")
        checks.append({"name": "iterative_not_weaker_than_fgsm", "passed": not weaker,
                       "detail": "; ".join(weaker) or "the strongest iterative attack is at least as "
                                                      "strong as FGSM at every eps"})

    white = [a for a in result["attacks"] if a not in _BLACK_BOX]
    if "square" in result["attacks"] and white:
        stronger = []
        if black_box_gain is not None:
            for key, gain in black_box_gain.items():
                if gain > _TOL:
                    stronger.append(f"eps {key}: square broke {gain:.3f} of the examples that every "
                                    "white-box attack failed on")
            ok_detail = ("square broke at most 0.01 of the examples at every eps beyond what the "
                         "white-box attacks broke")
        else:
            for key, sq in result["attacks"]["square"].items():
                best = min(result["attacks"][a][key] for a in white if key in result["attacks"][a])
                if sq < best - _TOL:
                    stronger.append(f"eps {key}: square {sq:.3f} < white-box {best:.3f}")
            ok_detail = "no white-box attack is weaker than square (tolerance 0.01)"
        checks.append({"name": "white_box_not_weaker_than_square", "passed": not stronger,
                       "detail": ("; ".join(stronger) + ": gradients are masked, trust the black-box "
                                  "number") if stronger else ok_detail})

    if seed_check is not None:
        diff = abs(seed_check["accuracy"] - seed_check["accuracy_rerun"])
        checks.append({"name": "stable_across_seeds", "passed": diff <= seed_check["tolerance"],
                       "detail": f"{seed_check['what']} at eps {seed_check['eps']} on "
                                 f"{seed_check['m']} examples: {seed_check['accuracy']:.3f} with seed "
                                 f"{seed_check['seed']}, {seed_check['accuracy_rerun']:.3f} with seed "
                                 f"{seed_check['seed'] + 1} ({seed_check['changed']} examples changed; "
                                 f"tolerance {seed_check['tolerance']:.3f})"})

    if unbounded_accuracy is not None:
        limit = max(0.05, 1.0 / num_classes)
        checks.append({"name": "unbounded_attack_reaches_zero",
                       "passed": unbounded_accuracy <= limit,
                       "detail": f"accuracy {unbounded_accuracy:.3f} under PGD with eps covering the "
                                 f"whole input range (must be <= {limit:.2f})"})

    if grad_stats is not None:
        zero_d = float(np.mean(grad_stats["margin_grad"] <= 1e-12))
        zero_ce = float(np.mean(grad_stats["ce_grad"] <= 1e-12))
        checks.append({"name": "gradients_not_vanishing", "passed": zero_d < 0.01,
                       "detail": f"{zero_d:.1%} of examples have a zero margin gradient; "
                                 f"{zero_ce:.1%} a zero cross-entropy gradient (saturated softmax"
                                 f"{': prefer the cw attack' if zero_ce > 0.1 else ''}); median margin "
                                 f"gradient L2 norm {float(np.median(grad_stats['margin_grad'])):.3g}"})
        z = grad_stats["logits"]
        probs_like = bool(np.all((z >= 0) & (z <= 1)) and np.allclose(z.sum(-1), 1.0, atol=1e-4))
        checks.append({"name": "logits_not_probabilities", "passed": not probs_like,
                       "detail": "outputs are probabilities: attacks on them are unreliable"
                       if probs_like else "outputs are unnormalised logits"})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def _attack_config(name: str, eps: float, *, steps: int, step_size, norm: str, apgd_steps: int,
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


def _attack_settings(name: str, *, norm: str, clip, steps: int, step, apgd_steps: int,
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


def _run_attacks(clf, x, y, alive, order, stages, eps_list, make_config, *, batch_size, clip,
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
                return _correct_under(clf, cfgs[0], x[idx], y[idx], batch_size, clip, bar)
            ok = np.ones(len(idx), bool)
            for i, cfg in enumerate(cfgs):  # APGD-T: one run per target, each on what the earlier ones left
                sub = np.flatnonzero(ok)
                if len(sub):
                    ok[sub] = _correct_under(clf, cfg, x[idx[sub]], y[idx[sub]], batch_size, clip,
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


def evaluate_model(
    model: keras.Model | Callable,
    x: np.ndarray,
    y: np.ndarray,
    *,
    attacks: Sequence[str] = ("fgsm", "bim", "cw"),
    eps: Sequence[tuple[str, float]] | str = "0.1,0.2,0.3",
    steps: int = 10,
    step_size: float | dict[str, float | None] | None = None,
    norm: str = "linf",
    clip: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 250,
    seed: int = 0,
    sanity: bool = True,
    progress: bool = True,
    meta: dict | None = None,
    cascade: bool = False,
    apgd_steps: int = 100,
    square_queries: int = 5000,
    apgd_targets: int = 9,
) -> dict:
    """Accuracy of ``model`` under every attack at every eps (DESIGN §4 JSON).

    Args:
        model: a Keras classifier returning logits (a RobustModel is unwrapped).
        x, y: images in ``clip`` range and integer labels.
        attacks: names from :data:`EVAL_ATTACKS`; ``autoattack`` is the
            APGD-CE → APGD-DLR → Square cascade (see :func:`expand_attacks`).
        eps: ``[(text, value), ...]`` or a comma-separated string.
        steps: iterations of BIM, PGD and C&W.
        step_size: their step; ``None`` means ``2.5 * eps / steps``; a dict gives
            one per attack name (missing names get ``None``).
        norm: threat norm (Square needs ``"linf"``).
        clip: valid input range.
        batch_size: examples per attack batch.
        seed: seeds TF's random generator (random starts, Square's search).
        sanity: run the gradient-masking checks (adds an unbounded PGD run and a
            rerun of the randomised attacks with ``seed + 1`` on up to 200 examples).
        progress: show a progress bar.
        meta: extra top-level fields (model path, dataset, split).
        cascade: run the whole attack list as one cascade, in order: each
            attack only sees the examples the earlier ones did not break, and
            its accuracy is the accuracy after it.
        apgd_steps: iterations of APGD-CE and APGD-DLR (published: 100).
        square_queries: query budget of Square (AutoAttack standard: 5000).
        apgd_targets: target classes APGD-T tries per example, from the
            runner-up down (AutoAttack standard: 9); capped at classes - 1.

    Returns:
        The evaluation dict.
    """
    eps_list = parse_eps_list(eps) if isinstance(eps, str) else list(eps)
    order, stages = expand_attacks(list(attacks), cascade)
    norms.validate_norm(norm)
    if "square" in order and norm != "linf":
        raise ValueError(f"norm={norm!r}: the square attack (also part of autoattack) supports only linf")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if apgd_steps < 1:
        raise ValueError(f"apgd_steps={apgd_steps} must be >= 1")
    if square_queries < 1:
        raise ValueError(f"square_queries={square_queries} must be >= 1")
    if apgd_targets < 1:
        raise ValueError(f"apgd_targets={apgd_targets} must be >= 1")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as images, got {len(x)} images and {len(y)} labels")
    clf = _classifier(model)
    losses.check_logits(clf, name="model")
    tf.random.set_seed(seed)
    start = time.time()
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    n = len(x)
    num_classes = int(clf(tf.constant(x[:1]), training=False).shape[-1])
    if "apgd-dlr" in order and num_classes < 3:
        raise ValueError(f"apgd-dlr needs at least 3 classes, the model has {num_classes}")
    if "apgd-t" in order and num_classes < 4:
        raise ValueError(f"apgd-t needs at least 4 classes, the model has {num_classes}")
    apgd_targets = min(int(apgd_targets), num_classes - 1)
    clean_correct = _predict(clf, x, batch_size) == y
    result = {**(meta or {}), "n": int(n), "seed": int(seed),
              "clean_accuracy": float(clean_correct.mean()), "attacks": {}, "worst_case": {},
              "settings": {}}

    def step_for(name):
        return step_size.get(name) if isinstance(step_size, dict) else step_size

    def make_config(name, value):
        return _attack_config(name, value, steps=steps, step_size=step_for(name), norm=norm,
                              apgd_steps=apgd_steps, square_queries=square_queries,
                              apgd_targets=apgd_targets)

    m = min(n, _SEED_SUBSET)
    reruns = len([a for a in order if a in _RANDOMISED or (a in stages and set(stages) & set(_RANDOMISED))])
    total = len(order) * len(eps_list) * n + (2 * min(n, 500) + m * (reruns or 2) if sanity else 0)
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    runs = _run_attacks(clf, x, y, clean_correct, order, stages, eps_list, make_config,
                        batch_size=batch_size, clip=clip, bar=bar)
    robust_all = {key: clean_correct.copy() for key, _ in eps_list}
    for name in order:
        result["attacks"][name] = {key: float(runs[name][key][1].mean()) for key, _ in eps_list}
        for key, _ in eps_list:
            robust_all[key] &= runs[name][key][1]
        result["settings"][name] = _attack_settings(
            name, norm=norm, clip=clip, steps=steps, step=step_for(name), apgd_steps=apgd_steps,
            square_queries=square_queries, stages=stages, apgd_targets=apgd_targets)
    result["worst_case"] = {key: float(v.mean()) for key, v in robust_all.items()}

    if sanity:
        gain = _black_box_gain(runs, order, eps_list) if "square" in order else None
        seed_check = _seed_check(clf, x[:m], y[:m], clean_correct[:m], order, stages, eps_list,
                                 make_config, robust_all, runs, seed=seed, steps=steps, norm=norm,
                                 batch_size=batch_size, clip=clip, bar=bar)
        m_unb = min(n, 500)
        width = float(clip[1] - clip[0])
        unbounded = AttackConfig(name="pgd", eps=width, steps=max(steps, 20), step_size=width / 10,
                                 norm="linf", loss="cw")
        bar.set_postfix_str("sanity: unbounded pgd")
        unbounded_acc = float(_correct_under(clf, unbounded, x[:m_unb], y[:m_unb], batch_size, clip,
                                             bar).mean())
        stats = _gradient_stats(clf, x[:m_unb], y[:m_unb], batch_size)
        bar.update(m_unb)
        result["sanity"] = sanity_checks(result, dict(eps_list), grad_stats=stats,
                                         unbounded_accuracy=unbounded_acc,
                                         num_classes=int(stats["logits"].shape[-1]),
                                         black_box_gain=gain, seed_check=seed_check)
    bar.close()
    result["seconds"] = round(time.time() - start, 2)
    return result


def _black_box_gain(runs: dict, order: list[str], eps_list) -> dict[str, float]:
    """Per eps: share of examples Square broke that every white-box attack attacked and failed on."""
    white = [a for a in order if a not in _BLACK_BOX]
    gain = {}
    for key, _ in eps_list:
        attacked, robust = runs["square"][key]
        broken = attacked & ~robust
        for name in white:
            w_attacked, w_robust = runs[name][key]
            broken &= w_attacked & w_robust
        gain[key] = float(broken.mean()) if white else 0.0
    return gain


def _seed_check(clf, x, y, clean_correct, order, stages, eps_list, make_config, robust_all, runs, *,
                seed, steps, norm, batch_size, clip, bar) -> dict:
    """Reruns the randomised attacks with ``seed + 1`` on the first examples at one eps.

    The eps is the one whose worst case is nearest 0.5 (where seed dependence
    shows most). Deterministic standalone attacks keep their results; a cascade
    with a randomised stage is rerun whole. Without any randomised attack,
    PGD with random start is run with both seeds instead.
    """
    m = len(x)
    key, value = min(eps_list, key=lambda kv: abs(float(robust_all[kv[0]].mean()) - 0.5))
    randomised = [a for a in order if a in _RANDOMISED]
    rerun_stages = stages if any(a in _RANDOMISED for a in stages) else []
    rerun_alone = [a for a in randomised if a not in stages]
    if randomised:
        tf.random.set_seed(seed + 1)
        rerun = _run_attacks(clf, x, y, clean_correct, rerun_stages + rerun_alone, rerun_stages,
                             [(key, value)], make_config, batch_size=batch_size, clip=clip, bar=bar)
        before = robust_all[key][:m]
        after = clean_correct.copy()
        for name in order:
            after &= rerun[name][key][1] if name in rerun else runs[name][key][1][:m]
        what = "worst case"
    else:
        pgd = AttackConfig(name="pgd", eps=value, steps=steps, norm=norm, random_start=True)
        results = []
        for s in (seed, seed + 1):
            tf.random.set_seed(s)
            bar.set_postfix_str(f"sanity: pgd seed {s}")
            results.append(clean_correct & _correct_under(clf, pgd, x, y, batch_size, clip, bar))
        before, after = results
        what = f"pgd-{steps} with random start (no randomised attack was run)"
    tf.random.set_seed(seed)
    return {"eps": key, "m": int(m), "seed": int(seed), "accuracy": float(before.mean()),
            "accuracy_rerun": float(after.mean()), "changed": int((before != after).sum()),
            "tolerance": seed_tolerance(m), "what": what}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust evaluate`` (DESIGN §4)."""
    parser.add_argument("--model", required=True, help="a .keras model")
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(data.DATASETS)}")
    parser.add_argument("--split", default="test", help="train or test (default test)")
    parser.add_argument("--n", type=int, default=None,
                        help="first N examples (default: 1000, or the whole split if smaller)")
    parser.add_argument("--attacks", default="fgsm,bim,cw",
                        help=f"comma-separated, from {','.join(EVAL_ATTACKS)} (default fgsm,bim,cw); "
                             "autoattack = the cascade apgd-ce -> apgd-dlr -> square")
    parser.add_argument("--cascade", action="store_true",
                        help="run the attack list as one cascade: each attack sees only the examples "
                             "the earlier ones did not break")
    parser.add_argument("--eps", default="0.1,0.2,0.3", help="comma-separated eps, e.g. 0.1,8/255")
    parser.add_argument("--steps", type=int, default=10, help="iterations of bim, pgd and cw")
    parser.add_argument("--step-size", type=float, default=None,
                        help="step of iterative attacks (default 2.5*eps/steps)")
    parser.add_argument("--apgd-steps", type=int, default=100,
                        help="iterations of apgd-ce, apgd-dlr and each apgd-t run (default 100, as published)")
    parser.add_argument("--apgd-targets", type=int, default=9,
                        help="target classes of apgd-t, from the runner-up down (default 9, as in AutoAttack)")
    parser.add_argument("--square-queries", type=int, default=5000,
                        help="query budget of square (default 5000, as in AutoAttack)")
    parser.add_argument("--norm", default="linf", choices=norms.NORMS)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sanity", action="store_true", help="skip the sanity checks")
    parser.add_argument("--json", default=None, help="write the result here")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust evaluate``."""
    attack_names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for name in attack_names:
        if name not in EVAL_ATTACKS:
            raise ValueError(f"--attacks: {name!r} is unknown; choose from {','.join(EVAL_ATTACKS)}")
    if not attack_names:
        raise ValueError(f"--attacks={args.attacks!r} names no attack")
    for flag in ("steps", "apgd_steps", "square_queries", "apgd_targets"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    if args.norm != "linf" and any(a in ("square", "autoattack") for a in attack_names):
        raise ValueError(f"--norm={args.norm}: square (also in autoattack) supports only linf")
    eps_list = parse_eps_list(args.eps)
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n={args.n} must be >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} must be >= 1")
    if args.step_size is not None and not args.step_size > 0:
        raise ValueError(f"--step-size={args.step_size} must be > 0")
    model = load_model(args.model)
    x, y = data.load(args.dataset, args.split, args.n)
    if args.n is None:
        x, y = x[:1000], y[:1000]
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    clf = _classifier(model)
    if expected is None and getattr(clf, "inputs", None):
        expected = tuple(clf.inputs[0].shape[1:])
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise ValueError(f"--dataset {args.dataset!r} has images of shape {x.shape[1:]}, "
                         f"but the model expects {expected}")
    result = evaluate_model(model, x, y, attacks=attack_names, eps=eps_list, steps=args.steps,
                            step_size=args.step_size, norm=args.norm, batch_size=args.batch_size,
                            seed=args.seed, sanity=not args.no_sanity, cascade=args.cascade,
                            apgd_steps=args.apgd_steps, square_queries=args.square_queries,
                            apgd_targets=args.apgd_targets,
                            meta={"model": str(args.model), "dataset": args.dataset, "split": args.split})
    text = json.dumps(result, indent=1)
    if args.json:
        from tfrobust.training import atomic_write_text
        atomic_write_text(Path(args.json), text + "\n")
    print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    """A plain-text table of an evaluation result."""
    keys = list(result["worst_case"])
    lines = [f"clean accuracy {result['clean_accuracy']:.3f} on n={result['n']}",
             "attack      " + "".join(f"{k:>9}" for k in keys)]
    for name, table in list(result["attacks"].items()) + [("worst case", result["worst_case"])]:
        lines.append(f"{name:<12}" + "".join(f"{table[k]:>9.3f}" for k in keys))
    if "sanity" in result:
        lines.append("sanity: " + ("passed" if result["sanity"]["passed"] else "FAILED"))
        for c in result["sanity"]["checks"]:
            lines.append(f"  [{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    return "\n".join(lines)
