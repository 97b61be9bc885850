"""The ``tfrobust`` command: a thin adapter over the library (docs/architecture.md).

Each verb is a module of this package with ``add_arguments(parser)`` and
``run(args) -> int``; :data:`VERBS` lists them with their one-line help, so
``tfrobust --help`` imports no verb module and no TensorFlow, and a verb's
module is imported only when that verb runs. Verb modules import the library
inside ``run``. The library raises typed errors naming the bad value; here they
become one line on stderr and exit status 2 (bad input) or 1 (an internal bug,
with a hint to rerun with ``--debug`` for the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import types

__all__ = ["main", "build_parser", "VERBS", "CliError", "USER_ERRORS"]

VERBS: dict[str, str] = {
    "quickstart": "train natural and Jacobian-regularised MNIST CNNs, evaluate, compare with the paper",
    "train": "train one recipe (a name from the packaged recipes or a YAML path); resumes after a crash",
    "recipes": "list the packaged training recipes",
    "evaluate": "accuracy under each attack and eps, worst case, and gradient-masking sanity checks",
    "certify": "certified L2 accuracy of the randomized-smoothing classifier (Cohen et al.'s CERTIFY)",
    "export": "export a Keras classifier as a TF Serving SavedModel with a robustness signature",
    "serve": "serve exported SavedModels over TF Serving's REST API (local development server)",
    "client": "score test images through a served model (TF Serving or tfrobust serve): margin scores",
    "surface": "plot the decision and cross-entropy surfaces around one input (or in parameter space)",
    "indicator": "robustness indicator: input Jacobian and Hessian of the decision function, layer spectra, "
                 "margins",
}
"""Verb -> one-line help; the verb's code is the module ``tfrobust.cli.<verb>``."""


class CliError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)
"""Errors that mean bad input (plus :class:`tfrobust.data.DatasetUnavailableError`): exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    data = sys.modules.get("tfrobust.data")  # loaded by every verb that reads a dataset
    return USER_ERRORS + ((data.DatasetUnavailableError,) if data is not None else ())


def build_parser(verb: str | None = None) -> tuple[argparse.ArgumentParser, types.ModuleType | None]:
    """The parser of every verb's name and help, with the full options of ``verb`` only.

    Returns:
        ``(parser, module)``: ``module`` is the imported verb module, or ``None``.
    """
    parser = argparse.ArgumentParser(
        prog="tfrobust",
        description="Adversarially robust Keras classifiers: train, evaluate, analyse, export, serve.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    module = None
    for name, help_text in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error instead of one line")
        if name == verb:
            module = importlib.import_module(f"tfrobust.cli.{name}")
            module.add_arguments(p)
    return parser, module


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with the C++ start-up lines (written to fd 2 before its logging starts,
    whatever TF_CPP_MIN_LOG_LEVEL says) sent to /dev/null; ``--debug`` keeps them."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        tf.config.list_physical_devices()  # device discovery logs its lines now, not mid-run
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _verb_of(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in VERBS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: no C++ start-up noise
    parser, module = build_parser(_verb_of(argv))
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    assert module is not None, "argparse parsed a verb that _verb_of did not find"
    debug = args.debug or bool(os.environ.get("TFROBUST_DEBUG"))
    if args.verb != "recipes" and not debug:
        _import_tensorflow_quietly()
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"tfrobust {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except _user_errors() as err:
        if debug:
            raise
        print(f"tfrobust {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # pylint: disable=broad-except
        if debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"tfrobust {args.verb}: internal error ({type(err).__name__}: {first}); this is a bug, "
              "please report it; rerun with --debug for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
