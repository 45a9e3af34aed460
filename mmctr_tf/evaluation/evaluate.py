"""Scores a split of a dataset with a model and computes the exact metrics of `metrics.py`."""

from __future__ import annotations

import os
import sys
import weakref
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from mmctr_tf.evaluation import metrics as M

_CLICKS_CACHE: Dict[tuple, np.ndarray] = {}
_INFER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def inference_function(model, spec):
    """`model(feats, training=False)` as one tf.function per model, traced once for every split and batch size:
    its input signature is `spec` (a dataset's `element_spec[0]`, batch dimension None). Cached per model object (a
    weak reference: the cache keeps no model alive)."""
    cached = _INFER_CACHE.get(model)
    if cached is None or cached[0] != spec:
        ref = weakref.ref(model)
        cached = (spec, tf.function(lambda feats: ref()(feats, training=False), input_signature=[spec]))
        _INFER_CACHE[model] = cached
    return cached[1]


def training_clicks(data) -> np.ndarray:
    """int64 [item vocabulary]: clicks of each item id among the training examples' positive labels (the
    cold-start measure of `metrics.click_buckets`). Reads only `item_id` and `label` of the training split (all of
    it: fewer examples than the manifest's, e.g. a truncated shard, is a `SchemaError` naming the shard); cached per
    process for unchanged training files."""
    from mmctr_tf.data.schema import SchemaError
    from mmctr_tf.data.tfrecord import find_bad_shard, tf_error_text

    files = data.files("train")
    key = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    if key not in _CLICKS_CACHE:
        spec = data.schema.feature_spec(with_label=True)
        spec = {k: spec[k] for k in ("item_id", "label")}
        ds = tf.data.TFRecordDataset(files, compression_type=data.compression or "")
        ds = ds.apply(tf.data.experimental.assert_cardinality(data.examples("train")))
        ds = ds.batch(65536).map(lambda s: tf.io.parse_example(s, spec)).prefetch(2)
        vocab = data.schema.vocab_of("item_id")
        counts = np.zeros(vocab, np.int64)
        try:
            for batch in ds:
                items = batch["item_id"].numpy()[batch["label"].numpy() > 0.5]
                counts += np.bincount(np.clip(items, 0, vocab - 1), minlength=vocab)
        except tf.errors.OpError as e:
            why = find_bad_shard(files, data.schema, data.compression) or f"{data.path}: {tf_error_text(e)}"
            raise SchemaError(f"the training split, whose clicks give the cold-start buckets, is unreadable: "
                              f"{why}") from None
        _CLICKS_CACHE[key] = counts
    return _CLICKS_CACHE[key]


def predict_split(model, data, split: str, batch_size: int = 4096) -> Dict[str, np.ndarray]:
    """Returns labels, probabilities, user ids, target item ids (and request ids when the data has them) of a
    whole split."""
    ds = data.tf_dataset(split, batch_size)
    infer = inference_function(model, ds.element_spec[0])
    out = {"label": [], "prob": [], "user_id": [], "item_id": [], "request_id": []}
    has_request = "request_id" in data.schema.optional
    for feats, label in ds:
        out["prob"].append(infer(feats).numpy())
        out["label"].append(label.numpy())
        out["user_id"].append(feats["user_id"].numpy())
        out["item_id"].append(feats["item_id"].numpy())
        if has_request:
            out["request_id"].append(feats["request_id"].numpy())
    return {k: np.concatenate(v) if v else None for k, v in out.items()}


def evaluate_split(model, data, split: str, batch_size: int = 4096,
                   click_buckets: Optional[Sequence[int]] = M.DEFAULT_CLICK_BUCKETS) -> Dict[str, float]:
    """`metrics.all_metrics` of a split, plus "cold_start" (`metrics.click_buckets` with these edges; None: none)."""
    p = predict_split(model, data, split, batch_size)
    out = M.all_metrics(p["label"], p["prob"], p["user_id"], p["request_id"])
    if click_buckets is not None:
        clicks = training_clicks(data)[np.clip(p["item_id"], 0, data.schema.vocab_of("item_id") - 1)]
        out["cold_start"] = M.click_buckets(p["label"], p["prob"], clicks, click_buckets)
    return out


def evaluate_run(run_dir: str, split: str, dataset=None, batch_size: int = 4096, warn=None,
                 click_buckets=None) -> dict:
    """`run.evaluate`: metrics of the run's best checkpoint on `split` of its own dataset, or of `dataset` (a name or
    path): then the result records the dataset the run was trained on, and `warn` (default: print to stderr) is
    told."""
    from mmctr_tf.data.datasets import Dataset, dataset_dir, ensure_dataset
    from mmctr_tf.training.trainer import load_run

    model, record = load_run(run_dir)
    trained_on = record.get("data_path")
    path = (dataset_dir(dataset, record["train"]["data_dir"]) if dataset else trained_on
            or ensure_dataset(record["train"]["dataset"], record["train"]["data_dir"]))
    data = Dataset(path)
    out = {"model": record["train"]["model"], "run_dir": run_dir, "split": split, "dataset": data.manifest.get("name"),
           "data_path": path}
    if trained_on and os.path.realpath(path) != os.path.realpath(trained_on):
        schema = "" if data.schema.to_dict() == record["schema"] else (
            ", whose schema differs (ids may stand for other items and the scores mean nothing)")
        (warn or (lambda m: print(m, file=sys.stderr)))(
            f"run.evaluate: warning: {run_dir} was trained on {trained_on}; evaluating it on {path}{schema}")
        out["trained_on"] = trained_on
    return {**out, **evaluate_split(model, data, split, batch_size, click_buckets)}
