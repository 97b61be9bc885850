"""``tfrobust indicator``: Jacobian / Hessian / spectrum / margin statistics of a model, as JSON."""

from __future__ import annotations

import argparse
import json
import os
import time

__all__ = ["add_arguments", "run", "indicator_report"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the verb's options to ``parser``."""
    parser.add_argument("--model", required=True, help="path of a .keras classifier (or RobustModel)")
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. mnist, fashion_mnist, digits")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--n", type=int, default=100, help="number of inputs (default: 100)")
    parser.add_argument("--json", required=True, help="JSON file to write")
    parser.add_argument("--batch-size", type=int, default=50, help="inputs per batch (50)")
    parser.add_argument("--method", default="lanczos", help="Hessian eigenvalues: lanczos or power")
    parser.add_argument("--k", type=int, default=20, help="Lanczos steps (20)")
    parser.add_argument("--top-k", type=int, default=5, help="eigenvalues kept per input (5)")
    parser.add_argument("--jacobian-threshold", type=float, default=1e-3,
                        help="a Jacobian entry is near zero if |J_i| <= this (1e-3)")
    parser.add_argument("--eigen-threshold", type=float, default=1e-3,
                        help="a Hessian eigenvalue is near zero if |λ| <= this (1e-3)")
    parser.add_argument("--relative", action="store_true",
                        help="thresholds are fractions of each input's largest |J_i| / |λ|")
    parser.add_argument("--norm", default="linf", help="threat norm of the normalised margin: linf or l2")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Lanczos start vectors (0)")


def indicator_report(model, x, y, **kwargs) -> dict:
    """The indicator JSON body (without the file/dataset keys) for a model on ``(x, y)``.

    Keyword arguments go to :func:`tfrobust.analysis.indicator.robustness_indicator`.
    """
    from tfrobust.analysis import indicator, spectra  # pylint: disable=import-outside-toplevel

    result = indicator.robustness_indicator(model, x, y, **kwargs)
    body = result.summary()
    body["spectra"] = {name: spectra.LayerSpectrum(name, values).to_dict(keep=8)
                       for name, values in spectra.weight_spectra(model).items()}
    body["settings"] = result.settings
    body["seconds"] = round(result.seconds, 2)
    return body


def run(args) -> int:
    """Computes the indicator and writes the JSON; returns 0."""
    from tfrobust import utils  # pylint: disable=import-outside-toplevel

    utils.check_positive_int("--n", args.n)
    utils.check_positive_int("--batch-size", args.batch_size)
    utils.check_positive_int("--k", args.k)
    utils.check_positive_int("--top-k", args.top_k)
    utils.check_choice("--method", args.method, ("lanczos", "power"))
    utils.check_choice("--norm", args.norm, ("linf", "l2"))
    utils.check_positive("--jacobian-threshold", args.jacobian_threshold, allow_zero=True)
    utils.check_positive("--eigen-threshold", args.eigen_threshold, allow_zero=True)
    if not args.json.lower().endswith(".json"):
        raise ValueError(f"--json={args.json!r} must end in .json")
    start = time.perf_counter()
    from tfrobust import data  # pylint: disable=import-outside-toplevel
    from tfrobust.models import load_model, unwrap  # pylint: disable=import-outside-toplevel

    model = unwrap(load_model(args.model))
    x, y = data.load(args.dataset, args.split, n=args.n)
    body = indicator_report(model, x, y, batch_size=args.batch_size, method=args.method, k=args.k,
                            top_k=args.top_k, jacobian_threshold=args.jacobian_threshold,
                            eigen_threshold=args.eigen_threshold, relative=args.relative, norm=args.norm,
                            seed=args.seed, progress=True)
    report = {"model": args.model, "dataset": args.dataset, "split": args.split, "n": int(len(x)),
              "seed": args.seed, **body, "seconds": round(time.perf_counter() - start, 2)}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    j = report["jacobian"]
    print(f"clean accuracy {report['clean_accuracy']:.3f}; Jacobian of d: mean L1 {j['l1']['mean']:.4g}, "
          f"mean L2 {j['l2']['mean']:.4g}, near-zero share {j['near_zero_share']['mean']:.3f}; "
          + "; ".join(f"Hessian of {of}: mean spectral norm {h['spectral_norm']['mean']:.4g}"
                      for of, h in report["hessian"].items())
          + f" -> {args.json}")
    return 0
