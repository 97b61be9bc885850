"""Pilots for the most robust MNIST model per CPU-hour (issue #14), chosen on validation data only.

Each run trains one candidate objective on MNIST's first 59,000 training images
(``train.validation_n`` = 1,000 held out, as in the shipped ``mnist_one_cpu_hour``
recipe) and attacks the 1,000 held-out images at eps 0.3 with the APGD-CE →
APGD-T cascade (100 steps each, ``--targets`` target classes): the test set is
never looked at. Candidates are compared at equal training cost, so each run's
``epochs`` is chosen to fill the same wall-time budget (the JSON records the time
it took). Every run writes its own JSON (command, commit, hardware, wall times)
as soon as it finishes, so a stopped study loses at most the run in flight; a
rerun skips finished runs.

A run is ``key=value`` pairs joined by commas::

    python training/one_hour_study.py --out training/results/one_hour_study \\
        --run method=pgd,k=7,emr=0.0234375,epochs=4 --run method=trades,k=5,beta=6,epochs=4
    python training/one_hour_study.py --out training/results/one_hour_study \\
        --reference runs/one_cpu_hour/model.keras     # a trained model, same validation attack
    python training/one_hour_study.py --out training/results/one_hour_study --plot

Keys: ``method`` (``pgd``: PGD-k adversarial training, Madry et al.; ``trades``:
TRADES with its KL attack), ``k`` (attack steps), ``step`` (attack step; 0 =
``2.5 * eps / k``), ``emr`` (EMR's per-example lambda at the attack point, T = 40;
0 = no EMR), ``beta`` (TRADES' KL weight), ``width`` (of the paper CNN),
``epochs``, ``lr`` (Adam), ``schedule`` (``cosine`` or ``constant``), ``seed``,
``n_train`` (first N of the 59,000; 0 = all).
Every run ramps eps up over its first epoch (``train.eps_warmup_epochs`` = 1).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EPS = 0.3
N_VAL = 1000
DEFAULTS = {"method": "pgd", "k": 7, "step": 0.0, "emr": 0.0234375, "beta": 6.0, "width": 1.0, "epochs": 4,
            "lr": 1e-3, "schedule": "cosine", "seed": 0, "n_train": 0}
METHODS = ("pgd", "trades")
TEXT_KEYS = ("method", "schedule")


def parse_run(text: str) -> dict:
    """``"method=trades,k=5"`` -> the full settings dict (defaults filled in).

    Raises:
        argparse.ArgumentTypeError: naming an unknown key or a bad value.
    """
    from tfrobust.utils import parse_settings

    try:
        run = parse_settings(text, DEFAULTS, text_keys=TEXT_KEYS)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if run["method"] not in METHODS:
        raise argparse.ArgumentTypeError(f"run method={run['method']!r} is unknown; choose from {METHODS}")
    if run["k"] < 1 or run["epochs"] < 1:
        raise argparse.ArgumentTypeError(f"run k={run['k']} and epochs={run['epochs']} must be >= 1")
    return run


def run_name(run: dict) -> str:
    """A file name that spells the settings, e.g. ``pgd7_emr0.0234375_w1_e4``."""
    name = f"{run['method']}{run['k']}"
    if run["step"]:
        name += f"_s{run['step']:g}"
    if run["method"] == "trades":
        name += f"_b{run['beta']:g}"
    name += f"_emr{run['emr']:g}" if run["emr"] else "_noemr"
    name += f"_w{run['width']:g}_e{run['epochs']}"
    for key in ("lr", "schedule", "seed", "n_train"):
        if run[key] != DEFAULTS[key]:
            name += f"_{key}{run[key]}"
    return name


def recipe(run: dict) -> dict:
    """The training recipe of one run (a dict for :func:`tfrobust.training.train`)."""
    step = run["step"] or 2.5 * EPS / run["k"]
    if run["method"] == "pgd":
        attack = {"name": "pgd", "eps": EPS, "steps": run["k"], "step_size": step, "random_start": True}
        objective = [{"type": "adversarial_training", "mix": 1.0, "attack": attack}]
    else:
        attack = {"name": "kl_pgd", "eps": EPS, "steps": run["k"], "step_size": step, "init_std": 0.001}
        objective = [{"type": "trades", "beta": run["beta"], "attack": attack}]
    if run["emr"]:
        objective.append({"type": "effective_margin", "lam": run["emr"], "temperature": 40.0, "at": attack})
    return {"name": run_name(run), "dataset": "mnist", "model": {"name": "mnist_cnn", "width": run["width"]},
            "objective": objective,
            "train": {"epochs": run["epochs"], "batch_size": 128, "optimizer": "adam", "learning_rate": run["lr"],
                      "validation_n": N_VAL, "n_train": run["n_train"] or None, "seed": run["seed"],
                      "eps_warmup_epochs": 1, "lr_schedule": run["schedule"]}}


def validate(model, targets: int, n_eval: int = N_VAL) -> dict:
    """APGD-CE → APGD-T at eps 0.3 on the first ``n_eval`` of the 1,000 held-out training images (no sanity block)."""
    from tfrobust import data, evaluation

    x, y = data.load("mnist", "train")
    x_val, y_val = x[len(x) - N_VAL:][:n_eval], y[len(y) - N_VAL:][:n_eval]
    return evaluation.evaluate_model(model, x_val, y_val, attacks=["apgd-ce", "apgd-t"],
                                     eps=str(EPS), cascade=True, budget=evaluation.Budget(apgd_targets=targets),
                                     sanity=False, progress=False,
                                     meta={"split": f"train[-{N_VAL}:][:{n_eval}] (validation)"})


def run_one(run: dict, out: Path, targets: int, n_eval: int, command: str) -> dict:
    """Trains and validates one run; writes and returns its JSON."""
    from tfrobust import training, utils

    name, spec = run_name(run), recipe(run)
    start = time.time()
    model = training.train(spec, out / "runs" / name, verbose=2)
    wall = time.time() - start
    train_seconds = training.train_seconds(out / "runs" / name) or wall  # summed over restarts
    result = validate(model, targets, n_eval)
    row = {"run": name, "settings": run, "recipe": spec, "command": command,
           "commit": utils.source_commit(HERE), "hardware": utils.hardware(), "train_seconds": round(train_seconds, 1),
           "eval_seconds": round(time.time() - start - wall, 1),
           "history": json.loads((out / "runs" / name / "history.json").read_text()), "validation": result}
    utils.atomic_write_text(out / f"{name}.json", json.dumps(row, indent=1) + "\n")
    return row


def reference_one(path: Path, out: Path, targets: int, n_eval: int, command: str) -> dict:
    """Validates an already trained model the same way; writes ``reference_<its folder's name>.json``."""
    import keras

    from tfrobust import utils

    start = time.time()
    result = validate(keras.models.load_model(path), targets, n_eval)
    name = f"reference_{path.parent.name}"
    row = {"run": name, "model": str(path), "command": command, "commit": utils.source_commit(HERE),
           "hardware": utils.hardware(), "eval_seconds": round(time.time() - start, 1), "validation": result}
    utils.atomic_write_text(out / f"{name}.json", json.dumps(row, indent=1) + "\n")
    return row


def load_rows(out: Path) -> list[dict]:
    """Every finished run's JSON in ``out``."""
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per run, validation accuracy %."""
    lines = ["| run | clean | APGD-CE 0.3 | + APGD-T 0.3 (worst case) | train s | epochs |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["validation"]["worst_case"][str(EPS)]):
        v = r["validation"]
        train = f"{r['train_seconds']:.0f}" if "train_seconds" in r else "(trained elsewhere)"
        epochs = r["settings"]["epochs"] if "settings" in r else ""
        lines.append(f"| {r['run']} | {100 * v['clean_accuracy']:.1f} | {100 * v['attacks']['apgd-ce'][str(EPS)]:.1f} "
                     f"| {100 * v['worst_case'][str(EPS)]:.1f} | {train} | {epochs} |")
    return "\n".join(lines) + "\n"


def plot_budget(rows: list[dict], path: Path) -> None:
    """Validation worst case at eps 0.3 against training seconds, one point per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(r for r in rows if "train_seconds" in r):
        robust = 100 * r["validation"]["worst_case"][str(EPS)]
        ax.scatter(r["train_seconds"], robust, color="tab:red" if r["settings"]["method"] == "trades" else "tab:blue",
                   marker="D" if r["settings"]["emr"] else "o", s=50, zorder=3)
        ax.annotate(r["run"], (r["train_seconds"], robust), fontsize=7, xytext=(5, 4 if i % 2 else -9),
                    textcoords="offset points")
    ax.margins(x=0.25, y=0.1)  # room for the labels
    ax.set_xlabel("training wall seconds (one core per run)")
    ax.set_ylabel("APGD-CE → APGD-T accuracy at eps 0.3 (%, validation)")
    handles = [plt.Line2D([], [], marker=m, color=c, ls="") for m, c in
               (("o", "tab:blue"), ("o", "tab:red"), ("D", "gray"))]
    ax.legend(handles, ["PGD-k AT", "TRADES", "diamond: + EMR"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("One-CPU-hour candidates at equal pilot budget, on 1,000 held-out training images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="training/results/one_hour_study")
    parser.add_argument("--run", type=parse_run, action="append", default=[], help="one run, key=value,...")
    parser.add_argument("--reference", type=Path, action="append", default=[],
                        help="a trained .keras model to validate the same way")
    parser.add_argument("--targets", type=int, default=3, help="APGD-T target classes (AutoAttack: 9)")
    parser.add_argument("--n-eval", type=int, default=N_VAL, help="held-out images to attack")
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0: TF's default)")
    parser.add_argument("--plot", action="store_true", help="(re)write summary.md and budget.png")
    args = parser.parse_args(argv)
    if not 1 <= args.targets <= 9:
        parser.error(f"--targets={args.targets} must be in [1, 9]")
    if not 1 <= args.n_eval <= N_VAL:
        parser.error(f"--n-eval={args.n_eval} must be in [1, {N_VAL}]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        from tfrobust.utils import set_threads
        set_threads(args.threads)
    base = f"python training/one_hour_study.py --out {shlex.quote(str(args.out))} --targets {args.targets}" + (
        f" --n-eval {args.n_eval}" if args.n_eval != N_VAL else "")
    for path in args.reference:
        row = reference_one(path, out, args.targets, args.n_eval, f"{base} --reference {shlex.quote(str(path))}")
        print(f"{row['run']}: {row['validation']['worst_case'][str(EPS)]:.3f}", flush=True)
    for run in args.run:
        name = run_name(run)
        if (out / f"{name}.json").exists():
            print(f"{name}: done already ({out / f'{name}.json'})", flush=True)
            continue
        command = f"{base} --run {','.join(f'{k}={v}' for k, v in run.items())}"
        row = run_one(run, out, args.targets, args.n_eval, command)
        print(f"{name}: {row['validation']['worst_case'][str(EPS)]:.3f} at eps {EPS}, "
              f"train {row['train_seconds']:.0f} s", flush=True)
    rows = load_rows(out)
    if rows and (args.plot or args.run or args.reference):
        (out / "summary.md").write_text(summary_table(rows))
        plot_budget(rows, out / "budget.png")
        print(summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
