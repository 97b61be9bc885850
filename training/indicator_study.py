"""Does the robustness indicator predict robustness without attacks? (Yu et al., docs/architecture.md)

Trains small MNIST models of different robustness (natural, decision-Jacobian
regularised at several c, PGD adversarially trained at several eps, fast FGSM
adversarial training), measures for each the attack-free indicator (input
Jacobian of the decision function d, Hessian spectra, margins) and the
worst-case robust accuracy over FGSM / BIM / C&W at eps 0.1, 0.2, 0.3, and
reports the Spearman rank correlation between every indicator and the robust
accuracy.

Every robust model starts from the same naturally trained network (2 epochs)
and is fine-tuned for ``--epochs`` more with its objective; the natural model
gets the same number of extra natural epochs. All on 2 CPU cores in about 10
minutes:

    python training/indicator_study.py --out training/results

Writes ``indicator_study.json`` and three PNGs into ``--out``:
``indicator_study.png`` (indicator vs robust accuracy, one point per model),
``indicator_study_regularization.png`` (layer spectra and margins, natural vs
the most robust model) and ``indicator_study_surfaces.png`` (decision surfaces
of the same two models).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import stats  # noqa: E402

from tfrobust import data, evaluation, models  # noqa: E402
from tfrobust import objectives as O  # noqa: E402
from tfrobust.analysis import indicator, margins, plots, spectra, surface  # noqa: E402
from tfrobust.attacks import AttackConfig  # noqa: E402

EPS = ("0.1", "0.2", "0.3")

# (indicator key, label, direction): direction +1 if larger should mean more robust, -1 if smaller.
INDICATORS = (
    ("jacobian_l1", "mean ‖∇ₓd‖₁", -1),
    ("jacobian_l2", "mean ‖∇ₓd‖₂", -1),
    ("jacobian_near_zero_share", "share of |∂d/∂xᵢ| ≤ 1e-3", +1),
    ("hessian_decision_norm", "mean max|λ| of ∇²ₓd", -1),
    ("hessian_loss_norm", "mean max|λ| of ∇²ₓCE", -1),
    ("hessian_loss_near_zero_share", "share of |λ(∇²ₓCE)| ≤ 1e-3", +1),
    ("normalised_margin_median", "median d / ‖∇ₓd‖₁", +1),
    ("margin_mean", "mean raw margin d", +1),
)


def objectives_table(quick: bool) -> dict:
    """Model name -> objective (a fresh instance each call)."""
    pgd = lambda eps: AttackConfig(name="pgd", eps=eps, steps=5 if quick else 7)  # noqa: E731
    table = {
        "natural": O.CrossEntropy(),
        "jacobian_c0.1": O.CrossEntropy() + O.DecisionJacobian(c=0.1, norm="l2"),
        "jacobian_c0.3": O.CrossEntropy() + O.DecisionJacobian(c=0.3, norm="l2"),
        "jacobian_c0.638": O.CrossEntropy() + O.DecisionJacobian(c=0.638, norm="l2"),
        "jacobian_c1.5": O.CrossEntropy() + O.DecisionJacobian(c=1.5, norm="l2"),
        "pgd_at_eps0.1": O.AdversarialTraining(pgd(0.1)),
        "pgd_at_eps0.2": O.AdversarialTraining(pgd(0.2)),
        "pgd_at_eps0.3": O.AdversarialTraining(pgd(0.3), mix=0.5),
        "fast_at_eps0.3": O.FastAdversarialTraining(eps=0.3),
    }
    if quick:
        table = {k: table[k] for k in ("natural", "jacobian_c0.638", "pgd_at_eps0.2")}
    return table


def train(x, y, *, width: float, pre_epochs: int, epochs: int, batch_size: int, quick: bool,
          save_dir: str | None) -> dict:
    """Trains every model of :func:`objectives_table`; returns ``{name: (model, seconds)}``."""
    keras.utils.set_random_seed(0)
    base = models.RobustModel(models.mnist_cnn(width=width))
    base.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    t0 = time.perf_counter()
    base.fit(x, y, epochs=pre_epochs, batch_size=batch_size, verbose=0)
    pre_seconds = time.perf_counter() - t0
    start_weights = base.classifier.get_weights()
    out = {}
    for name, objective in objectives_table(quick).items():
        keras.utils.set_random_seed(1)
        clf = models.mnist_cnn(width=width, name=f"mnist_cnn_{name}")
        clf.set_weights(start_weights)
        model = models.RobustModel(clf, objective)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        t0 = time.perf_counter()
        hist = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0).history
        seconds = time.perf_counter() - t0
        print(f"  trained {name:16s} {seconds:6.1f} s  final loss {hist['loss'][-1]:.4f}", flush=True)
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
            model.save(os.path.join(save_dir, f"{name}.keras"))
        out[name] = (model, seconds)
    print(f"  (shared natural pre-training: {pre_seconds:.1f} s)")
    return out


def measure(model, x_ind, y_ind, x_eval, y_eval, *, k: int) -> dict:
    """Indicator statistics (no attacks) and worst-case robust accuracy (attacks) of one model."""
    clf = model.classifier
    t0 = time.perf_counter()
    ind = indicator.robustness_indicator(clf, x_ind, y_ind, batch_size=50, k=k, top_k=5)
    summary = ind.summary()
    indicator_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = evaluation.evaluate_model(clf, x_eval, y_eval, attacks=("fgsm", "bim", "cw"), eps=",".join(EPS),
                                   budget=evaluation.Budget(steps=10), progress=False)
    attack_seconds = time.perf_counter() - t0
    values = {
        "jacobian_l1": summary["jacobian"]["l1"]["mean"],
        "jacobian_l2": summary["jacobian"]["l2"]["mean"],
        "jacobian_near_zero_share": summary["jacobian"]["near_zero_share"]["mean"],
        "hessian_decision_norm": summary["hessian"]["decision"]["spectral_norm"]["mean"],
        "hessian_decision_near_zero_share": summary["hessian"]["decision"]["near_zero_share"]["mean"],
        "hessian_loss_norm": summary["hessian"]["loss"]["spectral_norm"]["mean"],
        "hessian_loss_near_zero_share": summary["hessian"]["loss"]["near_zero_share"]["mean"],
        "normalised_margin_median": summary["normalised_margin"]["median"],
        "margin_mean": summary["margin"]["mean"],
    }
    worst = {e: ev["worst_case"][e] for e in EPS}
    return {
        "indicator": values,
        "indicator_summary": summary,
        "clean_accuracy": ev["clean_accuracy"],
        "attacks": ev["attacks"],
        "worst_case": worst,
        "worst_case_mean": float(np.mean(list(worst.values()))),
        "sanity": ev.get("sanity"),
        "indicator_seconds": round(indicator_seconds, 2),
        "attack_seconds": round(attack_seconds, 2),
    }


def spearman_table(results: dict) -> dict:
    """Spearman ρ (and p) of every indicator against worst-case accuracy at each eps and their mean."""
    names = list(results)
    table = {}
    for key, _, direction in INDICATORS:
        ind = np.array([results[n]["indicator"][key] for n in names], dtype=np.float64)
        row = {"expected_sign": direction}
        for target in (*EPS, "mean"):
            acc = np.array([results[n]["worst_case_mean"] if target == "mean" else results[n]["worst_case"][target]
                            for n in names])
            if np.ptp(ind) == 0 or np.ptp(acc) == 0:
                row[target] = {"rho": None, "p": None, "note": "constant across models"}
                continue
            rho, p = stats.spearmanr(ind, acc)
            row[target] = {"rho": round(float(rho), 4), "p": round(float(p), 4)}
        table[key] = row
    return table


def plot_scatter(results: dict, table: dict, path: str) -> None:
    keys = [k for k, _, _ in INDICATORS if table[k]["mean"]["rho"] is not None]
    labels = {k: lab for k, lab, _ in INDICATORS}
    cols = 3
    rows = int(np.ceil(len(keys) / cols))
    fig = plots.new_figure(4.6 * cols, 3.9 * rows)
    family = {"natural": "#404040", "jacobian": "#2166ac", "pgd": "#b2182b", "fast": "#e08214"}
    points = [{"name": n, **r["indicator"], "robust": r["worst_case_mean"], "color": family[n.split("_")[0]]}
              for n, r in results.items()]
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        positive = all(p[key] > 0 for p in points)
        plots.plot_indicator_scatter(points, x_key=key, y_key="robust", xlabel=labels[key],
                                     ylabel="worst-case robust acc. (mean over ε .1/.2/.3)", ax=ax,
                                     logx=positive and key.startswith(("jacobian_l", "hessian_loss_norm")),
                                     title=f"Spearman ρ = {table[key]['mean']['rho']:+.2f} "
                                           f"(p = {table[key]['mean']['p']:.3f})")
    fig.suptitle("Attack-free indicator vs worst-case robust accuracy (FGSM/BIM/C&W), MNIST, one point per model "
                 "(grey natural, blue decision-Jacobian, red PGD-AT, orange fast FGSM-AT)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_views(models_: dict, natural: str, robust: str, x, y, out_dir: str) -> None:
    views = {}
    for name in (natural, robust):
        clf = models_[name][0].classifier
        views[name] = {"spectra": spectra.weight_spectra(clf), "margins": margins.sample_margins(clf, x, y)}
    fig = plots.plot_regularization(views, title=f"Regularisation view (weight-operator spectra, margins): "
                                                 f"{natural} vs {robust}")
    fig.savefig(os.path.join(out_dir, "indicator_study_regularization.png"), dpi=100)
    grid = {}
    for name in (natural, robust):
        clf = models_[name][0].classifier
        grid[name] = {d: surface.input_surface(clf, x[0], y[0], direction=d, steps=31)
                      for d in ("random", "ce", "cw")}
    fig = plots.plot_surface_grid(grid, kind="decision", view="3d",
                                  title=f"Decision surface d around test[0] (shared z): {natural} vs {robust}")
    fig.savefig(os.path.join(out_dir, "indicator_study_surfaces.png"), dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="training/results", help="folder for the JSON and PNGs")
    parser.add_argument("--train-n", type=int, default=10000, help="MNIST training examples (10000)")
    parser.add_argument("--eval-n", type=int, default=500, help="test examples attacked (500)")
    parser.add_argument("--indicator-n", type=int, default=500, help="test examples for the indicator (500)")
    parser.add_argument("--width", type=float, default=0.25, help="mnist_cnn width (0.25)")
    parser.add_argument("--pre-epochs", type=int, default=2, help="shared natural pre-training epochs (2)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each objective after it (2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lanczos-k", type=int, default=20, help="Lanczos steps for the Hessian (20)")
    parser.add_argument("--quick", action="store_true", help="three models only, for a smoke test")
    parser.add_argument("--save-models", default=None, help="folder to save the trained .keras models in")
    args = parser.parse_args(argv)
    command = "python training/indicator_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("reproduce with:", command.strip(), flush=True)
    start = time.perf_counter()
    tf.get_logger().setLevel("ERROR")  # one trace per model is expected; silence the retracing notes

    x_train, y_train = data.load("mnist", "train", n=args.train_n)
    x_test, y_test = data.load("mnist", "test", n=max(args.eval_n, args.indicator_n))
    trained = train(x_train, y_train, width=args.width, pre_epochs=args.pre_epochs, epochs=args.epochs,
                    batch_size=args.batch_size, quick=args.quick, save_dir=args.save_models)
    results = {}
    for name, (model, seconds) in trained.items():
        r = measure(model, x_test[: args.indicator_n], y_test[: args.indicator_n], x_test[: args.eval_n],
                    y_test[: args.eval_n], k=args.lanczos_k)
        r["train_seconds"] = round(seconds, 2)
        results[name] = r
        ind = r["indicator"]
        print(f"  {name:16s} clean {r['clean_accuracy']:.3f}  worst-case "
              + " ".join(f"{e}:{r['worst_case'][e]:.3f}" for e in EPS)
              + f" | ‖J‖₁ {ind['jacobian_l1']:.3g}  ‖J‖₂ {ind['jacobian_l2']:.3g}"
              f"  J≈0 {ind['jacobian_near_zero_share']:.3f}  λmax(∇²d) {ind['hessian_decision_norm']:.3g}"
              f"  λmax(∇²CE) {ind['hessian_loss_norm']:.3g}  λ≈0(CE) {ind['hessian_loss_near_zero_share']:.3f}"
              f"  d/‖J‖₁ {ind['normalised_margin_median']:.3g}", flush=True)
    table = spearman_table(results)
    print("\nSpearman ρ (p) of indicator vs worst-case robust accuracy, n =", len(results), "models")
    print(f"  {'indicator':32s} " + " ".join(f"{('eps ' + t) if t != 'mean' else 'mean':>16s}" for t in (*EPS, "mean")))
    for key, _, _ in INDICATORS:
        row = table[key]
        cells = []
        for t in (*EPS, "mean"):
            c = row[t]
            cells.append(f"{'const.':>16s}" if c["rho"] is None else f"{c['rho']:+.3f} ({c['p']:.3f})".rjust(16))
        print(f"  {key:32s} " + " ".join(cells))

    os.makedirs(args.out, exist_ok=True)
    robust_name = max(results, key=lambda n: results[n]["worst_case_mean"])
    report = {
        "command": command.strip(),
        "question": "Does the attack-free robustness indicator rank models by worst-case robust accuracy?",
        "setup": {"dataset": "mnist", "train_n": args.train_n, "eval_n": args.eval_n,
                  "indicator_n": args.indicator_n, "model": f"mnist_cnn(width={args.width})",
                  "pre_epochs_natural": args.pre_epochs, "epochs_per_objective": args.epochs,
                  "batch_size": args.batch_size, "optimizer": "adam 1e-3",
                  "attacks": "per-example worst case over fgsm, bim (10 steps, 2.5*eps/10), "
                             "cw (margin PGD, 10 steps), eps 0.1/0.2/0.3 ([0,1] pixels)",
                  "indicator": "d = z_y - max_{i!=y} z_i at the true label; Jacobian entries near zero if "
                               "|J_i| <= 1e-3; Hessian eigenvalues by Lanczos (k steps, full "
                               "reorthogonalisation) on forward-over-backward HVPs, near-zero share "
                               "(|lambda| <= 1e-3) by stochastic Lanczos quadrature",
                  "lanczos_k": args.lanczos_k,
                  "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
        "models": {n: {k: v for k, v in r.items() if k != "indicator_summary"} for n, r in results.items()},
        "indicator_summaries": {n: r["indicator_summary"] for n, r in results.items()},
        "spearman": table,
        "most_robust_model": robust_name,
        "seconds": None,
    }
    plot_scatter(results, table, os.path.join(args.out, "indicator_study.png"))
    plot_views(trained, "natural", robust_name, x_test[:200], y_test[:200], args.out)
    report["seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(args.out, "indicator_study.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}/indicator_study.json and PNGs in {report['seconds']:.0f} s")
    print("reproduce with:", command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
