"""The score study's statistics (training/score_study.py): ranks, Spearman, AUROC, the radius check."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import score_study as S  # noqa: E402


def test_ranks_share_ties_and_spearman_is_pearson_of_ranks():
    np.testing.assert_array_equal(S.ranks([3, 1, 3, 2]), [2.5, 0, 2.5, 1])
    assert S.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert S.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert S.spearman(a, np.exp(a)) == pytest.approx(1.0)  # invariant to monotone maps
    # Against the textbook formula without ties: 1 - 6 sum d^2 / (n (n^2 - 1)).
    b = rng.normal(size=200)
    d = S.ranks(a) - S.ranks(b)
    assert S.spearman(a, b) == pytest.approx(1 - 6 * (d ** 2).sum() / (200 * (200 ** 2 - 1)))


def test_auroc_counts_low_scores_as_positive_with_ties_half():
    assert S.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert S.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert S.auroc([1.0], [1.0]) == 0.5
    assert S.auroc([0.0, 2.0], [1.0]) == 0.5
    assert np.isnan(S.auroc([], [1.0]))


def test_radius_check_on_a_proportional_statistic():
    rng = np.random.default_rng(1)
    d_cal, d_test = rng.lognormal(size=400), rng.lognormal(size=300)
    em_cal, em_test = 2.0 * d_cal, 2.0 * d_test  # effective margin = 2 x distance exactly
    noisy = lambda d: d * rng.lognormal(sigma=1.0, size=len(d))  # noqa: E731
    cal = {"threats": {n: {"distance": d_cal.tolist(), "effective_margin": em_cal.tolist(),
                           "margin": noisy(d_cal).tolist()} for n in ("linf", "l2")},
           "test_margin": noisy(d_test).tolist()}
    test = {"threats": {n: {"points": {"effective_margin": em_test.tolist(), "distance": d_test.tolist()}}
                        for n in ("linf", "l2")}}
    out = S.radius_check(cal, test)
    for norm in ("linf", "l2"):
        exact = out[norm]["effective_margin"]
        assert exact["factor"] == pytest.approx(0.5) and exact["test_coverage"] == 1.0
        assert exact["median_radius_over_distance"] == pytest.approx(1.0)
        assert out[norm]["served"]["statistic"] == "effective_margin"  # the tighter one is chosen
        assert out[norm]["margin"]["median_radius_over_distance"] < 0.8
