"""What each served score is worth against an attacker who knows it (issue #20, item 5).

For each model (``NAME=PATH`` of a ``.keras`` file) and ``--n`` test images, three L∞ attacks at
``--eps`` from a random start, each of which wants a wrong prediction *with a high served score*:

* ``margin``: PGD on the uncapped margin loss ``max_{j≠y} z_j − z_y`` (the wrong class's lead
  keeps growing after the label flips, so ``margin`` is high);
* ``flat``: the same steps, keeping the successful iterate with the highest served
  ``effective_margin = margin / grad_norm`` (a ReLU net's gradient norm is piecewise constant, so
  it is flattened by selection, not by its own gradient, which is zero almost everywhere);
* ``certified``: once the label has flipped, also ascends the IBP lower bound of the wrong class's
  margins at a radius of ``--bound-eps`` around the point, and keeps the iterate where it is
  highest (so the bound proves the wrong class there and ``certified_radius`` is high).

Each attack keeps, per example, the successful iterate with the highest score it aims at.

For every served score of the ``robustness`` signature (margin, grad_norm's inverse is not served,
effective_margin, certified_radius by CROWN-IBP) it reports, over the successful adversarial inputs
against the correctly classified clean ones: the AUROC of "a low score means attacked", the share of
successful adversarial inputs served with a score above the clean median, and for
``certified_radius`` the number of successful attacks within the clean input's certified radius
(must be 0). Writes ``OUT/adaptive.json`` one model at a time::

    python training/adaptive_study.py --out training/results/score_study \\
        mnist_ibp=runs/mnist_ibp/model.keras mnist_crown_ibp=runs/mnist_crown_ibp/model.keras
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

SCORES = ("margin", "effective_margin", "certified_radius")
ATTACKS = ("margin", "flat", "certified")


def auroc(clean, attacked) -> float:
    """P(score of an attacked input < score of a clean one), ties counted half."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    clean, attacked = np.asarray(clean, float), np.asarray(attacked, float)
    if not len(clean) or not len(attacked):
        return None
    less = (attacked[:, None] < clean[None, :]).mean()
    ties = (attacked[:, None] == clean[None, :]).mean()
    return float(less + 0.5 * ties)


def score_stats(clean, attacked) -> dict:
    """AUROC and the share of attacked inputs scored above the clean median."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    return {"auroc": auroc(clean, attacked),
            "share_above_clean_median": float(np.mean(np.asarray(attacked) > np.median(clean)))
            if len(attacked) and len(clean) else None, "n": int(len(attacked))}


def make_attack(clf, kind: str, eps: float, steps: int, bound_eps: float):
    """A graph-compiled adaptive L∞ PGD; it returns, per example, the successful iterate with the
    highest target score (the last iterate where none succeeded).

    The step follows the wrong classes' lead (``kind="certified"`` adds, once the label has
    flipped, the IBP bound of the wrong class's margins at ``bound_eps`` around the point). The
    served gradient norm of a ReLU net is piecewise constant, so its own gradient is zero almost
    everywhere: ``flat`` flattens it by selection, keeping the iterate whose ``effective_margin``
    is highest, not by a gradient step.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tfrobust import bounds, losses  # pylint: disable=import-outside-toplevel

    def objective(x, y):
        """(value to ascend, score to keep the best of, success) per example."""
        with tf.GradientTape() as inner:
            inner.watch(x)
            logits = tf.cast(clf(x, training=False), tf.float32)
            top2 = losses.top2_margin(logits)
        lead = losses.cw_loss(logits, y)  # max_{j≠y} z_j - z_y, uncapped
        success = lead > 0
        value, score = lead, lead
        if kind == "flat":
            grad = inner.gradient(top2, x)
            score = top2 / (tf.reduce_sum(tf.abs(grad), axis=list(range(1, len(x.shape)))) + 1e-12)
        elif kind == "certified":
            classes = tf.shape(logits)[-1]
            wrong = tf.argmax(logits - 1e9 * tf.one_hot(y, classes), axis=-1, output_type=tf.int32)
            lb = bounds.margin_lower_bounds(clf, x, wrong, bound_eps, method="ibp")
            score = tf.reduce_min(lb + 1e9 * tf.one_hot(wrong, classes), axis=-1)
            value = lead + tf.where(success, score, tf.zeros_like(score))
        return value, score, success

    @tf.function(reduce_retracing=True)
    def run(x, y):
        delta = tf.random.uniform(tf.shape(x), -eps, eps, seed=0)
        x_adv = tf.clip_by_value(x + delta, 0.0, 1.0)
        best, best_score = x_adv, tf.fill(tf.shape(x)[:1], -float("inf"))
        for _ in range(steps + 1):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                value, score, success = objective(x_adv, y)
                total = tf.reduce_sum(value)
            better = tf.logical_and(success, score > best_score)
            best = tf.where(tf.reshape(better, [-1] + [1] * (len(x.shape) - 1)), x_adv, best)
            best_score = tf.where(better, score, best_score)
            step = tf.sign(tape.gradient(total, x_adv)) * (eps / 8)
            x_adv = tf.clip_by_value(x + tf.clip_by_value(x_adv + step - x, -eps, eps), 0.0, 1.0)
        found = tf.reshape(best_score > -float("inf"), [-1] + [1] * (len(x.shape) - 1))
        return tf.stop_gradient(tf.where(found, best, x_adv))
    return run


def study_model(path: Path, args) -> dict:
    """Every attack and score on one model."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tfrobust import data  # pylint: disable=import-outside-toplevel
    from tfrobust.models import load_model, unwrap  # pylint: disable=import-outside-toplevel
    from tfrobust.serving.export import certify_settings, robustness_outputs  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import batches  # pylint: disable=import-outside-toplevel

    clf = unwrap(load_model(path))
    settings = certify_settings("crown-ibp")
    served = tf.function(lambda t: robustness_outputs(clf, t, "linf", certify=settings), reduce_retracing=True)
    x, y = data.load("mnist", "test", args.n)
    x, y = x.astype(np.float32), y.astype(np.int32)

    def scores(inputs):
        parts = [served(tf.constant(inputs[s])) for s in batches(len(inputs), args.batch_size)]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in ("predicted_class",) + SCORES}

    clean = scores(x)
    correct = clean["predicted_class"] == y
    out = {"n": int(len(x)), "clean_accuracy": float(correct.mean()), "eps": args.eps, "attacks": {}}
    for kind in ATTACKS:
        attack = make_attack(clf, kind, args.eps, args.steps, args.bound_eps)
        x_adv = np.concatenate([attack(tf.constant(x[s]), tf.constant(y[s])).numpy()
                                for s in batches(len(x), args.batch_size)])
        assert np.all(np.abs(x_adv - x) <= args.eps + 1e-6)
        adv = scores(x_adv)
        success = correct & (adv["predicted_class"] != y)
        distance = np.abs(x_adv - x).reshape(len(x), -1).max(-1)
        block = {"success_rate": float(success.sum() / max(correct.sum(), 1)), "scores": {}}
        for score in SCORES:
            block["scores"][score] = score_stats(clean[score][correct], adv[score][success])
        within = success & (distance <= clean["certified_radius"])
        block["scores"]["certified_radius"]["successes_within_certified_radius"] = int(within.sum())
        out["attacks"][kind] = block
        print(f"{path}: {kind}: success {block['success_rate']:.3f}; "
              + "; ".join(f"{s} AUROC {b['auroc']} above-median {b['share_above_clean_median']}"
                          for s, b in block["scores"].items()), flush=True)
    out["certified_radius_settings"] = settings
    return out


def worst_case(result: dict, score: str) -> tuple[float, float] | None:
    """(AUROC, share above the clean median) of ``score`` under the attacker that lifts it most."""
    found = [b["scores"][score] for b in result["attacks"].values() if b["scores"][score]["auroc"] is not None]
    if not found:
        return None
    worst = max(found, key=lambda v: (v["share_above_clean_median"], -v["auroc"]))
    return worst["auroc"], worst["share_above_clean_median"]


def readme_rows(report: dict) -> str:
    """docs/results.md's table rows, one per model (tests check that the page quotes the JSON)."""
    rows = []
    for name, result in report.items():
        success = max(b["success_rate"] for b in result["attacks"].values())
        within = sum(b["scores"]["certified_radius"]["successes_within_certified_radius"]
                     for b in result["attacks"].values())
        cells = []
        for score in SCORES:
            w = worst_case(result, score)
            cells.append("—" if w is None else f"{w[0]:.2f} / {100 * w[1]:.0f}%")
        rows.append(f"| `{name}` ({100 * result['clean_accuracy']:.1f}) | {100 * success:.1f}% | "
                    + " | ".join(cells) + f" | {within} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--out", default="training/results/score_study")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--bound-eps", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args(argv)
    from tfrobust.utils import atomic_write_text, hardware, source_commit  # pylint: disable=import-outside-toplevel
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "adaptive.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    from tfrobust.utils import parse_named_paths  # pylint: disable=import-outside-toplevel
    try:
        models = parse_named_paths(args.models)
    except ValueError as err:
        parser.error(f"model {err}")
    for name, model_path in models:
        if name in report:
            continue
        start = time.time()
        report[name] = study_model(Path(model_path), args)
        report[name].update({"seconds": round(time.time() - start, 1), "model": model_path, "hardware": hardware(),
                             "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                             "commit": source_commit()})
        atomic_write_text(path, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
