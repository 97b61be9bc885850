"""``tfrobust quickstart``: the README's main job on the embedded MNIST."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust quickstart``."""
    parser.add_argument("--out", default="quickstart_out", help="output folder (default quickstart_out)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="training images (default: the recipes' own, 59,000)")
    parser.add_argument("--n-test", type=int, default=1000, help="test images evaluated (default 1000)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per model (default: the recipes' own, 10 natural and 20 robust)")
    parser.add_argument("--width", type=float, default=0.5, help="CNN width multiplier (default 0.5)")
    parser.add_argument("--recipe", default="mnist_jacobian_curvature",
                        help="the robust recipe (default mnist_jacobian_curvature; see `tfrobust recipes`)")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust quickstart``."""
    from tfrobust.quickstart import format_comparison, quickstart  # pylint: disable=import-outside-toplevel

    for flag in ("n_train", "n_test", "epochs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={value} must be >= 1")
    if not args.width > 0:
        raise ValueError(f"--width={args.width} must be > 0")
    report = quickstart(args.out, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
                        width=args.width, recipe=args.recipe, verbose=1 if sys.stderr.isatty() else 2)
    print(format_comparison(report))
    print("\nServed by `tfrobust serve` (robustness signature), 8 test images of the robust model:")
    print(report["serving"]["table"])
    print(f"\nwrote {Path(args.out) / 'report.json'} and {Path(args.out) / 'quickstart.png'} "
          f"in {report['seconds']:.0f} s")
    return 0
