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
    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.t0, self.t1, self.steps = warmup, None, None, 0

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            self.t0 = time.perf_counter()
        elif batch + 1 > self.warmup:
            self.steps += 1
            self.t1 = time.perf_counter()


def train_throughput(model_name: str, data, hparams: dict, batch_size: int = 1024, steps: int = 30,
                     warmup: int = 5, jit_compile: bool = False, seed: int = 0) -> Dict[str, float]:
    """Steady-state training examples/s and ms per step of one model on `data`'s training split (warm-up steps,
    which include tracing/compilation, are excluded)."""
    from mmctr_tf.models import build_model
    from mmctr_tf.training.trainer import TrainConfig, compile_model

    keras.utils.set_random_seed(seed)
    model = build_model(model_name, data.schema, data.tables, **hparams)
    compile_model(model, TrainConfig(jit_compile=jit_compile), steps_per_epoch=1000)
    ds = data.tf_dataset("train", batch_size, shuffle=True, seed=seed, repeat=True, drop_remainder=True)
    timer = _StepTimer(warmup)
    model.fit(ds, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer])
    dt = timer.t1 - timer.t0
    return {"examples_per_sec": timer.steps * batch_size / dt, "ms_per_step": 1000 * dt / timer.steps,
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
    fmt = lambda v: f"{v:,.1f}" if isinstance(v, float) and abs(v) >= 10 else (f"{v:.3f}" if isinstance(v, float) else str(v))
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)
