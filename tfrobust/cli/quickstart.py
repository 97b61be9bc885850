"""``tfrobust quickstart``: the README's main job on the embedded MNIST.

Trains the seed paper's MNIST CNN naturally and with the decision-margin
Jacobian penalty (Yu et al.) and its curvature term, through the same
:func:`tfrobust.training.train` path as ``tfrobust train``, evaluates both under
FGSM, BIM and C&W at eps 0.1/0.2/0.3 with the paper's settings (10 iterations,
step 0.1) on a test subset, prints the table beside the paper's Table 1 and
writes ``report.json``, the models and a PNG chart. Finally it exports the
Jacobian model as a SavedModel for TF Serving, serves it with the local
TF-Serving-compatible server and prints margin scores beside predictions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfrobust.paper import ATTACKS, EPS, PAPER_TABLE1

if TYPE_CHECKING:
    import numpy as np

__all__ = ["add_arguments", "run", "ROBUST_RECIPE", "quickstart", "plot_report", "serve_and_score",
           "format_comparison"]

ROBUST_RECIPE = "mnist_jacobian_curvature"
"""The quickstart's robust model: the best recipe without adversarial examples that fits its budget."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tfrobust quickstart``."""
    parser.add_argument("--out", default="quickstart_out", help="output folder (default quickstart_out)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="training images (default: the recipes' own, 59,000)")
    parser.add_argument("--n-test", type=int, default=1000, help="test images evaluated (default 1000)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per model (default: the recipes' own, 10 natural and 20 robust)")
    parser.add_argument("--width", type=float, default=0.5, help="CNN width multiplier (default 0.5)")
    parser.add_argument("--recipe", default=ROBUST_RECIPE,
                        help=f"the robust recipe (default {ROBUST_RECIPE}; see `tfrobust recipes`)")


def run(args: argparse.Namespace) -> int:
    """Runs ``tfrobust quickstart``."""
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


def quickstart(out_dir: str | Path, *, n_train: int | None = None, n_test: int = 1000,
               epochs: int | None = None, width: float = 0.5, recipe: str = ROBUST_RECIPE,
               seed: int = 0, verbose: int = 2) -> dict:
    """Trains ``mnist_natural`` and ``recipe`` through :func:`tfrobust.training.train`, evaluates
    both with the paper's attacks, serves the robust one; returns the report (also written to ``out_dir``).

    Args:
        out_dir: where models, ``report.json`` and ``quickstart.png`` go.
        n_train: training examples (default: the recipes' own, all of MNIST's train split but
            the recipes' validation images).
        n_test: test examples evaluated (first N of MNIST test).
        epochs: epochs per model (default: each recipe's own).
        width: width multiplier of the paper's CNN (1.0 = full size).
        recipe: the robust recipe (a packaged name or a YAML path).
        seed: random seed.
        verbose: Keras progress output.
    """
    from tfrobust import data, evaluation, training, utils  # pylint: disable=import-outside-toplevel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    x_test, y_test = data.load("mnist", "test", n_test)
    report: dict[str, Any] = {"dataset": "mnist", "n_test": n_test, "model": f"mnist_cnn(width={width})", "seed": seed,
              "commit": utils.source_commit(), "hardware": utils.hardware(),
              "recipes": {}, "models": {},
              "paper": {k: PAPER_TABLE1[k] for k in ("natural", "decision_jacobian")}}
    for name, recipe_name in (("natural", "mnist_natural"), ("decision_jacobian", recipe)):
        config = training.load_config(recipe_name)
        config.pop("monitor", None)
        config["model"]["width"] = width
        config["train"]["seed"] = seed
        if n_train is not None:
            config["train"]["n_train"] = n_train
        if epochs is not None:
            config["train"]["epochs"] = epochs
        report["recipes"][name] = {"name": config["name"], "objective": config["objective"],
                                   "train": config["train"]}
        print(f"[quickstart] training {name}: recipe {config['name']}, "
              f"{config['train']['epochs']} epochs", file=sys.stderr)
        t0 = time.time()
        model = training.train(config, out / "runs" / name, verbose=verbose)
        train_seconds = time.time() - t0
        model.save(out / f"{name}.keras")
        print(f"[quickstart] evaluating {name}", file=sys.stderr)
        result = evaluation.evaluate_model(
            model, x_test, y_test, attacks=ATTACKS + ("pgd",), eps=",".join(EPS),
            budget=evaluation.Budget(steps=10, step_size={"bim": 0.1, "cw": 0.1, "pgd": None}),
            meta={"model": str(out / f"{name}.keras"), "dataset": "mnist", "split": "test"})
        assert result is not None  # one process, so the chief: only other workers get None
        result["train_seconds"] = round(train_seconds, 1)
        history = json.loads((out / "runs" / name / "history.json").read_text())
        result["history"] = {k: [round(float(v), 4) for v in vals] for k, vals in history.items()}
        report["models"][name] = result
    report["serving"] = serve_and_score(out / "decision_jacobian.keras", out / "serving", x_test[:8],
                                        y_test[:8])
    report["seconds"] = round(time.time() - start, 1)
    utils.atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    plot_report(report, out / "quickstart.png")
    return report


def serve_and_score(model_path: Path, base: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Exports a model for TF Serving, serves it locally and scores ``x`` over REST.

    Returns the SavedModel path, the server URL used and the client's scores
    (margin, gradient norm, effective margin and the CROWN-IBP certified radius beside each prediction).
    """
    from tfrobust import models  # pylint: disable=import-outside-toplevel
    from tfrobust.serving.client import RestClient, format_scores
    from tfrobust.serving.export import certify_settings, export_saved_model
    from tfrobust.serving.server import ServerConfig, start_server

    version_dir = export_saved_model(models.load_model(model_path), base, norm="linf",
                                     certify=certify_settings("crown-ibp"))
    with start_server(ServerConfig({"tfrobust": str(base)}, port=0)) as server:
        scores = RestClient(server.url, "tfrobust").robustness(x)
        url = server.url
    table = format_scores(scores, y)
    print(f"[quickstart] exported {version_dir}; scored {len(x)} test images through the "
          f"local TF-Serving-compatible server at {url}", file=sys.stderr)
    return {"saved_model": str(version_dir), "signature": "robustness", "table": table,
            "scores": {k: [float(v) for v in scores[k]] for k in
                       ("predicted_class", "margin", "grad_norm", "effective_margin", "certified_radius")}}


def format_comparison(report: dict) -> str:
    """Our table beside the paper's Table 1 (accuracy %)."""
    cols = [(a, e) for a in ATTACKS for e in EPS]
    head = f"{'model':<28}{'clean':>7}" + "".join(f"{a.upper() + ' ' + e:>10}" for a, e in cols)
    lines = [head, "-" * len(head)]
    for name, result in report["models"].items():
        paper = report["paper"][name]
        lines.append(f"{name + ' (paper)':<28}{100 * paper['clean']:>7.1f}"
                     + "".join(f"{100 * paper[a][e]:>10.1f}" for a, e in cols))
        lines.append(f"{name + ' (ours)':<28}{100 * result['clean_accuracy']:>7.1f}"
                     + "".join(f"{100 * result['attacks'][a][e]:>10.1f}" for a, e in cols))
        extra = ", ".join(f"eps {e}: PGD {100 * result['attacks']['pgd'][e]:.1f}, worst case "
                          f"{100 * result['worst_case'][e]:.1f}" for e in EPS)
        lines.append(f"{'  + PGD-10 (ours)':<28} {extra}")
        lines.append(f"{'  sanity checks':<28} "
                     + ("passed" if result["sanity"]["passed"] else "FAILED: " + ", ".join(
                         c["name"] for c in result["sanity"]["checks"] if not c["passed"])))
    return "\n".join(lines)


def plot_report(report: dict, path: str | Path) -> None:
    """Accuracy against eps per attack: ours (solid) and the paper's (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ATTACKS) + 1, figsize=(4 * (len(ATTACKS) + 1), 3.4), sharey=True)
    colors = {"natural": "tab:blue", "decision_jacobian": "tab:red"}
    eps = [0.0] + [float(e) for e in EPS]
    for ax, attack in zip(axes[:-1], ATTACKS):
        for name, result in report["models"].items():
            ours = [result["clean_accuracy"]] + [result["attacks"][attack][e] for e in EPS]
            paper = report["paper"][name]
            theirs = [paper["clean"]] + [paper[attack][e] for e in EPS]
            ax.plot(eps, ours, "-o", color=colors.get(name), label=f"{name} (ours)")
            ax.plot(eps, theirs, "--", color=colors.get(name), alpha=0.6, label=f"{name} (paper)")
        ax.set_title(attack.upper())
        ax.set_xlabel("eps (L∞, pixels in [0,1])")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for name, result in report["models"].items():
        worst = [result["clean_accuracy"]] + [result["worst_case"][e] for e in EPS]
        ax.plot(eps, worst, "-s", color=colors.get(name), label=f"{name} (ours)")
    ax.set_title("worst case over FGSM, BIM, C&W, PGD")
    ax.set_xlabel("eps (L∞, pixels in [0,1])")
    ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[-2].legend(fontsize=7, loc="upper right")
    epochs = ", ".join(f"{k} {r['train']['epochs']} epochs" for k, r in report["recipes"].items())
    fig.suptitle(f"MNIST, {report['model']}, {epochs}; {report['n_test']} test images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
