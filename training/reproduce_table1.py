"""Reproduce Table 1 of the decision-surface paper (MNIST) with our recipes.

Trains each recipe, evaluates it with the paper's attacks (FGSM, BIM and C&W:
10 iterations of step 0.1, eps 0.1/0.2/0.3) on the test set, and with the
strong cascade (APGD-CE -> APGD-DLR -> Square) on the first ``--n-strong``
test images, then writes ``table1.json`` (issue #6 schema), ``table1.md`` and
``table1.png`` beside the paper's numbers.

Full run (a GPU job: on 2 CPU cores PGD-40 AT took 6-8 min per epoch at half width)::

    python training/reproduce_table1.py --out training/results

The committed CPU run (half width, fewer epochs for the two PGD recipes)::

    python training/reproduce_table1.py --out training/results --width 0.5 --square-queries 1000 \\
        --recipe-epochs pgd_at=3,best_combination=6

Quick CPU smoke run::

    python training/reproduce_table1.py --out /tmp/t1 --epochs 1 --n-train 2000 --n-test 200 \\
        --n-strong 50 --width 0.25 --recipes natural,decision_jacobian
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from tfrobust import data, evaluation, training, utils
from tfrobust.paper import ATTACKS as PAPER_ATTACKS
from tfrobust.paper import EPS, PAPER_TABLE1

RECIPES = {
    "natural": "mnist_natural",
    "adv_train": "mnist_adv_train",
    "input_gradient": "mnist_input_gradient",
    "decision_jacobian": "mnist_jacobian",
    "decision_jacobian_curvature": "mnist_jacobian_curvature",
    "pgd_at": "mnist_pgd_at",
    "emr": "mnist_emr",
    "best_combination": "mnist_pgd7_emr",
}
PAPER_ROW = {"decision_jacobian_curvature": "decision_jacobian"}
"""Rows without a paper row of their own, and the paper row they are compared with."""


def run_one(key: str, args: argparse.Namespace, x_test, y_test) -> dict:
    """Trains one recipe and evaluates it with the paper's attacks and the cascade."""
    config = training.load_config(RECIPES[key])
    if args.epochs:
        config["train"]["epochs"] = args.epochs
    if key in args.recipe_epochs:
        config["train"]["epochs"] = args.recipe_epochs[key]
    if args.n_train:
        config["train"]["n_train"] = args.n_train
    if args.width:
        config["model"]["width"] = args.width
    config.pop("monitor", None)
    out = Path(args.out) / "table1_runs" / key
    start = time.time()
    model = training.train(config, out, verbose=2)
    wall = time.time() - start
    # The epochs' own times, summed over restarts (a resumed run's wall time here would miss them).
    train_seconds = training.train_seconds(out) or wall
    meta = {"model": str(out / "model.keras"), "dataset": "mnist", "split": "test"}
    result = evaluation.evaluate_model(model, x_test, y_test, attacks=PAPER_ATTACKS, eps=",".join(EPS),
                                       budget=evaluation.Budget(steps=10, step_size=0.1), meta=meta)
    m = args.n_strong
    result["strong"] = evaluation.evaluate_model(
        model, x_test[:m], y_test[:m], attacks=["apgd-ce", "apgd-dlr", "square"], eps=",".join(EPS),
        cascade=True, budget=evaluation.Budget(apgd_steps=args.apgd_steps, square_queries=args.square_queries),
        meta=meta)
    result["train_seconds"] = round(train_seconds, 1)
    result["eval_seconds"] = round(time.time() - start - wall, 1)
    result["recipe"] = RECIPES[key]
    result["commit"] = utils.source_commit(Path(__file__))
    result["hardware"] = utils.hardware()
    result["train_settings"] = config["train"]
    return result


def recipe_epochs(text: str) -> dict[str, int]:
    """Parses ``key=epochs,...`` for ``--recipe-epochs``."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in RECIPES or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r} must be RECIPE=EPOCHS with RECIPE in {','.join(RECIPES)} and EPOCHS >= 1")
        out[key] = int(value)
    return out


def earlier_rows(path: Path, settings: dict, recipe_epochs: dict[str, int]) -> dict:
    """Rows of an earlier run with the same settings, so a stopped run goes on where it stopped.

    Training itself resumes from each recipe's checkpoints; this keeps recipes that were
    already trained and evaluated, and lets a later call add recipes to the same table.
    Different settings start afresh.
    """
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != settings:
        return {}
    return {key: row for key, row in earlier.get("models", {}).items()
            if key not in recipe_epochs or row["train_settings"]["epochs"] == recipe_epochs[key]}


def markdown(table: dict) -> str:
    """Our rows beside the paper's (accuracy %), with the cascade's worst case."""
    head = ("| model | clean | " + " | ".join(f"{a.upper()} {e}" for a in PAPER_ATTACKS for e in EPS)
            + " | cascade worst " + " | ".join(EPS) + " | sanity |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, res in table["models"].items():
        if key in PAPER_TABLE1:  # each paper row once, above our first row that it compares with
            p = PAPER_TABLE1[key]
            lines.append(f"| {key} (paper) | {100 * p['clean']:.1f} | "
                         + " | ".join(f"{100 * p[a][e]:.1f}" for a in PAPER_ATTACKS for e in EPS)
                         + " | " + " | ".join("" for _ in EPS) + " | |")
        strong = res["strong"]
        lines.append(f"| {key} (ours) | {100 * res['clean_accuracy']:.1f} | "
                     + " | ".join(f"{100 * res['attacks'][a][e]:.1f}" for a in PAPER_ATTACKS for e in EPS)
                     + " | " + " | ".join(f"{100 * strong['worst_case'][e]:.1f}" for e in EPS)
                     + f" | {'passed' if strong['sanity']['passed'] else 'FAILED'} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    """One panel per paper attack (ours solid, the paper's dashed) and one for the cascade's worst case."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [0.0] + [float(e) for e in EPS]
    panels = [(a, a.upper().replace("CW", "C&W")) for a in PAPER_ATTACKS] + [("strong", "strong cascade (worst case)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.8), sharey=True)
    for i, (key, res) in enumerate(table["models"].items()):
        color = plt.cm.tab10(i)
        paper = PAPER_TABLE1.get(key)
        for ax, (attack, _) in zip(axes, panels):
            ours = (res["strong"]["worst_case"] if attack == "strong" else res["attacks"][attack])
            ax.plot(eps, [res["clean_accuracy"]] + [ours[e] for e in EPS], "-o", ms=3, color=color,
                    label=key)
            if paper is not None and attack != "strong":
                ax.plot(eps, [paper["clean"]] + [paper[attack][e] for e in EPS], "--", color=color, alpha=0.55)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("eps (L∞, pixels in [0,1])")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], ls="--", color="gray"))
    labels.append("the paper's row (dashed)")
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("MNIST Table 1: ours (solid) vs the paper (dashed); the cascade on 1,000 test images")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="training/results")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated keys of RECIPES")
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    parser.add_argument("--recipe-epochs", type=recipe_epochs, default={},
                        help="per-recipe epochs, e.g. pgd_at=4 (overrides --epochs for those recipes)")
    parser.add_argument("--n-train", type=int, default=None, help="first N training images")
    parser.add_argument("--width", type=float, default=None, help="override the CNN width multiplier")
    parser.add_argument("--n-test", type=int, default=10000, help="test images for the paper's attacks")
    parser.add_argument("--n-strong", type=int, default=1000, help="test images for the cascade")
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--square-queries", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0: TF's default); not a setting")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.recipes.split(",") if k.strip()]
    for key in keys:
        if key not in RECIPES:
            parser.error(f"recipe {key!r} is unknown; choose from {','.join(RECIPES)}")
    if args.n_strong > args.n_test:
        parser.error(f"--n-strong={args.n_strong} must not exceed --n-test={args.n_test}")
    if args.threads < 0:
        parser.error(f"--threads={args.threads} must be >= 0")
    utils.set_threads(args.threads)
    x_test, y_test = data.load("mnist", "test", args.n_test)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "recipes", "recipe_epochs", "threads")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = earlier_rows(out / "table1.json", settings, args.recipe_epochs)
    keys = [k for k in RECIPES if k in rows or k in keys]
    flags = [a for a in (argv if argv is not None else sys.argv[1:])]
    for flag in ("--recipe-epochs", "--recipes"):  # rebuilt below for every row in the table
        if flag in flags:
            i = flags.index(flag)
            del flags[i:i + 2]
    flags = [a for a in flags if not a.startswith(("--recipes=", "--recipe-epochs="))]
    epochs_of = {k: v["train_settings"]["epochs"] for k, v in rows.items()} | args.recipe_epochs
    default = args.epochs or None
    special = {k: e for k, e in epochs_of.items()
               if k in keys and e != (default or training.load_config(RECIPES[k])["train"]["epochs"])}
    if special:
        flags += ["--recipe-epochs", ",".join(f"{k}={e}" for k, e in special.items())]
    flags += ["--recipes", ",".join(keys)]
    command = "python training/reproduce_table1.py " + " ".join(shlex.quote(a) for a in flags)
    table = {"hardware": utils.hardware(),
             "command": command, "settings": settings,
             "models": {k: rows[k] for k in keys if k in rows}}  # every finished row, at every write
    for key in keys:
        if key in rows:
            print(f"{key}: kept from {out / 'table1.json'} (same settings)", flush=True)
            continue
        table["models"][key] = run_one(key, args, x_test, y_test)
        table["models"] = {k: table["models"][k] for k in keys if k in table["models"]}
        utils.atomic_write_text(out / "table1.json", json.dumps(table, indent=1) + "\n")
    utils.atomic_write_text(out / "table1.json", json.dumps(table, indent=1) + "\n")
    utils.atomic_write_text(out / "table1.md", markdown(table))
    plot(table, out / "table1.png")
    print(markdown(table))
    print(f"reproduce with: {command}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
