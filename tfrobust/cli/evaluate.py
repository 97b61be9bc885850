"""``tfrobust evaluate``: accuracy under each attack and eps, worst case, sanity checks."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from tfrobust.attack_specs import CASCADES, EVAL_ATTACK_REGISTRY, KNOBS, SPECS, Budget, eval_attack
from tfrobust.names import BOUND_METHODS, NORMS, STRATEGIES

__all__ = [
    "add_arguments",
    "run",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust evaluate`` (docs/architecture.md)."""
    parser.add_argument("--model", required=True, help="a .keras model")
    parser.add_argument("--dataset", required=True,
                        help="a dataset name: mnist, fashion_mnist, digits, synthetic or cifar10")
    parser.add_argument("--split", default="test", help="train or test (default test)")
    parser.add_argument("--n", type=int, default=None,
                        help="first N examples (default: 1000, or the whole split if smaller)")
    parser.add_argument("--attacks", default="fgsm,bim,cw",
                        help="comma-separated attacks: " + ", ".join(EVAL_ATTACK_REGISTRY)
                             + "; or a cascade: " + "; ".join(f"{name} ({' -> '.join(stages)})"
                                                              for name, stages in CASCADES.items())
                             + "; default fgsm,bim,cw; an unknown name lists them all")
    parser.add_argument("--cascade", action="store_true",
                        help="run the attack list as one cascade: each attack sees only the examples "
                             "the earlier ones did not break")
    parser.add_argument("--eps", default="0.1,0.2,0.3", help="comma-separated eps, e.g. 0.1,8/255")
    for knob in KNOBS:  # the budget of every registered attack (tfrobust.attack_specs)
        parser.add_argument(knob.flag, type=int, default=knob.default, help=knob.help)
    parser.add_argument("--step-size", type=float, default=None,
                        help="step of bim, pgd and cw (default 2.5*eps/steps)")
    parser.add_argument("--curve", default=None, metavar="ATTACK",
                        help="also run this minimal-norm attack once ("
                             + ", ".join(e.name for s in SPECS if s.minimal for e in s.evaluations)
                             + ", or several joined by '+', as fmn+fab: the smaller distance per example): the "
                             "distance per example and the accuracy at every eps, in the JSON under 'curve'; "
                             "or certified-ibp / certified-crown-ibp: each example's certified radius, so the "
                             "certified accuracy at every eps")
    parser.add_argument("--curve-png", default=None, help="write the accuracy-vs-eps curve here (needs --curve)")
    parser.add_argument("--certify", default=None, choices=BOUND_METHODS,
                        help="also prove robustness by bound propagation (L∞): verified accuracy per eps beside "
                             "the attacks, and a sanity check that no verified example was broken")
    parser.add_argument("--norm", default="linf", choices=NORMS)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sanity", action="store_true", help="skip the sanity checks")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--strategy", choices=STRATEGIES, default="none",
                        help="none (default); mirrored: every batch split over the local GPUs (else the "
                             "logical CPUs); multiworker: the chunks of examples shared by the workers of "
                             "TF_CONFIG, as for train (needs --resume); the same JSON at any scale")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="write each finished chunk of examples here (atomically); rerun with the same "
                             "DIR to continue a stopped evaluation; shared by the workers of --strategy "
                             "multiworker")


def _distribution(name: str, resume: str | None):
    """``(strategy, cluster)`` for ``--strategy``: a multi-worker evaluation shares its chunks
    through the resume directory, each worker using its local GPUs (if several) as replicas."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tfrobust.training import build_strategy  # pylint: disable=import-outside-toplevel

    if name == "none":
        return None, None
    if name == "mirrored":
        return build_strategy("mirrored"), None
    if "TF_CONFIG" not in os.environ:
        raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable")
    if resume is None:
        raise ValueError("--strategy multiworker needs --resume DIR, a directory every worker shares")
    local = build_strategy("mirrored") if len(tf.config.list_logical_devices("GPU")) > 1 else None
    return local, tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _checked_flags(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, float]]]:
    """The attack names and the eps list, after checking every flag that needs no model or data.

    Raises:
        ValueError: naming the first bad flag.
    """
    from tfrobust.evaluation import EVAL_ATTACKS, check_curve_attack, parse_eps_list  # pylint: disable=import-outside-toplevel

    attack_names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    for name in attack_names:
        if name not in EVAL_ATTACKS:
            raise ValueError(f"--attacks: {name!r} is unknown; choose from {','.join(EVAL_ATTACKS)}")
    if not attack_names:
        raise ValueError(f"--attacks={args.attacks!r} names no attack")
    for knob in KNOBS:
        if getattr(args, knob.name) < 1:
            raise ValueError(f"{knob.flag}={getattr(args, knob.name)} must be >= 1")
    for name in attack_names:
        for attack in CASCADES.get(name, (name,)):
            if args.norm not in eval_attack(attack).spec.norms:
                raise ValueError(f"--norm={args.norm}: {attack}" + (f" (in {name})" if name != attack else "")
                                 + f" supports only {','.join(eval_attack(attack).spec.norms)}")
    if args.curve is not None:
        try:
            check_curve_attack(args.curve)
        except ValueError as error:
            raise ValueError(f"--curve={args.curve!r}: {error}") from None
    if args.curve_png and args.curve is None:
        raise ValueError("--curve-png needs --curve ATTACK")
    eps_list = parse_eps_list(args.eps)
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n={args.n} must be >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size={args.batch_size} must be >= 1")
    if args.step_size is not None and not args.step_size > 0:
        raise ValueError(f"--step-size={args.step_size} must be > 0")
    return attack_names, eps_list


def _check_input_shape(model, clf, x, dataset: str) -> None:
    """Raises ValueError unless the images have the shape the model (or its classifier) declares."""
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if expected is None and getattr(clf, "inputs", None):
        expected = tuple(clf.inputs[0].shape[1:])
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise ValueError(f"--dataset {dataset!r} has images of shape {x.shape[1:]}, "
                         f"but the model expects {expected}")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust evaluate``."""
    from tfrobust import data  # pylint: disable=import-outside-toplevel
    from tfrobust.evaluation import evaluate_model, format_table, plot_curve  # pylint: disable=import-outside-toplevel
    from tfrobust.models import load_model, unwrap  # pylint: disable=import-outside-toplevel

    attack_names, eps_list = _checked_flags(args)
    strategy, cluster = _distribution(args.strategy, args.resume)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = load_model(args.model)
    x, y = data.load(args.dataset, args.split, args.n)
    if args.n is None:
        x, y = x[:1000], y[:1000]
    clf = unwrap(model)
    _check_input_shape(model, clf, x, args.dataset)
    budget = Budget(step_size=args.step_size, norm=args.norm,
                    **{knob.name: getattr(args, knob.name) for knob in KNOBS})
    result = evaluate_model(model, x, y, attacks=attack_names, eps=eps_list, budget=budget,
                            batch_size=args.batch_size, seed=args.seed, sanity=not args.no_sanity,
                            cascade=args.cascade, curve=args.curve, certify=args.certify,
                            strategy=strategy, cluster=cluster, resume=args.resume,
                            meta={"model": str(args.model), "dataset": args.dataset, "split": args.split})
    if result is None:
        print("this worker finished its chunks; the chief merges them and writes the report")
        return 0
    text = json.dumps(result, indent=1)
    if args.json:
        from tfrobust.utils import atomic_write_text
        atomic_write_text(Path(args.json), text + "\n")
    if args.curve_png:
        plot_curve(result["curve"], args.curve_png, worst_case=result["worst_case"], eps_values=dict(eps_list),
                   title=f"{Path(args.model).name}: {args.curve}, n={result['n']}")
    print(format_table(result))
    return 0
