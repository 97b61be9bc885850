"""Is the served robustness score worth anything? (issue #13).

Phase 1 (``--train``) trains the study's three MNIST models, half width, on the
first 55,000 training images (the last 5,000 stay held out: the calibration
split of ``estimated_radius``), one thread each so a second core stays free:

* ``natural``  -- cross-entropy, 5 epochs;
* ``jacobian`` -- the ``mnist_jacobian`` recipe (CE + dual-norm decision Jacobian, c = 0.01), 10 epochs;
* ``pgd_at``   -- PGD-10 adversarial training at eps 0.3 (step 2.5 eps / 10, random start,
  eps warm-up over the first epoch), 5 epochs.

A model whose ``model.keras`` exists is skipped, and training resumes from its checkpoint
after a crash. Phase 2 (``--analyse``) compares, per test example, the served statistics
(:func:`tfrobust.serving.export.robustness_outputs`, the very function the ``robustness``
signature runs) with the distance to the nearest input of another *predicted* class that
the strongest minimal-norm attack we have finds (FMN and untargeted FAB, 100 steps each, the
smaller distance per example), for the L∞ and the L2 threat; see :func:`analyse_model`. Each
model's JSON is written as soon as it is done; ``summary.json`` and the scatter plots are
rebuilt from them at the end.

    python training/score_study.py --train --runs runs/score_study --threads 1
    python training/score_study.py --analyse --runs runs/score_study --out training/results/score_study
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

N_VAL = 5000
WIDTH = 0.5
ADV_EPS = {"natural": 0.1, "jacobian": 0.1, "pgd_at": 0.3}
"""L∞ radius of the PGD inputs the detector AUROC uses: the training eps of the PGD-AT model;
0.1 for the models trained without one (at 0.3 PGD breaks every input of the natural model)."""

MODELS = {
    "natural": {"objective": [{"type": "cross_entropy"}], "epochs": 5},
    "jacobian": {"objective": [{"type": "cross_entropy"},
                               {"type": "decision_jacobian", "c": 0.01, "threat": "linf"}], "epochs": 10},
    "pgd_at": {"objective": [{"type": "adversarial_training", "mix": 1.0,
                              "attack": {"name": "pgd", "eps": 0.3, "steps": 10, "random_start": True}}],
               "epochs": 5, "eps_warmup_epochs": 1},
}
"""The study's models: objective and epochs (everything else as in the packaged MNIST recipes)."""


def recipe(name: str) -> dict:
    """The training recipe of study model ``name``."""
    spec = MODELS[name]
    return {"name": f"score_study_{name}", "dataset": "mnist",
            "model": {"name": "mnist_cnn", "width": WIDTH},
            "objective": spec["objective"],
            "train": {"epochs": spec["epochs"], "batch_size": 128, "optimizer": "adam",
                      "learning_rate": 1e-3, "validation_n": N_VAL,
                      "eps_warmup_epochs": spec.get("eps_warmup_epochs", 0)}}


def train_models(runs: Path, names) -> None:
    """Trains every study model not trained yet; writes ``train.json`` (command, commit, wall time) beside it."""
    from tfrobust.training import train  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import hardware, source_commit  # pylint: disable=import-outside-toplevel

    for name in names:
        out = runs / name
        if (out / "model.keras").exists() and (out / "train.json").exists():
            print(f"{name}: trained already ({out})")
            continue
        start = time.time()
        train(recipe(name), out, verbose=2)
        (out / "train.json").write_text(json.dumps({
            "model": name, "recipe": recipe(name), "train_seconds": round(time.time() - start, 1),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "commit": source_commit(), "hardware": hardware()}, indent=2))


def ranks(v) -> np.ndarray:
    """Ranks 0..n-1 of ``v``, ties sharing their average rank."""
    v = np.asarray(v, float)
    order = np.argsort(v, kind="mergesort")
    _, first, counts = np.unique(v[order], return_index=True, return_counts=True)
    out = np.empty(len(v))
    out[order] = np.repeat(first + (counts - 1) / 2.0, counts)
    return out


def distances(values) -> np.ndarray:
    """Distances as stored in the JSONs (``None`` = nothing adversarial found) -> floats with ``inf``."""
    return np.array([np.inf if v is None else v for v in values], float)


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def auroc(positive, negative) -> float:
    """P(score of a random positive < score of a random negative), ties counted half:
    how well a *low* score flags the positives."""
    p = np.asarray(positive, float)[:, None]
    q = np.asarray(negative, float)[None, :]
    if p.size == 0 or q.size == 0:
        return float("nan")
    return float(((p < q).sum() + 0.5 * (p == q).sum()) / (p.size * q.size))


def analyse_model(name: str, model_path: Path, n: int, *, fab_steps: int, fmn_steps: int,
                  batch_size: int) -> dict:
    """The served statistics against the minimal distance found, for one model and both threats."""
    # pylint: disable=import-outside-toplevel
    import tensorflow as tf

    from tfrobust import data
    from tfrobust.attacks import AttackConfig, Budget
    from tfrobust.evaluation import minimal_distances
    from tfrobust.models import load_model, unwrap
    from tfrobust.serving.export import robustness_outputs

    clf = unwrap(load_model(model_path))
    x, y = data.load("mnist", "test", n)
    x = x.astype(np.float32)

    def served(inputs, norm):
        out = {k: [] for k in ("predicted_class", "margin", "grad_norm", "effective_margin")}
        fn = tf.function(lambda t: robustness_outputs(clf, t, norm))
        for s in range(0, len(inputs), batch_size):
            res = fn(tf.constant(inputs[s:s + batch_size]))
            for k in out:
                out[k].append(res[k].numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    result = {"model": name, "n": int(len(x)), "clean_accuracy": None, "threats": {}}
    stats = {}
    for norm in ("linf", "l2"):
        stats[norm] = served(x, norm)
        pred = stats[norm]["predicted_class"]
        result["clean_accuracy"] = float((pred == y).mean())
        t0 = time.time()
        dist = minimal_distances(clf, x, pred, "fmn+fab",
                                 Budget(norm=norm, fab_steps=fab_steps, fmn_steps=fmn_steps),
                                 batch_size=batch_size, progress=True)
        em = stats[norm]["effective_margin"]
        found = np.isfinite(dist) & (dist > 0)
        ratio = em[found] / dist[found]
        result["threats"][norm] = {
            "attack_seconds": round(time.time() - t0, 1), "found": float(found.mean()),
            "spearman_effective_margin": spearman(em[found], dist[found]),
            "spearman_margin": spearman(stats[norm]["margin"][found], dist[found]),
            "underestimate_share": float((ratio < 1).mean()), "overestimate_share": float((ratio > 1).mean()),
            "median_underestimate_factor": float(np.median(1 / ratio[ratio < 1])) if (ratio < 1).any() else None,
            "median_overestimate_factor": float(np.median(ratio[ratio > 1])) if (ratio > 1).any() else None,
            "ratio_quantiles": {f"q{int(q * 100)}": float(np.quantile(ratio, q)) for q in (0.05, 0.1, 0.5, 0.9)},
            "median_distance": float(np.median(dist[found])),
            "points": {"effective_margin": em.tolist(), "distance": [float(v) if np.isfinite(v) else None
                                                                       for v in dist]},
            "margin_values": stats[norm]["margin"].tolist()}
    # Detectors: low margin / effective margin flags PGD inputs, and misclassified clean inputs.
    eps = ADV_EPS[name]
    pgd = AttackConfig(name="pgd", eps=eps, steps=40, norm="linf", random_start=True)
    adv = np.concatenate([pgd(clf, tf.constant(x[s:s + batch_size]), y[s:s + batch_size]).numpy()
                          for s in range(0, len(x), batch_size)])
    adv_stats = served(adv, "linf")
    fooled = adv_stats["predicted_class"] != y
    correct = stats["linf"]["predicted_class"] == y
    det = {"adversarial_eps": eps, "adversarial_n": int(fooled.sum()), "misclassified_n": int((~correct).sum())}
    for key in ("margin", "effective_margin"):
        det[f"auroc_adversarial_{key}"] = auroc(adv_stats[key][fooled], stats["linf"][key][correct])
        det[f"auroc_misclassified_{key}"] = auroc(stats["linf"][key][~correct], stats["linf"][key][correct])
    result["detection"] = det
    return result


def calibration_distances(name: str, model_path: Path, n: int, *, fab_steps: int, fmn_steps: int,
                          batch_size: int, test_n: int) -> dict:
    """Served statistics and FMN+FAB distances on ``n`` held-out *training* images (55,000 on),
    which no study model trained on: the calibration split of an ``estimated_radius``."""
    # pylint: disable=import-outside-toplevel
    import tensorflow as tf

    from tfrobust import data
    from tfrobust.attacks import Budget
    from tfrobust.evaluation import minimal_distances
    from tfrobust.models import load_model, unwrap
    from tfrobust.serving.export import robustness_outputs

    clf = unwrap(load_model(model_path))
    x, _ = data.load("mnist", "train")
    x = x[len(x) - N_VAL:len(x) - N_VAL + n].astype(np.float32)
    out = {"model": name, "n": int(len(x)), "split": f"train[{60000 - N_VAL}:{60000 - N_VAL + n}]", "threats": {}}
    for norm in ("linf", "l2"):
        fn = tf.function(lambda t, norm=norm: robustness_outputs(clf, t, norm))
        stats = {k: np.concatenate([fn(tf.constant(x[s:s + batch_size]))[k].numpy()
                                    for s in range(0, len(x), batch_size)])
                 for k in ("predicted_class", "margin", "effective_margin")}
        dist = minimal_distances(clf, x, stats["predicted_class"], "fmn+fab",
                                 Budget(norm=norm, fab_steps=fab_steps, fmn_steps=fmn_steps),
                                 batch_size=batch_size, progress=True)
        out["threats"][norm] = {"margin": stats["margin"].tolist(),
                                "effective_margin": stats["effective_margin"].tolist(),
                                "distance": [float(v) if np.isfinite(v) else None for v in dist]}
    # The served margin of the analysed test images too (a forward pass; the first analysis kept only
    # the effective margin), for the margin-based radius.
    x_test, _ = data.load("mnist", "test", test_n)
    fn = tf.function(lambda t: robustness_outputs(clf, t, "linf"))
    out["test_margin"] = np.concatenate([fn(tf.constant(x_test[s:s + batch_size].astype(np.float32)))["margin"].numpy()
                                         for s in range(0, len(x_test), batch_size)]).tolist()
    return out


def radius_check(calibration: dict, test: dict, coverage: float = 0.9) -> dict:
    """Fits ``estimated_radius = c * statistic`` on calibration data (the served radius of
    :func:`tfrobust.serving.export.calibrate_radius` uses the effective margin), checks it on the test points."""
    from tfrobust.serving.export import choose_statistic, conformal_factor  # pylint: disable=import-outside-toplevel

    out = {}
    for norm in ("linf", "l2"):
        cal = calibration["threats"][norm]
        pts = test["threats"][norm]["points"]
        d_test = distances(pts["distance"])
        out[norm] = {}
        for stat in ("effective_margin", "margin"):
            c = conformal_factor(distances(cal["distance"]), cal[stat], coverage)
            if stat == "effective_margin":
                s_test = np.asarray(pts["effective_margin"], float)
            else:
                s_test = np.asarray(test["threats"][norm].get("margin_values") or calibration["test_margin"], float)
            radius = c * s_test
            finite = np.isfinite(d_test)
            out[norm][stat] = {"factor": c, "coverage_target": coverage, "calibration_n": len(cal["distance"]),
                               "test_coverage": float((d_test >= radius).mean()),
                               "median_radius_over_distance": float(np.median(radius[finite] / d_test[finite]))}
        # What export --calibrate serves: the statistic chosen on the first half, its factor fitted on the second.
        d_cal = distances(cal["distance"])
        half = len(d_cal) // 2
        chosen = choose_statistic(d_cal[:half], {k: np.asarray(cal[k], float)[:half]
                                                 for k in ("effective_margin", "margin")}, coverage)
        out[norm]["served"] = {"statistic": chosen,
                               "factor": conformal_factor(d_cal[half:], np.asarray(cal[chosen], float)[half:],
                                                          coverage), "calibration_n": len(d_cal) - half}
        s_test = np.asarray(pts["effective_margin"] if chosen == "effective_margin" else
                            (test["threats"][norm].get("margin_values") or calibration["test_margin"]), float)
        radius = out[norm]["served"]["factor"] * s_test
        finite = np.isfinite(d_test)
        out[norm]["served"].update({"test_coverage": float((d_test >= radius).mean()),
                                    "median_radius_over_distance": float(np.median(radius[finite] / d_test[finite]))})
    return out


def summarise(out: Path, names) -> dict:
    """``summary.json`` and the scatter plots from the per-model JSONs in ``out``."""
    rows = {}
    per_model = {}
    for name in names:
        path = out / f"{name}.json"
        if path.exists():
            per_model[name] = json.loads(path.read_text())
    for name, r in per_model.items():
        t, det = r["threats"], r["detection"]
        rows[name] = {"spearman_linf": t["linf"]["spearman_effective_margin"],
                      "spearman_l2": t["l2"]["spearman_effective_margin"],
                      "underestimate_share": t["linf"]["underestimate_share"],
                      "underestimate_share_l2": t["l2"]["underestimate_share"],
                      "auroc_adversarial": det["auroc_adversarial_effective_margin"],
                      "auroc_misclassified": det["auroc_misclassified_effective_margin"],
                      "auroc_adversarial_margin": det["auroc_adversarial_margin"],
                      "auroc_misclassified_margin": det["auroc_misclassified_margin"],
                      "n": r["n"], "clean_accuracy": r["clean_accuracy"],
                      "median_distance_linf": t["linf"]["median_distance"],
                      "median_distance_l2": t["l2"]["median_distance"],
                      "ratio_quantiles_linf": t["linf"]["ratio_quantiles"],
                      "ratio_quantiles_l2": t["l2"]["ratio_quantiles"]}
        cal_path = out / f"{name}_calibration.json"
        if cal_path.exists():
            rows[name]["estimated_radius"] = radius_check(json.loads(cal_path.read_text()), r)
    for norm in ("linf", "l2"):
        _scatter(per_model, norm, out / f"scatter_{norm}.png")
    return rows


def _scatter(per_model: dict, norm: str, path: Path) -> None:
    from tfrobust.analysis.plots import figure_to_png, new_figure  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import atomic_write  # pylint: disable=import-outside-toplevel

    if not per_model:
        return
    fig = new_figure(4.0 * len(per_model), 3.8)
    for i, (name, r) in enumerate(per_model.items()):
        ax = fig.add_subplot(1, len(per_model), i + 1)
        pts = r["threats"][norm]["points"]
        em = np.array(pts["effective_margin"])
        d = np.array([np.nan if v is None else v for v in pts["distance"]])
        ok = np.isfinite(d) & (d > 0) & (em > 0)
        ax.loglog(d[ok], em[ok], ".", ms=3, alpha=0.6)
        lo, hi = min(d[ok].min(), em[ok].min()), max(d[ok].max(), em[ok].max())
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="estimate = distance")
        ax.set_xlabel(f"{norm} distance found (FMN + FAB)")
        ax.set_ylabel(f"served effective_margin ({norm} export)")
        ax.set_title(f"{name}: Spearman {r['threats'][norm]['spearman_effective_margin']:.2f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, figure_to_png(fig))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/score_study", help="where the models are trained")
    parser.add_argument("--out", default="training/results/score_study")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--analyse", action="store_true")
    parser.add_argument("--calibrate", action="store_true",
                        help="distances on held-out training images, for the estimated_radius check")
    parser.add_argument("--n", type=int, default=500, help="test images per model")
    parser.add_argument("--fab-steps", type=int, default=100)
    parser.add_argument("--fmn-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0: TF's default)")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    for n in names:
        if n not in MODELS:
            parser.error(f"model {n!r} is unknown; choose from {list(MODELS)}")
    if args.threads:
        from tfrobust.utils import set_threads  # pylint: disable=import-outside-toplevel
        set_threads(args.threads)
    if args.train:
        train_models(Path(args.runs), names)
    if args.analyse:
        from tfrobust.utils import atomic_write_text, hardware, source_commit  # pylint: disable=import-outside-toplevel
        out = Path(args.out)
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        for name in names:
            path = out / f"{name}.json"
            if path.exists():
                print(f"{name}: analysed already ({path})")
                continue
            start = time.time()
            res = analyse_model(name, Path(args.runs) / name / "model.keras", args.n,
                                fab_steps=args.fab_steps, fmn_steps=args.fmn_steps, batch_size=args.batch_size)
            train_info = json.loads((Path(args.runs) / name / "train.json").read_text())
            res.update({"seconds": round(time.time() - start, 1), "command": command, "commit": source_commit(),
                        "hardware": hardware(), "training": train_info})
            atomic_write_text(path, json.dumps(res) + "\n")
        if args.calibrate:
            for name in names:
                path = out / f"{name}_calibration.json"
                if not path.exists():
                    res = calibration_distances(name, Path(args.runs) / name / "model.keras", args.n,
                                                fab_steps=args.fab_steps, fmn_steps=args.fmn_steps,
                                                batch_size=args.batch_size, test_n=args.n)
                    res.update({"command": command, "commit": source_commit(), "hardware": hardware()})
                    atomic_write_text(path, json.dumps(res) + "\n")
        rows = summarise(out, list(MODELS))
        atomic_write_text(out / "summary.json", json.dumps(
            {"command": command, "commit": source_commit(), "hardware": hardware(), "models": rows}, indent=1) + "\n")
        for name, row in rows.items():
            print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                         if not isinstance(v, dict)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
