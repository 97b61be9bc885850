"""Randomized-smoothing MNIST models (issue #21): certified L2 accuracy by Cohen et al.'s CERTIFY.

For each trained run folder (``NAME=SIGMA=RUN_DIR``; the recipe's model in ``RUN_DIR/model.keras``),
CERTIFY with the run's sigma on the first ``--n-test`` test images and on the held-out last
``--n-validation`` training images (what a choice between models would be made on), at ``--n``
estimation and ``--n0`` selection draws and failure probability ``--alpha``; each chunk of
examples is kept under ``--work`` (a stopped run continues). Rows are written one at a time to
``OUT/table.json`` (a row already there is skipped), with the curve of every row in
``OUT/certified_accuracy.png``::

    python training/smoothing_table.py --out training/results/smoothing --n 10000 \\
        mnist_smooth_025=0.25=runs/mnist_smooth_025 mnist_smooth_050=0.5=runs/mnist_smooth_050
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def certify_run(name: str, sigma: float, run: Path, args) -> dict:
    """One row of the table: test and validation certificates, training time, provenance."""
    from tfrobust import data, training  # pylint: disable=import-outside-toplevel
    from tfrobust.evaluation.smoothed import certify_dataset  # pylint: disable=import-outside-toplevel
    from tfrobust.models import load_model, unwrap  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import hardware, source_commit  # pylint: disable=import-outside-toplevel

    start = time.time()
    commit = source_commit()  # the library this run imports, read at its start
    clf = unwrap(load_model(run / "model.keras"))
    x, y = data.load("mnist", "test", args.n_test)
    xv, yv = data.load("mnist", "train")
    xv, yv = xv[-args.n_validation:], yv[-args.n_validation:]
    common = dict(sigma=sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size, radii=RADII)
    work = Path(args.work) / name
    test = certify_dataset(clf, x, y, resume=work / "test", **common)
    validation = certify_dataset(clf, xv, yv, resume=work / "validation", **common)
    return {
        "sigma": sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha,
        "test": {k: test[k] for k in ("examples", "certified_accuracy", "accuracy", "abstain_rate",
                                      "seconds_per_example")},
        "validation": {"split": f"train[-{args.n_validation}:]",
                       **{k: validation[k] for k in ("examples", "certified_accuracy", "accuracy", "abstain_rate")}},
        "test_radius": test["radius"], "test_prediction": test["prediction"], "test_label": test["label"],
        "train_seconds": training.train_seconds(run),
        "certify_seconds": round(time.time() - start, 1), "run": str(run), "hardware": hardware(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "commit": commit,
    }


def results_row(name: str, row: dict) -> str:
    """docs/results.md's row for one model (tests check that the page quotes the JSON)."""
    acc = row["test"]["certified_accuracy"]
    return (f"| `{name}` | {row['sigma']:g} | {row['test']['examples']:,} | {row['n']:,} | "
            + " | ".join(f"{100 * acc[k]:.1f}" for k in ("0", "0.25", "0.5", "0.75", "1"))
            + f" | {100 * row['validation']['certified_accuracy']['0.5']:.1f} | "
            f"{row['test']['seconds_per_example']:.2f} |")


def _named(items: list[str]) -> list[tuple[str, float, str]]:
    out = []
    for item in items:
        parts = item.split("=")
        if len(parts) != 3:
            raise ValueError(f"{item!r} must be NAME=SIGMA=RUN_DIR")
        try:
            sigma = float(parts[1])
        except ValueError:
            raise ValueError(f"{item!r}: sigma {parts[1]!r} is not a number") from None
        out.append((parts[0], sigma, parts[2]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=SIGMA=RUN_DIR")
    parser.add_argument("--out", default="training/results/smoothing")
    parser.add_argument("--work", default="runs/smoothing_certify", help="resumable chunks of each run")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-validation", type=int, default=500)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    from tfrobust.evaluation.smoothed import plot_certified_accuracy  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import atomic_write_text  # pylint: disable=import-outside-toplevel
    try:
        runs = _named(args.runs)
    except ValueError as err:
        parser.error(f"run {err}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "table.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    for name, sigma, run in runs:
        if name in table:
            print(f"{name}: already in {path}, skipped", file=sys.stderr)
            continue
        table[name] = certify_run(name, sigma, Path(run), args)
        atomic_write_text(path, json.dumps(table, indent=1) + "\n")
        print(results_row(name, table[name]), flush=True)
    curves = {name: {"sigma": row["sigma"], "n": row["n"], "radius": row["test_radius"],
                     "prediction": row["test_prediction"], "label": row["test_label"]} for name, row in table.items()}
    plot_certified_accuracy(curves, out / "certified_accuracy.png",
                            title="MNIST, randomized smoothing: certified L2 accuracy (test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
