"""Sweep of the decision-Jacobian recipe (issue #10), chosen on validation data only.

Each run trains CE + DecisionJacobian (+ DecisionCurvature) on MNIST's first
55,000 training images and evaluates it with the paper's attacks (FGSM, BIM and
C&W: 10 iterations of step 0.1, eps 0.1/0.2/0.3) on the 5,000 held-out training
images: the test set is never looked at. Every run writes its own JSON
(command, commit, hardware, wall times) as soon as it finishes, so a stopped
sweep loses at most the run in flight, and a rerun skips finished runs.

A run is ``key=value`` pairs joined by commas::

    python training/jacobian_study.py --out training/results/jacobian_study \\
        --run c=0.01,k=0.3,h=0.1,width=0.5,epochs=10 --run c=0.01,width=0.5,epochs=10
    python training/jacobian_study.py --out training/results/jacobian_study --plot

Keys: ``norm`` (penalty norm, default the dual of L∞: l1), ``c`` (Jacobian
coefficient), ``k`` (curvature coefficient; 0 = no curvature term), ``h``
(curvature step), ``width``, ``epochs``, ``n_train`` (first N of the 55,000),
``lr``, ``seed``, ``warmup`` (penalty warm-up in epochs: both coefficients ramp up
linearly, ``train.penalty_warmup_epochs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from tfrobust.paper import ATTACKS as PAPER_ATTACKS
from tfrobust.paper import EPS, PAPER_TABLE1

HERE = Path(__file__).resolve().parent
DEFAULTS = {"norm": "l1", "c": 0.01, "k": 0.0, "h": 0.1, "width": 0.5, "epochs": 10, "n_train": 0,
            "lr": 1e-3, "seed": 0, "warmup": 0.0}
N_VAL = 5000


def parse_run(text: str) -> dict:
    """``"c=0.01,k=0.3"`` -> the full settings dict (defaults filled in).

    Raises:
        argparse.ArgumentTypeError: naming an unknown key or a bad value.
    """
    from tfrobust.utils import parse_settings

    try:
        return parse_settings(text, DEFAULTS, text_keys=("norm",))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run_name(run: dict) -> str:
    """A file name that spells the settings, e.g. ``l1_c0.01_k0.3_h0.1_w0.5_e10``."""
    name = f"{run['norm']}_c{run['c']:g}"
    if run["k"]:
        name += f"_k{run['k']:g}_h{run['h']:g}"
    name += f"_w{run['width']:g}_e{run['epochs']}"
    for key in ("n_train", "lr", "seed", "warmup"):
        if run.get(key, DEFAULTS[key]) != DEFAULTS[key]:
            name += f"_{key}{run[key]:g}"
    return name


def recipe(run: dict) -> dict:
    """The training recipe of one run (a dict for :func:`tfrobust.training.train`)."""
    objective = [{"type": "cross_entropy"}, {"type": "decision_jacobian", "c": run["c"], "norm": run["norm"]}]
    if run["k"]:
        objective.append({"type": "decision_curvature", "c": run["k"], "h": run["h"]})
    return {"name": run_name(run), "dataset": "mnist", "model": {"name": "mnist_cnn", "width": run["width"]},
            "objective": objective,
            "train": {"epochs": run["epochs"], "batch_size": 128, "optimizer": "adam",
                      "learning_rate": run["lr"], "validation_n": N_VAL, "n_train": run["n_train"] or None,
                      "seed": run["seed"], "penalty_warmup_epochs": run.get("warmup", 0.0)}}


def cells_vs_paper(result: dict) -> int:
    """How many of the 9 Table-1 cells reach the paper's decision-Jacobian row."""
    paper = PAPER_TABLE1["decision_jacobian"]
    return sum(result["attacks"][a][e] >= paper[a][e] for a in PAPER_ATTACKS for e in EPS)


def run_one(run: dict, out: Path, n_eval: int, command: str) -> dict:
    """Trains and evaluates one run; writes and returns its JSON."""
    from tfrobust import data, evaluation, training, utils

    name = run_name(run)
    start = time.time()
    model = training.train(recipe(run), out / "runs" / name, verbose=2)
    wall = time.time() - start
    train_seconds = training.train_seconds(out / "runs" / name) or wall  # summed over restarts
    x, y = data.load("mnist", "train")
    x_val, y_val = x[len(x) - N_VAL:][:n_eval], y[len(y) - N_VAL:][:n_eval]
    result = evaluation.evaluate_model(model, x_val, y_val, attacks=PAPER_ATTACKS, eps=",".join(EPS),
                                       budget=evaluation.Budget(steps=10, step_size=0.1), sanity=False,
                                       progress=False,
                                       meta={"split": f"train[-{N_VAL}:][:{n_eval}] (validation)"})
    row = {"run": name, "settings": run, "recipe": recipe(run), "command": command, "commit": utils.source_commit(HERE),
           "hardware": utils.hardware(), "train_seconds": round(train_seconds, 1),
           "eval_seconds": round(time.time() - start - wall, 1),
           "history": json.loads((out / "runs" / name / "history.json").read_text()),
           "validation": result, "cells_vs_paper_on_validation": cells_vs_paper(result)}
    utils.atomic_write_text(out / f"{name}.json", json.dumps(row, indent=1) + "\n")
    return row


def load_rows(out: Path) -> list[dict]:
    """Every finished run's JSON in ``out``."""
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"]


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per run, validation accuracy %."""
    head = ("| run | clean | " + " | ".join(f"{a.upper()} {e}" for a in PAPER_ATTACKS for e in EPS)
            + " | cells ≥ paper | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: r["run"]):
        v = r["validation"]
        lines.append(f"| {r['run']} | {100 * v['clean_accuracy']:.1f} | "
                     + " | ".join(f"{100 * v['attacks'][a][e]:.1f}" for a in PAPER_ATTACKS for e in EPS)
                     + f" | {r['cells_vs_paper_on_validation']} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _short(run: dict) -> str:
    s = run["settings"]
    label = f"c{s['c']:g}" + (f" k{s['k']:g} h{s['h']:g}" if s["k"] else "") + f" e{s['epochs']}"
    label += f" wu{s['warmup']:g}" if s.get("warmup") else ""
    label += f" w{s['width']:g}" if s["width"] != DEFAULTS["width"] else ""
    return label + (" 20k" if s["n_train"] else "")


def plot_frontier(rows: list[dict], path: Path) -> None:
    """Clean vs worst case over the paper's attacks at eps 0.2 and 0.3, with the paper's point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paper = PAPER_TABLE1["decision_jacobian"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, eps in zip(axes, ("0.2", "0.3")):
        labelled = 0
        for r in rows:
            v = r["validation"]
            curv, full = bool(r["settings"]["k"]), not r["settings"]["n_train"]
            ax.scatter(v["worst_case"][eps], v["clean_accuracy"], marker="D" if r["settings"]["width"] >= 1 else "o",
                       color="tab:red" if curv else "tab:blue", s=60 if full else 22,
                       edgecolors="black" if full else "none", zorder=3)
            if full or v["clean_accuracy"] < 0.965:
                # Alternate the label above and below its point: runs often land close together.
                ax.annotate(_short(r), (v["worst_case"][eps], v["clean_accuracy"]), fontsize=7,
                            xytext=(5, 4 if labelled % 2 else -9), textcoords="offset points")
                labelled += 1
        ax.scatter(min(paper[a][eps] for a in PAPER_ATTACKS), paper["clean"], marker="*", s=220,
                   color="black", zorder=4)
        ax.set_xlabel(f"worst case over FGSM/BIM/C&W at eps {eps} (validation)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("clean accuracy (validation)")
    handles = [plt.Line2D([], [], marker="*", color="black", ls="", ms=12),
               plt.Line2D([], [], marker="o", color="tab:blue", ls=""),
               plt.Line2D([], [], marker="o", color="tab:red", ls=""),
               plt.Line2D([], [], marker="D", color="gray", ls=""),
               plt.Line2D([], [], marker="o", color="white", mec="black", ls="", ms=8)]
    fig.legend(handles, ["paper (test set, min over its attacks)", "Jacobian only", "Jacobian + curvature",
                         "diamond: full width (else half)", "outlined: all 55k images (else 20k pilots)"],
               loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("Decision-Jacobian sweep on 2,000 held-out training images: the clean/robust trade-off")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="training/results/jacobian_study")
    parser.add_argument("--run", type=parse_run, action="append", default=[], help="one run, key=value,...")
    parser.add_argument("--n-eval", type=int, default=2000, help="validation images for the attacks")
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0: TF's default)")
    parser.add_argument("--plot", action="store_true", help="(re)write summary.md and frontier.png")
    args = parser.parse_args(argv)
    if not 1 <= args.n_eval <= N_VAL:
        parser.error(f"--n-eval={args.n_eval} must be in [1, {N_VAL}]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        from tfrobust.utils import set_threads
        set_threads(args.threads)
    for run in args.run:
        name = run_name(run)
        if (out / f"{name}.json").exists():
            print(f"{name}: done already ({out / f'{name}.json'})", flush=True)
            continue
        command = (f"python training/jacobian_study.py --out {shlex.quote(str(args.out))} --n-eval {args.n_eval} "
                   f"--run {','.join(f'{k}={v}' for k, v in run.items())}")
        row = run_one(run, out, args.n_eval, command)
        print(f"{name}: {row['cells_vs_paper_on_validation']}/9 cells, train {row['train_seconds']:.0f} s",
              flush=True)
    rows = load_rows(out)
    if rows and (args.plot or args.run):
        (out / "summary.md").write_text(summary_table(rows))
        plot_frontier(rows, out / "frontier.png")
        print(summary_table(rows))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
