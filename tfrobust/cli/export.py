"""``tfrobust export``: a TF Serving SavedModel with a robustness signature."""

from __future__ import annotations

import argparse

from tfrobust.names import BOUND_METHODS, NORMS

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
    parser.add_argument("--calibrate", default=None, metavar="DATASET",
                        help="also serve estimated_radius, calibrated on the last --calibration-n examples "
                             "of this dataset's --calibration-split with the minimal-norm attack fmn+fab: "
                             "half choose the statistic (margin or effective_margin), half fit its factor")
    parser.add_argument("--certify", default=None, choices=BOUND_METHODS,
                        help="also serve certified_radius: the largest L∞ radius at which this bound proves the "
                             "prediction (bisection within the clip range)")
    parser.add_argument("--certify-tolerance", type=float, default=1.0 / 512,
                        help="bisection tolerance of certified_radius, in input units (default 1/512)")
    parser.add_argument("--smoothing", type=float, default=None, metavar="SIGMA",
                        help="also serve the 'smoothed' signature: the randomized-smoothing classifier at this "
                             "noise level with its certified L2 radius (Cohen et al.'s CERTIFY)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="estimation draws per example of the smoothed signature (default 1000)")
    parser.add_argument("--selection-samples", type=int, default=100,
                        help="selection draws per example of the smoothed signature (default 100)")
    parser.add_argument("--alpha", type=float, default=0.001,
                        help="failure probability of each served smoothing certificate (default 0.001)")
    parser.add_argument("--smoothing-seed", type=int, default=None,
                        help="fix the smoothing noise seed (default: a fresh seed per request)")
    parser.add_argument("--calibration-split", default="train",
                        help="split to calibrate on (default train: its last examples, which the recipes "
                             "hold out for validation)")
    parser.add_argument("--calibration-n", type=int, default=500, help="calibration examples (default 500)")
    parser.add_argument("--coverage", type=float, default=0.9,
                        help="share of calibration examples whose distance exceeds the radius (default 0.9)")
    parser.add_argument("--calibration-steps", type=int, default=100,
                        help="iterations of FMN and FAB during calibration (default 100)")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust export``; prints the version folder."""
    from tfrobust.models import load_model  # pylint: disable=import-outside-toplevel
    from tfrobust.serving.export import export_saved_model  # pylint: disable=import-outside-toplevel

    calibration = None
    if not 0 < args.coverage < 1:
        raise ValueError(f"--coverage={args.coverage} must be strictly between 0 and 1")
    if args.calibration_n < 1 or args.calibration_steps < 1:
        raise ValueError(f"--calibration-n={args.calibration_n} and --calibration-steps="
                         f"{args.calibration_steps} must be >= 1")
    model = load_model(args.model)
    if args.calibrate is not None:
        from tfrobust import data  # pylint: disable=import-outside-toplevel
        from tfrobust.models import unwrap  # pylint: disable=import-outside-toplevel
        from tfrobust.serving.export import calibrate_radius  # pylint: disable=import-outside-toplevel

        x, _ = data.load(args.calibrate, args.calibration_split)
        x = x[max(len(x) - args.calibration_n, 0):]
        calibration = calibrate_radius(unwrap(model), x, norm=args.norm, coverage=args.coverage,
                                       steps=args.calibration_steps, progress=True)
        calibration["data"] = f"{args.calibrate}:{args.calibration_split}[-{len(x)}:]"
        print(f"estimated_radius = {calibration['factor']:.4g} x {calibration['statistic']} "
              f"({args.coverage:.0%} coverage on {calibration['n']} calibration examples; "
              f"{calibration['n_choice']} more chose the statistic)")
    certify = None
    if args.certify is not None:
        from tfrobust.serving.export import certify_settings  # pylint: disable=import-outside-toplevel
        if not args.certify_tolerance > 0:
            raise ValueError(f"--certify-tolerance={args.certify_tolerance} must be > 0")
        clip = getattr(model, "clip", None) or (0.0, 1.0)
        certify = certify_settings(args.certify, clip, args.certify_tolerance)
    smoothing = None
    if args.smoothing is not None:
        from tfrobust.serving.export import smoothing_settings  # pylint: disable=import-outside-toplevel
        try:
            smoothing = smoothing_settings(args.smoothing, args.samples, args.alpha, args.selection_samples,
                                           seed=args.smoothing_seed)
        except ValueError as err:  # name the flag, not the parameter
            raise ValueError(f"--smoothing {args.smoothing} --samples {args.samples} --selection-samples "
                             f"{args.selection_samples} --alpha {args.alpha}: {err}") from None
    path = export_saved_model(model, args.out, version=args.version, norm=args.norm,
                              input_shape=args.input_shape, calibration=calibration, certify=certify,
                              smoothing=smoothing)
    print(path)
    return 0
