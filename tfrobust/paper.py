"""The published numbers we reproduce, as data: one place for the quickstart, the table driver and the study.

Accuracies are fractions; eps keys are written as on the command line (docs/architecture.md).
"""

__all__ = ["PAPER_TABLE1", "EPS", "ATTACKS"]

PAPER_TABLE1 = {
    # Yu et al., "Interpreting Adversarial Robustness: A View from Decision Surface in Input Space",
    # Table 1: MNIST test accuracy, eps on [0, 1] pixels; BIM and C&W 10 iterations of step 0.1.
    "natural": {"clean": 0.991, "fgsm": {"0.1": 0.673, "0.2": 0.129, "0.3": 0.047},
                "bim": {"0.1": 0.225, "0.2": 0.0, "0.3": 0.0},
                "cw": {"0.1": 0.216, "0.2": 0.0, "0.3": 0.0}},
    "adv_train": {"clean": 0.991, "fgsm": {"0.1": 0.730, "0.2": 0.527, "0.3": 0.109},
                  "bim": {"0.1": 0.620, "0.2": 0.065, "0.3": 0.0},
                  "cw": {"0.1": 0.711, "0.2": 0.170, "0.3": 0.021}},
    "input_gradient": {"clean": 0.992, "fgsm": {"0.1": 0.916, "0.2": 0.604, "0.3": 0.183},
                       "bim": {"0.1": 0.879, "0.2": 0.199, "0.3": 0.0},
                       "cw": {"0.1": 0.881, "0.2": 0.200, "0.3": 0.0}},
    "decision_jacobian": {"clean": 0.984, "fgsm": {"0.1": 0.916, "0.2": 0.703, "0.3": 0.416},
                          "bim": {"0.1": 0.881, "0.2": 0.649, "0.3": 0.267},
                          "cw": {"0.1": 0.892, "0.2": 0.726, "0.3": 0.376}},
}
"""Rows of Table 1 of the decision-surface paper."""

EPS = ("0.1", "0.2", "0.3")
"""Table 1's eps values."""

ATTACKS = ("fgsm", "bim", "cw")
"""Table 1's attacks."""
