"""``tfrobust certify``: certified L2 accuracy of the smoothed classifier (randomized smoothing)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = [
    "add_arguments",
    "run",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust certify`` (Cohen et al.'s names: ``--n0``, ``--n``, ``--alpha``)."""
    parser.add_argument("--model", required=True, help="a .keras base classifier (trained for smoothing)")
    parser.add_argument("--dataset", required=True,
                        help="a dataset name: mnist, fashion_mnist, digits, synthetic or cifar10")
    parser.add_argument("--split", default="test", help="train or test (default test)")
    parser.add_argument("--examples", type=int, default=None,
                        help="first N examples of the split (default: 500, or the whole split if smaller)")
    parser.add_argument("--sigma", type=float, required=True, help="noise standard deviation, in input units")
    parser.add_argument("--n0", type=int, default=100, help="selection draws per example (default 100)")
    parser.add_argument("--n", type=int, default=100_000, help="estimation draws per example (default 100,000)")
    parser.add_argument("--alpha", type=float, default=0.001,
                        help="failure probability of each certificate (default 0.001)")
    parser.add_argument("--radii", default="0,0.25,0.5,0.75,1,1.25,1.5,1.75,2",
                        help="comma-separated L2 radii of the table")
    parser.add_argument("--batch-size", type=int, default=1000, help="noisy inputs per forward pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="write each finished chunk of examples here; rerun with the same DIR to continue")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--png", default=None, help="write the certified-accuracy curve here")


def _radii(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--radii={text!r} must be comma-separated numbers") from None
    if not values or any(not v >= 0 for v in values):
        raise ValueError(f"--radii={text!r} must be radii >= 0")
    return values


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust certify``."""
    from tfrobust import data  # pylint: disable=import-outside-toplevel
    from tfrobust.evaluation.smoothed import certify_dataset, plot_certified_accuracy  # pylint: disable=import-outside-toplevel
    from tfrobust.models import load_model  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import atomic_write_text, hardware, source_commit  # pylint: disable=import-outside-toplevel

    radii = _radii(args.radii)
    for flag in ("n0", "n", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    if args.examples is not None and args.examples < 1:
        raise ValueError(f"--examples={args.examples} must be >= 1")
    if not args.sigma > 0:
        raise ValueError(f"--sigma={args.sigma} must be > 0")
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha={args.alpha} must be in (0, 1)")
    model = load_model(args.model)
    x, y = data.load(args.dataset, args.split, args.examples)
    if args.examples is None:
        x, y = x[:500], y[:500]
    report = certify_dataset(model, x, y, sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                             batch_size=args.batch_size, seed=args.seed, radii=radii, resume=args.resume,
                             meta={"model": str(args.model), "dataset": args.dataset, "split": args.split})
    report.update(hardware=hardware(), commit=source_commit())
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report, indent=1) + "\n")
    if args.png:
        plot_certified_accuracy({Path(args.model).stem: report}, args.png)
    print(f"smoothed classifier, sigma {args.sigma:g}, n0 {args.n0}, n {args.n:,}, alpha {args.alpha:g}, "
          f"{report['examples']} examples: accuracy {report['accuracy']:.3f}, abstained "
          f"{report['abstain_rate']:.3f}, {report['seconds_per_example']:.3g} s per example")
    print("radius     " + "".join(f"{k:>8}" for k in report["certified_accuracy"]))
    print("certified  " + "".join(f"{v:>8.3f}" for v in report["certified_accuracy"].values()))
    return 0
