"""Exact offline metrics (SPEC §4), computed in numpy from scores and labels.

* `auc`: exact ROC AUC from sorted scores, tied scores get their average rank (Mann-Whitney U).
* `logloss`: mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7].
* `gauc`: grouped AUC, **impression-weighted**: sum_g n_g * AUC_g / sum_g n_g over groups g (users for
  `gauc_user`, requests for `gauc_request`) that contain both a click and a non-click; single-class groups are
  skipped. (The original DIN code's "GAUC" is different: an unweighted mean over users of 1[pos > neg].)
* `rela_impr`: RelaImpr = (AUC_model - 0.5) / (AUC_base - 0.5) - 1.
* `click_buckets`: AUC and Logloss per bucket of the target item's number of training clicks (cold start, dmae.md
  RQ4): the clicks of an item are its count among the training examples' positive labels (`training_clicks` in
  evaluate.py); bucket k holds the examples whose target has edges[k] <= clicks < edges[k + 1].
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

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


DEFAULT_CLICK_BUCKETS = (0, 1, 5, 20)
CLICKS_DEFINITION = "clicks of the target item among the training examples' positive labels"


def check_click_buckets(edges: Sequence) -> List[int]:
    """The bucket edges as ints: strictly increasing, the first 0 (so every example falls in a bucket)."""
    try:
        out = [int(e) for e in edges]
    except (TypeError, ValueError):
        raise ValueError(f"click buckets {list(edges)}: edges must be integers") from None
    if not out or out[0] != 0 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"click buckets {out}: edges must start at 0 and increase strictly (e.g. 0,1,5,20)")
    return out


def bucket_names(edges: Sequence[int]) -> List[str]:
    """"0", "1-4", "5-19", "20+" for edges 0, 1, 5, 20."""
    names = []
    for lo, hi in zip(edges, list(edges[1:]) + [None]):
        names.append(f"{lo}+" if hi is None else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}")
    return names


def click_buckets(labels, probs, clicks, edges: Sequence[int] = DEFAULT_CLICK_BUCKETS) -> dict:
    """AUC and Logloss of the examples of each bucket of `clicks` (the target item's training clicks, one per
    example). Returns {"definition", "edges", "buckets": [{"bucket", "min_clicks", "max_clicks" (None for the
    last), "examples", "positives", "auc", "logloss"}]}; an empty bucket has NaN metrics, a one-class bucket NaN
    AUC."""
    edges = check_click_buckets(edges)
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs).reshape(-1)
    which = np.searchsorted(np.asarray(edges), np.asarray(clicks).reshape(-1), side="right") - 1
    buckets = []
    for k, name in enumerate(bucket_names(edges)):
        rows = which == k
        n = int(rows.sum())
        buckets.append({"bucket": name, "min_clicks": edges[k],
                        "max_clicks": edges[k + 1] - 1 if k + 1 < len(edges) else None,
                        "examples": n, "positives": int((y[rows] > 0.5).sum()),
                        "auc": auc(y[rows], p[rows]) if n else float("nan"),
                        "logloss": logloss(y[rows], p[rows]) if n else float("nan")})
    return {"definition": CLICKS_DEFINITION, "edges": edges, "buckets": buckets}
