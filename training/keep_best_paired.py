"""The keep_best study's two candidates compared image by image (issue #23).

``training/keep_best_study.py`` reports each candidate's robust accuracy on the 500 held-out
validation images; this re-runs the same evaluation (APGD-CE -> APGD-T at eps 0.3, seed 0, draws
keyed by image, so the same attacks) with its per-image results kept, counts the images robust
under one candidate only, and gives the exact one-sided sign test of "the best epoch is no better".
Writes ``OUT/paired.json``::

    python training/keep_best_paired.py --runs runs/keep_best --out training/results/keep_best
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
from pathlib import Path


def robust_flags(model_path: Path, x, y) -> list[bool]:
    """Per-image robustness after the APGD-CE -> APGD-T cascade at eps 0.3 (the study's evaluation)."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from tfrobust.evaluation import evaluate_model  # pylint: disable=import-outside-toplevel
    from tfrobust.models import unwrap  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as resume:
        evaluate_model(unwrap(keras.models.load_model(model_path)), x, y, attacks=["apgd-ce", "apgd-t"], eps="0.3",
                       cascade=True, sanity=False, resume=resume, progress=False)
        chunks = [np.load(p) for p in sorted(Path(resume).glob("chunk-*.npz"))]
        return [bool(v) for c in chunks for v in c["robust|apgd-t|0.3"]]


def sign_test(wins: int, losses: int) -> float:
    """P(at least ``wins`` of ``wins + losses`` fair coin flips), the exact one-sided sign test."""
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2 ** n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/keep_best", help="the study's training folder")
    parser.add_argument("--out", default="training/results/keep_best")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import keep_best_study  # pylint: disable=import-outside-toplevel

    from tfrobust.utils import atomic_write_text, hardware, source_commit  # pylint: disable=import-outside-toplevel

    runs = Path(args.runs)
    x, y = keep_best_study.held_out(keep_best_study.study_config(2))
    last, best = (robust_flags(runs / name, x, y) for name in ("model.keras", "best.keras"))
    wins = sum(b and not a for a, b in zip(last, best))
    losses = sum(a and not b for a, b in zip(last, best))
    report = {"images": len(last), "robust_last_epoch": sum(last), "robust_best_epoch": sum(best),
              "robust_only_under_best_epoch": wins, "robust_only_under_last_epoch": losses,
              "sign_test_one_sided_p": round(sign_test(wins, losses), 6),
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "commit": source_commit(), "hardware": hardware()}
    atomic_write_text(Path(args.out) / "paired.json", json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
