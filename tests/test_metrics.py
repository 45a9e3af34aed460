"""Exact AUC / GAUC / Logloss / RelaImpr against brute-force references."""

import numpy as np
import pytest

from mmctr_tf.evaluation import metrics as M


def brute_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 700)
    s = np.round(rng.random(700), 1)  # heavy ties
    assert abs(M.auc(y, s) - brute_auc(y, s)) < 1e-6


def test_auc_hand_cases():
    assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(M.auc([1, 1], [0.2, 0.3]))


def test_gauc_is_impression_weighted_and_skips_single_class_groups():
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    s = np.array([.9, .1, .2, .3, .8, .5, .6])
    g = np.array([1, 1, 1, 2, 2, 3, 3])  # group 3 has only clicks: skipped
    # group 1: AUC 1.0 over 3 impressions; group 2: AUC 0.0 over 2 impressions
    assert M.gauc(y, s, g) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)


def test_logloss_and_rela_impr():
    assert M.logloss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert np.isfinite(M.logloss([1, 0], [0.0, 1.0]))
    assert M.rela_impr(0.75, 0.7) == pytest.approx(0.25)
