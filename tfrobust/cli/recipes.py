"""``tfrobust recipes``: the packaged training recipes, one line each."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``recipes`` takes no options."""
    del parser


def run(args: argparse.Namespace) -> int:
    """Prints each recipe's name and its first comment line."""
    from tfrobust import recipes  # pylint: disable=import-outside-toplevel

    del args
    for name in recipes.names():
        print(f"{name:<24} {recipes.summary(name)}")
    return 0
