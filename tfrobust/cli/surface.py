"""``tfrobust surface``: decision and loss surfaces of one input (or of the weights) as a PNG and a JSON grid."""

from __future__ import annotations

import argparse
import json
import os
import time

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the verb's options to ``parser``."""
    parser.add_argument("--model", required=True, help="path of a .keras classifier (or RobustModel)")
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. mnist, fashion_mnist, digits")
    parser.add_argument("--index", type=int, required=True,
                        help="index of the input in the split (parameter space: first of --n inputs)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--space", default="input", help="input or parameter (default: input)")
    parser.add_argument("--direction", default="random",
                        help="first direction in input space: random, ce, ll or cw (default: random)")
    parser.add_argument("--norm", default="linf", help="threat norm of the directions: linf or l2")
    parser.add_argument("--eps", type=float, default=0.3, help="threat radius marked as the ε-ball (0.3)")
    parser.add_argument("--span", type=float, default=None,
                        help="grid half-width (default: 2*eps in input space, 1.0 in parameter space)")
    parser.add_argument("--steps", type=int, default=None,
                        help="grid points per axis (default: 41 input space, 21 parameter space)")
    parser.add_argument("--n", type=int, default=256, help="inputs the parameter-space loss averages (256)")
    parser.add_argument("--clip", action="store_true",
                        help="clip grid points and the attack into [0, 1] (default: the plain plane)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random directions (0)")
    parser.add_argument("--out", required=True, help="PNG to write; the grid goes to the same name with .json")


def _check(args) -> None:
    from tfrobust import utils  # pylint: disable=import-outside-toplevel
    from tfrobust.analysis.surface import DIRECTIONS, SPACES  # pylint: disable=import-outside-toplevel

    utils.check_choice("--space", args.space, SPACES)
    utils.check_choice("--direction", args.direction, DIRECTIONS)
    utils.check_choice("--norm", args.norm, ("linf", "l2"))
    if args.space == "parameter" and args.direction != "random":
        raise ValueError(f"--direction={args.direction!r} is not available in parameter space "
                         "(its directions are filter-normalised random ones); use --direction random")
    if args.index < 0:
        raise ValueError(f"--index={args.index} must be non-negative")
    utils.check_positive("--eps", args.eps)
    if args.span is not None:
        utils.check_positive("--span", args.span)
    if args.steps is not None and args.steps < 2:
        raise ValueError(f"--steps={args.steps} must be at least 2")
    utils.check_positive_int("--n", args.n)
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out={args.out!r} must end in .png")


def run(args) -> int:
    """Computes the surface, writes the PNG and the JSON grid; returns 0."""
    _check(args)
    start = time.perf_counter()
    from tfrobust import data  # pylint: disable=import-outside-toplevel
    from tfrobust.models import load_model, unwrap  # pylint: disable=import-outside-toplevel
    from tfrobust.analysis import plots, surface  # pylint: disable=import-outside-toplevel

    model = unwrap(load_model(args.model))
    count = args.index + (1 if args.space == "input" else args.n)
    try:
        x, y = data.load(args.dataset, args.split, n=count)
    except ValueError as err:
        if "larger than" not in str(err):
            raise
        raise ValueError(f"--index={args.index} is out of range: {err}") from None
    if args.space == "input":
        surf = surface.input_surface(model, x[args.index:], y[args.index:], direction=args.direction,
                                     span=args.span, steps=args.steps or 41, eps=args.eps, norm=args.norm,
                                     clip=(0.0, 1.0) if args.clip else None, seed=args.seed, progress=True)
    else:
        surf = surface.parameter_surface(model, x[args.index:], y[args.index:], span=args.span or 1.0,
                                         steps=args.steps or 21, seed=args.seed, progress=True)
    surf.meta = {"model": args.model, "dataset": args.dataset, "split": args.split, "index": args.index,
                 "n": 1 if args.space == "input" else args.n, "seed": args.seed, "clip": bool(args.clip),
                 "seconds": round(time.perf_counter() - start, 2)}
    name = os.path.basename(args.model)
    title = (f"{name}: {args.dataset} {args.split}[{args.index}], {args.space} space"
             + (f", label {surf.label}, d(x) = {surf.value_at(0.0, 0.0):.2f}" if args.space == "input" else ""))
    fig = plots.plot_surface(surf, title=title)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    json_path = os.path.splitext(args.out)[0] + ".json"
    surf.to_json(json_path)
    summary = {"png": args.out, "json": json_path, "d(0,0)": surf.value_at(0.0, 0.0),
               "min_d": float(surf.decision.min()), "max_d": float(surf.decision.max())}
    print(json.dumps(summary))
    return 0
