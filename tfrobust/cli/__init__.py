"""The ``tfrobust`` command.

Each verb lives in its own module, which provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad input ends with exit
status 2 and a one-line error naming the bad value (DESIGN §4).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

__all__ = ["main", "VERBS", "CliError"]

# verb -> module; a verb is listed only if its module exists.
VERBS: dict[str, str] = {
    "quickstart": "tfrobust.cli.quickstart",
    "train": "tfrobust.cli.train",
    "evaluate": "tfrobust.cli.evaluate",
    "export": "tfrobust.cli.export",
    "serve": "tfrobust.cli.serve",
    "surface": "tfrobust.cli.surface",
    "indicator": "tfrobust.cli.indicator",
}


class CliError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


def _available_verbs() -> dict[str, str]:
    found = {}
    for verb, module in VERBS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is not None:
                found[verb] = module
        except ModuleNotFoundError:
            continue
    return found


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    """Builds the argument parser with one sub-parser per available verb."""
    parser = argparse.ArgumentParser(
        prog="tfrobust",
        description="Adversarially robust Keras classifiers: train, evaluate, analyse, export, serve.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    modules = {}
    for verb, name in _available_verbs().items():
        module = importlib.import_module(name)
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        modules[verb] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide C++ start-up noise (e.g. no CUDA on CPU hosts)
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    try:
        return int(modules[args.verb].run(args) or 0)
    except (CliError, ValueError, FileNotFoundError) as err:
        if os.environ.get("TFROBUST_DEBUG"):
            raise
        print(f"tfrobust {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tfrobust {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
