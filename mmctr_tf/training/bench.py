"""Measurements behind the benchmark command (run/bench.py). Nothing here asserts a
speed; the commands print tables, and ratios are only meaningful between rows of one run."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from mmctr_tf.data.tfrecord import make_dataset


def input_throughput(files: Sequence[str], schema, batch_size: int, compression: Optional[str],
                     min_seconds: float = 3.0) -> Dict[str, float]:
    """Examples/s of reading + batching + parsing (+ prefetch) through the training pipeline, repeated until
    `min_seconds` have passed (first pass excluded as warm-up)."""
    ds = make_dataset(files, schema, batch_size, compression=compression, shuffle=True, seed=0, repeat=True)
    it = iter(ds)
    for _ in range(3):
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        feats, _ = next(it)
        n += int(feats["user_id"].shape[0])
    dt = time.perf_counter() - t0
    return {"examples_per_sec": n / dt, "ms_per_batch": 1000 * dt / max(1, n / batch_size)}


class _StepTimer(keras.callbacks.Callback):
    """Wall time and this process's CPU time (all threads, user + system) of the steps after `warmup`."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.t0, self.t1, self.c0, self.c1, self.steps = warmup, None, None, None, None, 0

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        elif batch + 1 > self.warmup:
            self.steps += 1
            self.t1, self.c1 = time.perf_counter(), time.process_time()


def spread_vocabulary(data, users: int, items: int, seed: int = 0):
    """`data` as if its vocabulary had `users` users and `items` items: returns (schema, tables, remap).

    Each of the dataset's user ids 1..U and item ids 1..I is sent to its own id drawn uniformly (seeded, without
    replacement) from 1..users and 1..items; `remap` applies that map to a batch (`user_id`, `item_id`,
    `hist_item_id`; 0 stays padding), and the frozen vector tables get the item rows at their new ids (the other rows
    are absent: zero vectors, present = 0). So the examples, their labels, the id frequencies and the number of
    distinct rows a batch touches are the dataset's, while the touched rows are spread over tables of the requested
    size as ids of a real log are: what changes between vocabularies is the cost of the tables alone."""
    from mmctr_tf.data.schema import Schema
    from mmctr_tf.data.tables import VectorTable

    schema, rng = data.schema, np.random.default_rng(seed)
    new_size = {"user_id": users, "item_id": items}
    maps = {}
    for name, size in new_size.items():
        old = schema.vocab[name] - 1
        if size < old:
            raise ValueError(f"vocabulary {users}x{items}: the dataset has {old} {name.split('_')[0]}s already; "
                             "ask for at least as many")
        maps[name] = np.concatenate([[0], rng.permutation(size)[:old] + 1]).astype(np.int64)
    vocab = {**schema.vocab, **{name: size + 1 for name, size in new_size.items()}}
    new_schema = Schema.from_dict({**schema.to_dict(), "vocab": vocab})
    rows = maps["item_id"]
    tables = {}
    for m, t in data.tables.items():
        values = np.zeros((items + 1, t.dim), t.values.dtype)
        present = np.zeros(items + 1, t.present.dtype)
        values[rows], present[rows] = t.values, t.present
        scale = None
        if t.scale is not None:
            scale = np.ones(items + 1, t.scale.dtype)
            scale[rows] = t.scale
        tables[m] = VectorTable(values, present, scale)
    lookups = {name: tf.constant(m) for name, m in maps.items()}

    def remap(feats, label):
        feats = dict(feats)
        for name in schema.model_inputs:
            base = name[5:] if name.startswith("hist_") else name
            if base in lookups:
                feats[name] = tf.gather(lookups[base], feats[name])
        return feats, label

    return new_schema, tables, remap


def train_throughput(model_name: str, data, hparams: dict, batch_size: int = 1024, steps: int = 30,
                     warmup: int = 5, jit_compile: bool = False, seed: int = 0, optimizer: str = "adam",
                     vocab: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """Steady-state training examples/s and ms per step (wall, and CPU time of the process: less sensitive to other
    jobs on the machine) of one model on `data`'s training split (warm-up steps, which include tracing/compilation,
    are excluded), trained with `optimizer` (`--optimizer`); `vocab=(users, items)` measures it at that vocabulary
    (`spread_vocabulary`)."""
    from mmctr_tf.models import build_model
    from mmctr_tf.training.trainer import TrainConfig, compile_model

    keras.utils.set_random_seed(seed)
    schema, tables, remap = (data.schema, data.tables, None) if vocab is None else spread_vocabulary(data, *vocab)
    model = build_model(model_name, schema, tables, **hparams)
    compile_model(model, TrainConfig(jit_compile=jit_compile, optimizer=optimizer), steps_per_epoch=1000)
    ds = data.tf_dataset("train", batch_size, shuffle=True, seed=seed, repeat=True, drop_remainder=True)
    if remap is not None:
        ds = ds.map(remap, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    timer = _StepTimer(warmup)
    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
    dt = timer.t1 - timer.t0
    return {"examples_per_sec": timer.steps * batch_size / dt, "ms_per_step": 1000 * dt / timer.steps,
            "cpu_ms_per_step": 1000 * (timer.c1 - timer.c0) / timer.steps,
            "params": int(model.count_params()), "model": model}


def serving_latency(model, batch_sizes: Sequence[int] = (1, 256, 1024), repeats: int = 30,
                    sample: Optional[dict] = None) -> List[Dict[str, float]]:
    """Exports `model` to a temporary SavedModel, reloads it, and times the named-tensor signature per batch size
    (p50 / p99 ms over `repeats` calls after 3 warm-up calls)."""
    from mmctr_tf.export.saved_model import DEFAULT_SIGNATURE, export_model
    from mmctr_tf.models import dummy_batch

    schema = model.schema
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, os.path.join(tmp, "export"), log=lambda *a: None)
        fn = tf.saved_model.load(path).signatures[DEFAULT_SIGNATURE]
        for bs in batch_sizes:
            if sample is not None:
                idx = np.arange(bs) % len(sample["user_id"])
                batch = {k: tf.constant(np.asarray(sample[k])[idx]) for k in schema.model_inputs}
            else:
                batch = {k: tf.constant(v) for k, v in dummy_batch(schema, batch=bs).items()}
            for _ in range(3):
                fn(**batch)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn(**batch)["probability"].numpy()
                times.append(1000 * (time.perf_counter() - t))
            rows.append({"batch": bs, "p50_ms": float(np.percentile(times, 50)),
                         "p99_ms": float(np.percentile(times, 99))})
    return rows


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)
