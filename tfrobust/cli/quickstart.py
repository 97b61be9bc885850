"""``tfrobust quickstart``: the README's main job on the embedded MNIST."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tfrobust import objectives as O
from tfrobust.quickstart import format_comparison, quickstart

__all__ = ["HELP", "add_arguments", "run"]


HELP = "train natural and Jacobian-regularised MNIST CNNs, evaluate, compare with the paper"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust quickstart``."""
    parser.add_argument("--out", default="quickstart_out", help="output folder (default quickstart_out)")
    parser.add_argument("--n-train", type=int, default=60000, help="training images (default 60000)")
    parser.add_argument("--n-test", type=int, default=1000, help="test images evaluated (default 1000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per model (default 5)")
    parser.add_argument("--width", type=float, default=0.5, help="CNN width multiplier (default 0.5)")
    parser.add_argument("--c", type=float, default=0.638, help="Jacobian penalty coefficient")
    parser.add_argument("--norm", default="l2_squared", choices=O.PENALTY_NORMS,
                        help="Jacobian penalty norm (default l2_squared)")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust quickstart``."""
    for flag in ("n_train", "n_test", "epochs"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be >= 1")
    if not args.width > 0:
        raise ValueError(f"--width={args.width} must be > 0")
    if not args.c >= 0:
        raise ValueError(f"--c={args.c} must be >= 0")
    report = quickstart(args.out, n_train=args.n_train, n_test=args.n_test, epochs=args.epochs,
                        width=args.width, c=args.c, norm=args.norm, verbose=1 if sys.stderr.isatty() else 2)
    print(format_comparison(report))
    print("\nServed by `tfrobust serve` (robustness signature), 8 test images of the Jacobian model:")
    print(report["serving"]["table"])
    print(f"\nwrote {Path(args.out) / 'report.json'} and {Path(args.out) / 'quickstart.png'} "
          f"in {report['seconds']:.0f} s")
    return 0
