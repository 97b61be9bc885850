"""Standard AutoAttack, ours against ART 1.20's ``AutoAttack``, on the same model, points and eps (issue #13).

Ours: ``evaluate_model(..., attacks=["autoattack"])``: APGD-CE, APGD-T (9 targets),
FAB-T (9 targets), Square (5,000 queries), each stage on the survivors of the
earlier ones. ART: ``art.attacks.evasion.AutoAttack`` with its default attack list
(APGD-CE and APGD-DLR with 5 random starts each, DeepFool, Square with 5,000
iterations and 5 restarts), as an ART user gets it: ART 1.20 has no FAB, so the two
cascades differ in their members, and the comparison is the robust accuracy each
reports (lower = stronger) and the wall time each takes, measured one after the
other in one process on the same machine. Each runs once (ART's run takes minutes);
both include their tracing / set-up.

Run in the benchmark environment (see ``benchmarks/requirements-peers.txt``)::

    .venv-bench/bin/python benchmarks/autoattack_vs_art.py --model runs/score_study/pgd_at/model.keras \\
        --n 200 --eps 0.3 --out benchmarks/results/autoattack_vs_art.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from importlib import metadata

import numpy as np
import tensorflow as tf

from common import hardware, write_result  # noqa: I001  (benchmarks/ is on sys.path when run as a script)
from tfrobust import data, evaluation
from tfrobust.models import load_model, unwrap
from tfrobust.utils import set_threads


def art_autoattack(clf, x, y, eps: float, batch: int) -> np.ndarray:
    """ART's default AutoAttack; returns the adversarial inputs."""
    from art.attacks.evasion import AutoAttack  # pylint: disable=import-outside-toplevel
    from art.estimators.classification import TensorFlowV2Classifier  # pylint: disable=import-outside-toplevel

    classifier = TensorFlowV2Classifier(
        model=clf, nb_classes=10, input_shape=tuple(x.shape[1:]),
        loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0))
    attack = AutoAttack(classifier, norm=np.inf, eps=eps, eps_step=eps / 4, batch_size=batch)
    return attack.generate(x=x, y=np.eye(10, dtype=np.float32)[y])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a .keras MNIST model")
    parser.add_argument("--n", type=int, default=200, help="first N MNIST test images")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/autoattack_vs_art.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    clf = unwrap(load_model(args.model))
    x, y = data.load("mnist", "test", args.n)
    x = x.astype(np.float32)

    t = time.perf_counter()
    ours = evaluation.evaluate_model(clf, x, y, attacks=["autoattack"], eps=[(f"{args.eps:g}", args.eps)],
                                     sanity=False, progress=False, batch_size=args.batch)
    ours_s = time.perf_counter() - t
    ours_acc = ours["worst_case"][f"{args.eps:g}"]
    print(f"tfrobust autoattack: robust accuracy {ours_acc:.3f} in {ours_s:.1f} s", file=sys.stderr)

    t = time.perf_counter()
    x_adv = art_autoattack(clf, x, y, args.eps, args.batch)
    art_s = time.perf_counter() - t
    inside = np.abs(x_adv - x).reshape(len(x), -1).max(1) <= args.eps + 1e-5
    art_pred = clf.predict(x_adv, batch_size=args.batch, verbose=0).argmax(1)
    art_acc = float(((art_pred == y) | ~inside).mean())  # a point outside the ball counts as no attack
    print(f"ART AutoAttack: robust accuracy {art_acc:.3f} in {art_s:.1f} s", file=sys.stderr)

    se = float(np.sqrt(max(ours_acc * (1 - ours_acc), 1e-12) / len(x)))
    result = {
        "hardware": hardware(), "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "model": args.model, "n": int(len(x)), "eps": args.eps, "norm": "linf",
        "clean_accuracy": ours["clean_accuracy"],
        "tfrobust": {"robust_accuracy": ours_acc, "seconds": round(ours_s, 1),
                     "per_stage": {k: v[f"{args.eps:g}"] for k, v in ours["attacks"].items()},
                     "attacks": "APGD-CE 100, APGD-T 9x100, FAB-T 9x100, Square 5000 (cascade on survivors)"},
        "art": {"robust_accuracy": art_acc, "seconds": round(art_s, 1), "version": metadata.version(
            "adversarial-robustness-toolbox"), "outside_ball": int((~inside).sum()),
            "attacks": "AutoAttack defaults: APGD-CE 100 x5 starts, APGD-DLR 100 x5, DeepFool, Square 5000 x5"},
        "speedup": round(art_s / ours_s, 2),
        "accuracy_difference": round(ours_acc - art_acc, 4), "binomial_se": round(se, 4),
        "note": "one run each, sequentially in one process; both times include tracing and set-up",
    }
    write_result(args.out, result, result["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
