"""Accuracy under attack, worst case over attacks, and gradient-masking sanity checks.

:func:`evaluate_model` runs every attack at every eps on the same examples and
counts an example as robust at an eps only if it survives *all* attacks run
(per-example worst case, stronger than the minimum of the accuracies). The
``sanity`` block flags the usual signs of gradient masking (DESIGN §1.1, §3.10):
accuracy rising with eps, iterative attacks weaker than FGSM, an unbounded
attack that fails to reach ~0%, vanishing gradients, probability outputs.

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
    "load_model",
    "parse_eps_list",
    "EVAL_ATTACKS",
    "format_table",
]

HELP = "accuracy under each attack and eps, worst case, and gradient-masking sanity checks"

EVAL_ATTACKS = ("fgsm", "bim", "pgd", "cw")
_ITERATIVE = ("bim", "pgd", "cw")
_TOL = 0.01  # accuracy tolerance for monotonicity checks (sampling noise of random starts)


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
    return np.concatenate(out)


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


def sanity_checks(result: dict, eps_values: dict[str, float], *, grad_stats: dict | None = None,
                  unbounded_accuracy: float | None = None, num_classes: int = 10) -> dict:
    """The ``sanity`` block: each check with ``passed`` and a ``detail``.

    Args:
        result: an evaluation dict with ``attacks`` and ``clean_accuracy``.
        eps_values: eps key (as written) -> its value.
        grad_stats: per-example input-gradient norms and logits (from the evaluation).
        unbounded_accuracy: accuracy under an attack whose eps covers the clip range.
        num_classes: for the chance level of the unbounded check.
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
) -> dict:
    """Accuracy of ``model`` under every attack at every eps (DESIGN §4 JSON).

    Args:
        model: a Keras classifier returning logits (a RobustModel is unwrapped).
        x, y: images in ``clip`` range and integer labels.
        attacks: names from :data:`EVAL_ATTACKS`.
        eps: ``[(text, value), ...]`` or a comma-separated string.
        steps: iterations of the iterative attacks.
        step_size: their step; ``None`` means ``2.5 * eps / steps``; a dict gives
            one per attack name (missing names get ``None``).
        norm: threat norm.
        clip: valid input range.
        batch_size: examples per attack batch.
        seed: seeds TF's random generator (random starts).
        sanity: run the gradient-masking checks (adds an unbounded PGD run).
        progress: show a progress bar.
        meta: extra top-level fields (model path, dataset, split).

    Returns:
        The evaluation dict.
    """
    eps_list = parse_eps_list(eps) if isinstance(eps, str) else list(eps)
    for name in attacks:
        if name not in EVAL_ATTACKS:
            raise ValueError(f"attack {name!r} is unknown; choose from {list(EVAL_ATTACKS)}")
    norms.validate_norm(norm)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as images, got {len(x)} images and {len(y)} labels")
    clf = _classifier(model)
    losses.check_logits(clf, name="model")
    tf.random.set_seed(seed)
    start = time.time()
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int64)
    n = len(x)
    clean_correct = _predict(clf, x, batch_size) == y
    result = {**(meta or {}), "n": int(n), "seed": int(seed),
              "clean_accuracy": float(clean_correct.mean()), "attacks": {}, "worst_case": {},
              "settings": {}}
    robust_all = {key: clean_correct.copy() for key, _ in eps_list}
    total = len(attacks) * len(eps_list) * n + (min(n, 500) if sanity else 0)
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    for name in attacks:
        table = {}
        step = step_size.get(name) if isinstance(step_size, dict) else step_size
        for key, value in eps_list:
            cfg = AttackConfig(name=name, eps=value, steps=1 if name == "fgsm" else steps,
                               step_size=step, norm=norm)
            bar.set_postfix_str(f"{name} eps={key}")
            correct = _correct_under(clf, cfg, x, y, batch_size, clip, bar) & clean_correct
            table[key] = float(correct.mean())
            robust_all[key] &= correct
        result["attacks"][name] = table
        settings = {"norm": norm, "eps_scale": f"[{clip[0]:g},{clip[1]:g}]"}
        if name != "fgsm":
            settings.update(steps=int(steps), step_size="2.5*eps/steps" if step is None
                            else float(step), random_start=name == "pgd",
                            loss="cw" if name == "cw" else "ce")
        result["settings"][name] = settings
    result["worst_case"] = {key: float(v.mean()) for key, v in robust_all.items()}

    if sanity:
        m = min(n, 500)
        width = float(clip[1] - clip[0])
        unbounded = AttackConfig(name="pgd", eps=width, steps=max(steps, 20), step_size=width / 10,
                                 norm="linf", loss="cw")
        bar.set_postfix_str("sanity: unbounded pgd")
        unbounded_acc = float(_correct_under(clf, unbounded, x[:m], y[:m], batch_size, clip, bar).mean())
        stats = _gradient_stats(clf, x[:m], y[:m], batch_size)
        result["sanity"] = sanity_checks(result, dict(eps_list), grad_stats=stats,
                                         unbounded_accuracy=unbounded_acc,
                                         num_classes=int(stats["logits"].shape[-1]))
    bar.close()
    result["seconds"] = round(time.time() - start, 2)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust evaluate`` (DESIGN §4)."""
    parser.add_argument("--model", required=True, help="a .keras model")
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(data.DATASETS)}")
    parser.add_argument("--split", default="test", help="train or test (default test)")
    parser.add_argument("--n", type=int, default=None,
                        help="first N examples (default: 1000, or the whole split if smaller)")
    parser.add_argument("--attacks", default="fgsm,bim,cw",
                        help=f"comma-separated, from {','.join(EVAL_ATTACKS)} (default fgsm,bim,cw)")
    parser.add_argument("--eps", default="0.1,0.2,0.3", help="comma-separated eps, e.g. 0.1,8/255")
    parser.add_argument("--steps", type=int, default=10, help="iterations of iterative attacks")
    parser.add_argument("--step-size", type=float, default=None,
                        help="step of iterative attacks (default 2.5*eps/steps)")
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
                            seed=args.seed, sanity=not args.no_sanity,
                            meta={"model": str(args.model), "dataset": args.dataset,
                                  "split": args.split})
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
