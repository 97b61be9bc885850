"""Is the best robust epoch worth keeping? (issue #23, item 3)

Trains ``mnist_one_cpu_hour`` once with its monitor measuring PGD-10 robust accuracy at eps 0.3
every ``--every`` epochs on the first 500 of its 1,000 validation images (held out of the training
set) and ``keep_best: val_robust_accuracy_pgd_0.3``, so one run gives both candidates: the last
epoch (``model.keras``) and the best monitored epoch (``best.keras``). Both are then attacked with
APGD-CE -> APGD-T (9 targets) at eps 0.3 on the other 500 validation images, which selected
nothing; the candidate with the higher worst case there wins (ties: the last epoch, the simpler
rule). The test set is not read. Writes ``OUT/keep_best.json`` (per-epoch monitor values, both
candidates' held-out results, the decision, command, commit, hardware, wall times)::

    python training/keep_best_study.py --runs runs/keep_best --out training/results/keep_best

Rerunning the command resumes the training where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "mnist_one_cpu_hour"
KEY = "val_robust_accuracy_pgd_0.3"
MONITORED = 500  # the monitor's share of the validation images; the rest judge the two candidates


def study_config(every: int) -> dict:
    """The recipe with ``keep_best`` on PGD-10 at eps 0.3, measured every ``every`` epochs."""
    from tfrobust.training import load_config  # pylint: disable=import-outside-toplevel

    config = load_config(RECIPE)
    config["monitor"] = {**config["monitor"], "n": MONITORED, "every_n_epochs": int(every)}
    config["keep_best"] = KEY
    return config


def validation_images(config: dict):
    """The recipe's validation split: the training split's last ``validation_n`` images."""
    from tfrobust import data  # pylint: disable=import-outside-toplevel

    x, y = data.load(config["dataset"], "train")
    start = len(x) - int(config["train"]["validation_n"])
    return x[start:], y[start:]


def held_out(config: dict):
    """The validation images the monitor did not see."""
    x, y = validation_images(config)
    return x[MONITORED:], y[MONITORED:]


def best_is_its_epoch(config: dict, path: Path, history: dict, best_epoch: int) -> dict:
    """``best.keras``'s clean accuracy on the monitor's images against the monitor's record of the
    best epoch: a deterministic check that the file holds that epoch (the robust value is not one:
    the monitor's random starts draw anew)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel

    from tfrobust.models import unwrap  # pylint: disable=import-outside-toplevel

    x, y = validation_images(config)
    x, y = x[:MONITORED], y[:MONITORED]
    logits = unwrap(keras.models.load_model(path)).predict(x, batch_size=250, verbose=0)
    measured = float(np.mean(np.argmax(logits, -1) == y))
    recorded = float(history["val_clean_accuracy"][best_epoch - 1])
    if abs(measured - recorded) > 0.5 / MONITORED:
        raise SystemExit(f"best.keras scores {measured} clean on the monitor's images, but epoch {best_epoch} "
                         f"logged {recorded}: it does not hold the best epoch")
    return {"clean_accuracy_on_monitor_images": measured, "logged_at_best_epoch": recorded}


def results_sentence(report: dict) -> str:
    """docs/results.md's summary of ``keep_best.json`` (tests check that the page quotes it)."""
    last, best = (report["candidates"][k] for k in ("last_epoch", "best_epoch"))

    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    return (f"the monitored robust accuracy peaked at epoch {report['best_monitored_epoch']} of "
            f"{report['epochs']} ({pct(report['best_monitored_value'])}); on the other 500 validation images "
            f"under APGD-CE → APGD-T at eps 0.3 the last epoch scores {pct(last['worst_case']['0.3'])} "
            f"(clean {pct(last['clean_accuracy'])}) and the best epoch {pct(best['worst_case']['0.3'])} "
            f"(clean {pct(best['clean_accuracy'])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/keep_best", help="training folder (resumable)")
    parser.add_argument("--out", default="training/results/keep_best")
    parser.add_argument("--every", type=int, default=2, help="monitor period in epochs (2: the last of 54 is measured)")
    parser.add_argument("--epochs", type=int, default=None, help="pilot: fewer epochs than the recipe's")
    parser.add_argument("--n-train", type=int, default=None, help="pilot: the first N training images")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error(f"--every={args.every} must be >= 1")
    import keras  # pylint: disable=import-outside-toplevel
    import yaml  # pylint: disable=import-outside-toplevel

    from tfrobust.evaluation import evaluate_model  # pylint: disable=import-outside-toplevel
    from tfrobust.models import unwrap  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import atomic_write_text, hardware, source_commit  # pylint: disable=import-outside-toplevel

    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    config = study_config(args.every)
    config_path = runs / "study_config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    start = time.time()
    pilot = (["--epochs", str(args.epochs)] if args.epochs else []) + (
        ["--n-train", str(args.n_train)] if args.n_train else [])
    subprocess.run([sys.executable, "-m", "tfrobust", "train", "--config", str(config_path), "--out", str(runs)]
                   + pilot, check=True)
    train_wall = time.time() - start
    history = json.loads((runs / "history.json").read_text())
    monitored = [(i + 1, v) for i, v in enumerate(history[KEY]) if v == v]
    best_epoch, best_value = max(monitored, key=lambda ev: ev[1])  # first maximum, as ModelCheckpoint keeps
    check = best_is_its_epoch(config, runs / "best.keras", history, best_epoch)
    x, y = held_out(config)
    candidates = {}
    for name, path in (("last_epoch", runs / "model.keras"), ("best_epoch", runs / "best.keras")):
        begin = time.time()
        result = evaluate_model(unwrap(keras.models.load_model(path)), x, y, attacks=["apgd-ce", "apgd-t"],
                                eps="0.3", cascade=True, sanity=False)
        candidates[name] = {"path": str(path), "clean_accuracy": result["clean_accuracy"],
                            "worst_case": result["worst_case"], "attacks": result["attacks"],
                            "settings": result["settings"], "seconds": round(time.time() - begin, 1)}
    last, best = (candidates[k]["worst_case"]["0.3"] for k in ("last_epoch", "best_epoch"))
    report = {
        "question": "does keep_best (the best monitored epoch) beat the last epoch on images that selected nothing?",
        "recipe": RECIPE, "keep_best": KEY, "monitor_every_n_epochs": args.every,
        "monitor": f"PGD-10 at eps 0.3 on the first {MONITORED} of the {config['train']['validation_n']} "
                   "validation images (the training split's last ones)",
        "judged_on": f"the other {len(x)} validation images, APGD-CE -> APGD-T (9 targets) at eps 0.3, cascade",
        "monitor_by_epoch": {str(e): v for e, v in monitored},
        "best_monitored_epoch": best_epoch, "best_monitored_value": best_value,
        "epochs": len(history["loss"]), "pilot": bool(pilot), "best_keras_check": check,
        "candidates": candidates,
        "winner": "best_epoch" if best > last else "last_epoch",
        "held_out_gain": round(best - last, 4),
        "train_wall_seconds_this_call": round(train_wall, 1),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": source_commit(), "hardware": hardware(),
    }
    atomic_write_text(out / "keep_best.json", json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("best_monitored_epoch", "winner", "held_out_gain")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
