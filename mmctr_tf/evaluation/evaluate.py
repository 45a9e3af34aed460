"""Scores a split of a dataset with a model and computes the exact metrics of `metrics.py`."""

from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from mmctr_tf.evaluation import metrics as M


def predict_split(model, data, split: str, batch_size: int = 4096) -> Dict[str, np.ndarray]:
    """Returns labels, probabilities, user ids (and request ids when the data has them) of a whole split."""
    infer = tf.function(lambda feats: model(feats, training=False), reduce_retracing=True)
    out = {"label": [], "prob": [], "user_id": [], "request_id": []}
    has_request = "request_id" in data.schema.optional
    for feats, label in data.tf_dataset(split, batch_size):
        out["prob"].append(infer(feats).numpy())
        out["label"].append(label.numpy())
        out["user_id"].append(feats["user_id"].numpy())
        if has_request:
            out["request_id"].append(feats["request_id"].numpy())
    return {k: np.concatenate(v) if v else None for k, v in out.items()}


def evaluate_split(model, data, split: str, batch_size: int = 4096) -> Dict[str, float]:
    p = predict_split(model, data, split, batch_size)
    return M.all_metrics(p["label"], p["prob"], p["user_id"], p["request_id"])
