"""Ranking correlation and top-k metrics on hand-computed examples."""
import math

import numpy as np
import pytest

from nni_labelfree.metrics import (
    descending_order, kendall_tau, spearman_rho, tau_within_groups, top1_truth, top_k_mean,
)

NAN = float('nan')


def test_perfect_and_reversed():
    truth = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert kendall_tau([1, 2, 3, 4, 5], truth) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4, 5], truth) == pytest.approx(1.0)
    assert kendall_tau([5, 4, 3, 2, 1], truth) == pytest.approx(-1.0)
    assert spearman_rho([5, 4, 3, 2, 1], truth) == pytest.approx(-1.0)
    assert isinstance(kendall_tau([1, 2], [1, 2]), float)


def test_ties_use_tau_b_and_average_ranks():
    # 5 concordant pairs, 0 discordant, one pair tied in scores: tau-b = 5 / sqrt(5 * 6).
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    # Average ranks [1.5, 1.5, 3, 4] against [1, 2, 3, 4]: rho = 4.5 / sqrt(4.5 * 5).
    assert spearman_rho([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_one_discordant_pair():
    # Pairs: (0,1) discordant, the other five concordant: (5 - 1) / 6.
    assert kendall_tau([2, 1, 3, 4], [1, 2, 3, 4]) == pytest.approx(4 / 6)


def test_nan_pairs_are_dropped():
    assert kendall_tau([1, NAN, 3, 2], [1, 100, 3, 2]) == pytest.approx(1.0)
    assert kendall_tau([1, 50, 3, 2], [1, NAN, 3, 2]) == pytest.approx(1.0)
    assert spearman_rho([3, NAN, 1], [30, -5, 10]) == pytest.approx(1.0)
    assert math.isnan(kendall_tau([NAN, 1, 2], [1, NAN, 2]))


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match='Length mismatch'):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match='Length mismatch'):
        spearman_rho([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match='Length mismatch'):
        tau_within_groups([1, 2, 3], [1, 2, 3], [0, 0])
    with pytest.raises(ValueError, match='1-D'):
        kendall_tau([[1, 2]], [[1, 2]])


def test_constant_input_gives_nan():
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))


def test_tau_within_groups_weights_by_size():
    scores = [1, 2, 3] + [1, 2, 3, 4, 5] + [9, 8] + [1, 2, 3]
    truth = [1, 2, 3] + [5, 4, 3, 2, 1] + [1, 2] + [7, 7, 7]
    groups = ['a'] * 3 + ['b'] * 5 + ['c'] * 2 + ['d'] * 3  # c too small, d has constant truth
    assert tau_within_groups(scores, truth, groups) == pytest.approx((3 * 1 - 5 * 1) / 8)
    assert tau_within_groups(scores, truth, groups, min_size=4) == pytest.approx(-1.0)


def test_tau_within_groups_constant_scores_count_as_zero():
    scores = [1, 2, 3, 5, 5, 5]
    truth = [1, 2, 3, 1, 2, 3]
    assert tau_within_groups(scores, truth, [0, 0, 0, 1, 1, 1]) == pytest.approx(0.5)


def test_tau_within_groups_nan_when_no_group_qualifies():
    assert math.isnan(tau_within_groups([1, 2, 3, 4], [1, 2, 3, 4], [0, 0, 1, 1]))
    assert math.isnan(tau_within_groups([1, 2, 3], [5, 5, 5], [0, 0, 0]))


def test_tau_within_groups_drops_nan_before_grouping():
    assert math.isnan(tau_within_groups([1, NAN, 3], [1, 2, 3], [0, 0, 0]))


def test_descending_order_ties_and_nan():
    assert descending_order([1, 3, NAN, 3, 2]).tolist() == [1, 3, 4, 0, 2]
    assert descending_order([1, 3, NAN, 3, 2], tie_break=[0, 0, 0, 1, 0]).tolist() == [3, 1, 4, 0, 2]


def test_top_k_mean():
    scores = [0.1, 0.9, 0.5, 0.7]
    truth = [1.0, 2.0, 3.0, 4.0]
    assert top_k_mean(scores, truth, 1) == 2.0
    assert top_k_mean(scores, truth, 2) == pytest.approx(3.0)
    assert top_k_mean(scores, truth, 4) == pytest.approx(2.5)
    with pytest.raises(ValueError, match='at least k=5'):
        top_k_mean(scores, truth, 5)
    with pytest.raises(ValueError, match='positive integer'):
        top_k_mean(scores, truth, 0)


def test_top1_truth_ties():
    scores = np.array([3.0, 1.0, 3.0, NAN])
    truth = np.array([70.0, 90.0, 80.0, 99.0])
    assert top1_truth(scores, truth) == 70.0  # tie -> lowest index; NaN score dropped
    assert top1_truth(scores, truth, tie_break=[0.0, 0.0, 1.0, 5.0]) == 80.0
    assert top1_truth(scores, truth, tie_break=[1.0, 0.0, 1.0, 5.0]) == 70.0
    assert top1_truth([1.0, 2.0], [5.0, NAN]) == 5.0
