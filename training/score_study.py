"""Is the served robustness score worth anything? (issue #13).

Phase 1 (``--train``) trains the study's three MNIST models, half width, on the
first 55,000 training images (the last 5,000 stay held out: the calibration
split of ``estimated_radius``), one thread each so a second core stays free:

* ``natural``  -- cross-entropy, 5 epochs;
* ``jacobian`` -- the ``mnist_jacobian`` recipe (CE + dual-norm decision Jacobian, c = 0.01), 10 epochs;
* ``pgd_at``   -- PGD-10 adversarial training at eps 0.3 (step 2.5 eps / 10, random start,
  eps warm-up over the first epoch), 5 epochs.

A model whose ``model.keras`` exists is skipped, and training resumes from its checkpoint
after a crash. Phase 2 (``--analyse``) compares, per test example, the served statistics with
the distance a minimal-norm attack finds; see :func:`analyse`.

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

N_VAL = 5000
WIDTH = 0.5

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/score_study", help="where the models are trained")
    parser.add_argument("--out", default="training/results/score_study")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0: TF's default)")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    for n in names:
        if n not in MODELS:
            parser.error(f"model {n!r} is unknown; choose from {list(MODELS)}")
    if args.threads:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.train:
        train_models(Path(args.runs), names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
