"""``tfrobust train``: one training recipe, resuming after a crash."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tfrobust.names import STRATEGIES

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust train`` (docs/architecture.md)."""
    parser.add_argument("--config", required=True,
                        help="a packaged recipe's name (see `tfrobust recipes`, e.g. mnist_jacobian) or a YAML path")
    parser.add_argument("--out", required=True, help="output folder (resumes if it holds checkpoints)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--strategy", choices=STRATEGIES, default="none",
                        help="distribution strategy (default: none)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="train on the first N examples only (quick runs)")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust train``."""
    from tfrobust.training import is_chief, load_config, train  # pylint: disable=import-outside-toplevel

    config = load_config(args.config)
    if args.n_train is not None:
        if args.n_train < 1:
            raise ValueError(f"--n-train={args.n_train} must be >= 1")
        config["train"]["n_train"] = args.n_train
    start = time.time()
    model = train(config, args.out, epochs=args.epochs, strategy=args.strategy,
                  verbose=1 if sys.stderr.isatty() else 2)
    where = Path(args.out) / "model.keras" if is_chief() else "(the chief writes the model)"
    print(f"trained {config['name']} in {time.time() - start:.0f} s -> {where}")
    del model
    return 0
