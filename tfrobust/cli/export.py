"""``tfrobust export``: a TF Serving SavedModel with a robustness signature."""

from __future__ import annotations

import argparse

from tfrobust.names import NORMS

__all__ = ["add_arguments", "run"]


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape {text!r} must look like 28,28,1") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--input-shape {text!r} must be positive integers")
    return shape


def _parse_version(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--version {text!r} must be a non-negative integer")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``export`` verb's options."""
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="the .keras classifier (plain or a tfrobust RobustModel)")
    parser.add_argument("--out", required=True, metavar="BASE",
                        help="TF Serving model base path; the export goes to BASE/<version>/")
    parser.add_argument("--version", type=_parse_version, default=None, metavar="N",
                        help="version number (default: one more than the newest under BASE)")
    parser.add_argument("--norm", choices=NORMS, default="l2",
                        help="threat norm of the robustness signature (default: l2)")
    parser.add_argument("--input-shape", type=_parse_shape, default=None, metavar="H,W,C",
                        help="per-example input shape when the model does not declare one")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust export``; prints the version folder."""
    from tfrobust.models import load_model  # pylint: disable=import-outside-toplevel
    from tfrobust.serving.export import export_saved_model  # pylint: disable=import-outside-toplevel

    model = load_model(args.model)
    path = export_saved_model(model, args.out, version=args.version, norm=args.norm,
                              input_shape=args.input_shape)
    print(path)
    return 0
