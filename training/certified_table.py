"""Certified MNIST models (issue #20): verified accuracy by IBP and CROWN-IBP, and the standard AutoAttack.

For each trained run folder (``NAME=RUN_DIR``; the recipe's model in ``RUN_DIR/model.keras``):
verified accuracy on the whole test split at every ``--eps`` by both bounds (the tighter of the
two is ``verified``), the same on the held-out last 5,000 training images (``validation``: what
the recipes were compared on), and the standard AutoAttack (APGD-CE, APGD-T 9, FAB-T 9, Square
5,000) at ``--attack-eps`` on the first ``--n-autoattack`` test images with the sanity checks
and the check that no verified example was broken. Rows are written one at a time to
``OUT/table.json`` (a row already there is skipped), with training seconds from the run's
checkpoint state::

    python training/certified_table.py --out training/results/certified \\
        mnist_ibp=runs/mnist_ibp mnist_crown_ibp=runs/mnist_crown_ibp
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

EPS = "0.1,0.2,0.3,0.4"


def verified_table(clf, x, y, eps_list, batch_size: int) -> dict:
    """Verified accuracy per method and eps, and ``verified``: per example the better of the two."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tfrobust import evaluation  # pylint: disable=import-outside-toplevel
    per = {m: evaluation.verified_examples(clf, x, y, eps_list, method=m, batch_size=batch_size)
           for m in ("ibp", "crown-ibp")}
    table = {m: {k: float(v.mean()) for k, v in per[m].items()} for m in per}
    table["verified"] = {k: float(np.mean(per["ibp"][k] | per["crown-ibp"][k])) for k, _ in eps_list}
    return table


def evaluate_run(name: str, run: Path, args) -> dict:
    """One row of the table."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tfrobust import data, evaluation, training  # pylint: disable=import-outside-toplevel
    from tfrobust.models import load_model, unwrap  # pylint: disable=import-outside-toplevel
    from tfrobust.utils import hardware, source_commit  # pylint: disable=import-outside-toplevel

    start = time.time()
    clf = unwrap(load_model(run / "model.keras"))
    eps_list = evaluation.parse_eps_list(args.eps)
    x, y = data.load("mnist", "test")
    x, y = x.astype(np.float32), y.astype(np.int64)
    test = verified_table(clf, x, y, eps_list, args.batch_size)
    xv, yv = data.load("mnist", "train")
    xv, yv = xv[-5000:].astype(np.float32), yv[-5000:].astype(np.int64)
    validation = verified_table(clf, xv, yv, eps_list, args.batch_size)
    clean = float(np.mean(np.argmax(clf.predict(x, batch_size=1000, verbose=0), -1) == y))
    aa = evaluation.evaluate_model(clf, x[:args.n_autoattack], y[:args.n_autoattack], attacks=["autoattack"],
                                   eps=args.attack_eps, certify="crown-ibp", progress=True)
    state = run / "checkpoints" / "state.json"
    config = json.loads(state.read_text()) if state.exists() else {}
    return {
        "clean": clean, "verified": test["verified"], "verified_ibp": test["ibp"],
        "verified_crown_ibp": test["crown-ibp"],
        "n_verified": int(len(x)), "autoattack": aa["worst_case"], "autoattack_attacks": aa["attacks"],
        "n_autoattack": int(aa["n"]), "autoattack_clean": aa["clean_accuracy"],
        "verified_on_autoattack_points": aa["verified"], "sanity": aa["sanity"],
        "validation": {"n": 5000, "split": "train[-5000:]", **validation},
        "train_seconds": training.train_seconds(run), "epochs_trained": len(config.get("epoch_seconds", [])) or None,
        "train_seconds_how": "sum of the epochs' wall times in the run's checkpoint state (one core, "
                             "the other core busy with other jobs)",
        "evaluate_seconds": round(time.time() - start, 1), "run": str(run), "hardware": hardware(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "commit": source_commit(),
    }


def readme_row(name: str, row: dict) -> str:
    """docs/results.md's table row for one model (tests check that the page quotes the JSON)."""
    v = row["verified"]
    hours = f"{row['train_seconds'] / 3600:.2f}" if row.get("train_seconds") else "?"
    return (f"| `{name}` | {100 * row['clean']:.2f} | " + " / ".join(f"{100 * v[k]:.2f}" for k in sorted(v))
            + f" | {100 * row['autoattack']['0.3']:.1f} ({row['n_autoattack']}) | "
            f"{100 * row['verified_on_autoattack_points']['0.3']:.1f} | "
            f"{100 * row['validation']['verified']['0.3']:.2f} | {hours} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    parser.add_argument("--out", default="training/results/certified")
    parser.add_argument("--eps", default=EPS)
    parser.add_argument("--attack-eps", default="0.3")
    parser.add_argument("--n-autoattack", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0, help="TF threads (0: TF's default)")
    args = parser.parse_args(argv)
    from tfrobust.utils import atomic_write_text, set_threads  # pylint: disable=import-outside-toplevel
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "table.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    from tfrobust.utils import parse_named_paths  # pylint: disable=import-outside-toplevel
    try:
        runs = parse_named_paths(args.runs)
    except ValueError as err:
        parser.error(f"run {err}")
    for name, run in runs:
        if name in table:
            print(f"{name}: already in {path}, skipped", file=sys.stderr)
            continue
        table[name] = evaluate_run(name, Path(run), args)
        atomic_write_text(path, json.dumps(table, indent=1) + "\n")
        row = table[name]
        print(f"{name}: clean {row['clean']:.4f}, verified {row['verified']}, AutoAttack {row['autoattack']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
