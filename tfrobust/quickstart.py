"""``tfrobust quickstart``: the README's main job on the embedded MNIST.

Trains the seed paper's MNIST CNN naturally and with the decision-margin
Jacobian penalty (Yu et al.) for a few epochs on CPU, evaluates both under
FGSM, BIM and C&W at eps 0.1/0.2/0.3 with the paper's settings (10 iterations,
step 0.1) on a test subset, prints the table beside the paper's Table 1 and
writes ``report.json``, the models and a PNG chart. Finally it exports the
Jacobian model as a SavedModel for TF Serving, serves it with the local
TF-Serving-compatible server and prints margin scores beside predictions.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import keras

from tfrobust import data, evaluation, models, utils
from tfrobust import objectives as O

__all__ = ["PAPER_TABLE1", "quickstart", "plot_report", "serve_and_score",
           "format_comparison"]


PAPER_TABLE1 = {
    # Yu et al., Table 1 (MNIST test accuracy, eps on [0,1]); DESIGN §1.1.
    "natural": {"clean": 0.991, "fgsm": {"0.1": 0.673, "0.2": 0.129, "0.3": 0.047},
                "bim": {"0.1": 0.225, "0.2": 0.0, "0.3": 0.0},
                "cw": {"0.1": 0.216, "0.2": 0.0, "0.3": 0.0}},
    "adv_train": {"clean": 0.991, "fgsm": {"0.1": 0.730, "0.2": 0.527, "0.3": 0.109},
                  "bim": {"0.1": 0.620, "0.2": 0.065, "0.3": 0.0},
                  "cw": {"0.1": 0.711, "0.2": 0.170, "0.3": 0.021}},
    "input_gradient": {"clean": 0.992, "fgsm": {"0.1": 0.916, "0.2": 0.604, "0.3": 0.183},
                       "bim": {"0.1": 0.879, "0.2": 0.199, "0.3": 0.0},
                       "cw": {"0.1": 0.881, "0.2": 0.200, "0.3": 0.0}},
    "decision_jacobian": {"clean": 0.984, "fgsm": {"0.1": 0.916, "0.2": 0.703, "0.3": 0.416},
                          "bim": {"0.1": 0.881, "0.2": 0.649, "0.3": 0.267},
                          "cw": {"0.1": 0.892, "0.2": 0.726, "0.3": 0.376}},
}

EPS = ("0.1", "0.2", "0.3")
ATTACKS = ("fgsm", "bim", "cw")


def _recipes(c: float, norm: str) -> dict[str, O.Objective]:
    return {"natural": O.Objective([O.CrossEntropy()]),
            "decision_jacobian": O.CrossEntropy() + O.DecisionJacobian(c=c, norm=norm)}


def quickstart(out_dir: str | Path, *, n_train: int = 60000, n_test: int = 1000, epochs: int = 5,
               width: float = 0.5, c: float = 0.638, norm: str = "l2_squared", batch_size: int = 128,
               seed: int = 0, verbose: int = 2) -> dict:
    """Runs the quickstart and returns the report (also written to ``out_dir``).

    Args:
        out_dir: where models, ``report.json`` and ``quickstart.png`` go.
        n_train: training examples (first N of MNIST train).
        n_test: test examples evaluated (first N of MNIST test).
        epochs: epochs per model.
        width: width multiplier of the paper's CNN (1.0 = full size).
        c: Jacobian penalty coefficient.
        norm: Jacobian penalty norm (see :data:`tfrobust.objectives.PENALTY_NORMS`).
        batch_size: training batch size.
        seed: random seed.
        verbose: Keras progress output.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    x_train, y_train = data.load("mnist", "train", n_train)
    x_test, y_test = data.load("mnist", "test", n_test)
    report = {"dataset": "mnist", "n_train": n_train, "n_test": n_test, "epochs": epochs,
              "model": f"mnist_cnn(width={width})", "seed": seed, "models": {},
              "paper": {k: PAPER_TABLE1[k] for k in ("natural", "decision_jacobian")}}
    for name, objective in _recipes(c, norm).items():
        keras.utils.set_random_seed(seed)
        print(f"[quickstart] training {name}: {objective!r}", file=sys.stderr)
        model = models.RobustModel(models.mnist_cnn(width=width), objective)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        t0 = time.time()
        hist = model.fit(data.make_dataset(x_train, y_train, batch_size, shuffle=True, seed=seed),
                         epochs=epochs, verbose=verbose, shuffle=False).history
        train_seconds = time.time() - t0
        model.save(out / f"{name}.keras")
        print(f"[quickstart] evaluating {name}", file=sys.stderr)
        result = evaluation.evaluate_model(
            model, x_test, y_test, attacks=ATTACKS + ("pgd",), eps=",".join(EPS), steps=10,
            step_size={"bim": 0.1, "cw": 0.1, "pgd": None},
            meta={"model": str(out / f"{name}.keras"), "dataset": "mnist", "split": "test"})
        result["train_seconds"] = round(train_seconds, 1)
        result["history"] = {k: [round(float(v), 4) for v in vals] for k, vals in hist.items()}
        report["models"][name] = result
    report["serving"] = serve_and_score(out / "decision_jacobian.keras", out / "serving", x_test[:8],
                                        y_test[:8])
    report["seconds"] = round(time.time() - start, 1)
    utils.atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    plot_report(report, out / "quickstart.png")
    return report


def serve_and_score(model_path: Path, base: Path, x, y) -> dict:
    """Exports a model for TF Serving, serves it locally and scores ``x`` over REST.

    Returns the SavedModel path, the server URL used and the client's scores
    (margin, gradient norm and effective margin beside each prediction).
    """
    from tfrobust.serving.client import RestClient, format_scores
    from tfrobust.serving.export import export_saved_model
    from tfrobust.serving.server import ServerConfig, start_server

    version_dir = export_saved_model(evaluation.load_model(model_path), base, norm="linf")
    with start_server(ServerConfig({"tfrobust": str(base)}, port=0)) as server:
        scores = RestClient(server.url, "tfrobust").robustness(x)
        url = server.url
    table = format_scores(scores, y)
    print(f"[quickstart] exported {version_dir}; scored {len(x)} test images through the "
          f"local TF-Serving-compatible server at {url}:\n{table}", file=sys.stderr)
    return {"saved_model": str(version_dir), "signature": "robustness", "table": table,
            "scores": {k: [float(v) for v in scores[k]] for k in
                       ("predicted_class", "margin", "grad_norm", "effective_margin")}}


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
    fig.suptitle(f"MNIST, {report['model']}, {report['epochs']} epochs on {report['n_train']} images, "
                 f"{report['n_test']} test images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
