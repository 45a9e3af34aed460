"""Exact AUC / GAUC / Logloss / RelaImpr / cold-start buckets against brute-force references."""

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


def test_click_buckets_equal_the_metrics_of_each_buckets_rows():
    rng = np.random.default_rng(0)
    clicks = rng.integers(0, 40, 800)
    clicks[:60] = 0
    y = rng.integers(0, 2, 800)
    s = np.round(rng.random(800), 2)
    out = M.click_buckets(y, s, clicks)
    assert out["edges"] == [0, 1, 5, 20] and "training examples' positive labels" in out["definition"]
    rows = [clicks == 0, (clicks >= 1) & (clicks <= 4), (clicks >= 5) & (clicks <= 19), clicks >= 20]
    assert [b["bucket"] for b in out["buckets"]] == ["0", "1-4", "5-19", "20+"]
    for b, r in zip(out["buckets"], rows):
        p = np.clip(s[r], 1e-7, 1 - 1e-7)
        assert b["examples"] == r.sum() > 0 and b["positives"] == y[r].sum()
        assert b["auc"] == pytest.approx(brute_auc(y[r], s[r]), abs=1e-12)
        assert b["logloss"] == pytest.approx(-np.mean(y[r] * np.log(p) + (1 - y[r]) * np.log(1 - p)), rel=1e-12)
    # other edges; an empty bucket has no metrics
    out = M.click_buckets([1, 0, 1], [0.6, 0.4, 0.3], [3, 3, 12], edges=["0", "2", "10", "50"])
    assert [(b["bucket"], b["min_clicks"], b["max_clicks"], b["examples"]) for b in out["buckets"]] == [
        ("0-1", 0, 1, 0), ("2-9", 2, 9, 2), ("10-49", 10, 49, 1), ("50+", 50, None, 0)]
    assert np.isnan(out["buckets"][0]["auc"]) and np.isnan(out["buckets"][0]["logloss"])
    assert out["buckets"][1]["auc"] == 1.0 and np.isnan(out["buckets"][2]["auc"])  # one class: AUC undefined
    assert M.bucket_names([0, 1, 2]) == ["0", "1", "2+"]
    for bad in ([1, 5], [0, 5, 5], ["a"], []):
        with pytest.raises(ValueError, match="click buckets"):
            M.check_click_buckets(bad)
