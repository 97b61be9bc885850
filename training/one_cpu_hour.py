"""The most robust MNIST model per CPU-hour (issue #14): train the recipe, time it, evaluate it.

Trains ``mnist_one_cpu_hour`` with ``tfrobust train`` (both cores; resumes after a crash),
then runs the standard AutoAttack (APGD-CE, APGD-T 9, FAB-T 9, Square 5,000) at eps 0.3 on
the first 1,000 MNIST test images with the sanity checks, and writes the ``tfrobust
evaluate`` JSON plus ``train_seconds``, ``hardware``, ``command`` and ``commit`` to
``OUT/eval.json``::

    python training/one_cpu_hour.py --runs runs/one_cpu_hour --out training/results/one_cpu_hour

``--train-seconds S`` skips training and records ``S`` for a model already trained in
``--runs`` (its wall time measured outside this script, stated in the JSON).
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/one_cpu_hour", help="training folder")
    parser.add_argument("--out", default="training/results/one_cpu_hour")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", default="0.3")
    parser.add_argument("--train-seconds", type=float, default=None,
                        help="skip training: the model in --runs took this long (measured outside)")
    args = parser.parse_args(argv)
    from tfrobust.utils import atomic_write_text, hardware, source_commit  # pylint: disable=import-outside-toplevel

    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "tfrobust"]
    if args.train_seconds is None:
        start = time.time()
        subprocess.run(cli + ["train", "--config", RECIPE, "--out", str(runs)], check=True)
        train_seconds, how = time.time() - start, "wall time of `tfrobust train` in this script"
    else:
        train_seconds, how = args.train_seconds, "given with --train-seconds (measured outside this script)"
    raw = out / "evaluate.json"
    start = time.time()
    # The recipe keeps its best robust epoch (training/results/keep_best/): that is the model it gives.
    model = runs / ("best.keras" if (runs / "best.keras").exists() else "model.keras")
    subprocess.run(cli + ["evaluate", "--model", str(model), "--dataset", "mnist", "--n",
                          str(args.n), "--attacks", "autoattack", "--eps", args.eps, "--json", str(raw)], check=True)
    result = json.loads(raw.read_text())
    raw.unlink()
    history = json.loads((runs / "history.json").read_text()) if (runs / "history.json").exists() else None
    result.update({
        "recipe": RECIPE, "train_seconds": round(train_seconds, 1), "train_seconds_how": how,
        "train_hours_on_the_2_core_machine": round(train_seconds / 3600, 3),
        "evaluate_seconds": round(time.time() - start, 1),
        "hardware": hardware(), "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": source_commit(), "epochs_trained": len((history or {}).get("loss", [])) or None})
    atomic_write_text(out / "eval.json", json.dumps(result, indent=1) + "\n")
    print(f"clean {result['clean_accuracy']:.3f}, standard AutoAttack eps {args.eps}: "
          f"{result['worst_case'][args.eps]:.3f} on {result['n']}; trained in {train_seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
