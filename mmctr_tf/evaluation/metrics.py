"""Exact offline metrics (SPEC §4), computed in numpy from scores and labels.

* `auc`: exact ROC AUC from sorted scores, tied scores get their average rank (Mann-Whitney U).
* `logloss`: mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7].
* `gauc`: grouped AUC, **impression-weighted**: sum_g n_g * AUC_g / sum_g n_g over groups g (users for
  `gauc_user`, requests for `gauc_request`) that contain both a click and a non-click; single-class groups are
  skipped. (The original DIN code's "GAUC" is different: an unweighted mean over users of 1[pos > neg].)
* `rela_impr`: RelaImpr = (AUC_model - 0.5) / (AUC_base - 0.5) - 1.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # boundaries of runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # average of ranks start+1..end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(labels, scores) -> float:
    labels = np.asarray(labels).reshape(-1) > 0.5
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probs) -> float:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc(labels, scores, groups) -> float:
    """Impression-weighted grouped AUC over groups with both classes (see module docstring)."""
    labels = np.asarray(labels).reshape(-1) > 0.5
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    order = np.argsort(groups, kind="mergesort")
    g, y, s = groups[order], labels[order], scores[order]
    bounds = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1, len(g)]
    total, weight = 0.0, 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        pos = int(y[a:b].sum())
        if pos == 0 or pos == b - a:
            continue
        total += (b - a) * auc(y[a:b], s[a:b])
        weight += b - a
    return float(total / weight) if weight else float("nan")


def rela_impr(auc_model: float, auc_base: float) -> float:
    return float((auc_model - 0.5) / (auc_base - 0.5) - 1.0)


def all_metrics(labels, probs, user_ids=None, request_ids: Optional[np.ndarray] = None) -> Dict[str, float]:
    out = {"auc": auc(labels, probs), "logloss": logloss(labels, probs), "examples": int(np.size(labels))}
    if user_ids is not None:
        out["gauc_user"] = gauc(labels, probs, user_ids)
    if request_ids is not None:
        out["gauc_request"] = gauc(labels, probs, request_ids)
    return out
