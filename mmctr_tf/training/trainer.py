"""The shared trainer: every model trains, selects its best epoch on validation, and is evaluated here.

`train(cfg, hparams)` runs Keras `fit` under a `tf.distribute` strategy and writes a run directory:

  config.json       the TrainConfig, the model hyper-parameters and the dataset schema (enough to rebuild)
  epochs.jsonl      one line per epoch: loss, auxiliary losses, auc, val_* metrics
  best.weights.h5   weights of the best epoch by validation AUC (never test), best.json its epoch and value
  backup/           BackupAndRestore state: a killed run started again with the same command resumes here
  tensorboard/      TensorBoard logs
  metrics.json      final exact metrics on validation and test of the best epoch (SPEC §5)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import keras
import tensorflow as tf

from mmctr_tf.data.datasets import Dataset, ensure_dataset
from mmctr_tf.data.schema import Schema, SchemaError, write_json_atomic
from mmctr_tf.data.tfrecord import find_bad_shard
from mmctr_tf.evaluation.evaluate import evaluate_split
from mmctr_tf.models import build_model
from mmctr_tf.training import callbacks as cb

CONFIG = "config.json"
METRICS = "metrics.json"


@dataclasses.dataclass
class TrainConfig:
    model: str = "din"
    dataset: str = "synthetic"
    data_dir: str = "tfrecords"
    run_dir: Optional[str] = None
    epochs: int = 10
    batch_size: int = 1024  # per replica; the global batch is batch_size * replicas
    learning_rate: float = 1e-3
    lr_decay: float = 0.9  # exponential decay per epoch (staircase)
    seed: int = 0
    patience: int = 10
    jit_compile: bool = False
    steps_per_epoch: Optional[int] = None  # default: one pass over the training split
    cpu_replicas: int = 1  # >1 splits the CPU into logical devices (for testing MirroredStrategy)
    eval_batch_size: int = 4096
    verbose: str = "auto"

    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", f"{self.model}-{os.path.basename(self.dataset.rstrip('/'))}-s{self.seed}")


def configure_cpu_devices(n: int) -> None:
    """Splits the physical CPU into `n` logical devices. Must run before TensorFlow initialises its devices."""
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) >= n:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        raise RuntimeError(f"--cpu_replicas={n}: TensorFlow devices are initialised already ({e})") from None


def make_strategy(cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """MirroredStrategy over all visible GPUs; on a CPU-only machine, one device (or `cpu_replicas` logical CPUs).

    This is the strategy of the Keras `fit` path. Multi-worker training (TF_CONFIG) needs a custom loop because
    Keras 3 `fit` with MultiWorkerMirroredStrategy is broken (keras-team/keras #20585, #20329): `train` hands it to
    `mmctr_tf.training.multiworker`, and this function refuses TF_CONFIG.
    """
    if os.environ.get("TF_CONFIG"):
        raise RuntimeError("TF_CONFIG is set: Keras 3 fit + MultiWorkerMirroredStrategy is broken upstream, so "
                           "multi-worker jobs train with the custom loop of mmctr_tf.training.multiworker (train() "
                           "uses it when TF_CONFIG is set); unset TF_CONFIG to use this host's devices with fit")
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        devices = tuple(d.name for d in gpus)
    else:
        configure_cpu_devices(cpu_replicas)
        devices = tuple(d.name for d in tf.config.list_logical_devices("CPU")[: max(1, cpu_replicas)])
    # One strategy per device set and process: every new MirroredStrategy starts its collective instance keys at
    # the same value, so a second multi-device strategy in one process (run.compare training several models on
    # several GPUs) fails its first all-reduce with "Shape mismatch in the collective instance".
    if devices not in _STRATEGIES:
        _STRATEGIES[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _STRATEGIES[devices]


_STRATEGIES = {}


class Throughput(keras.callbacks.Callback):
    """Training examples per second over the epochs of this process (first epoch included: it compiles)."""

    def __init__(self, global_batch: int, steps: int):
        super().__init__()
        self.examples_per_epoch = global_batch * steps
        self.seconds = 0.0
        self.epochs = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += time.perf_counter() - self._t
        self.epochs += 1

    @property
    def examples_per_sec(self) -> Optional[float]:
        return self.epochs * self.examples_per_epoch / self.seconds if self.seconds else None


def _check_resume(run_dir: str, record: dict) -> None:
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    for key in ("model", "dataset"):
        if old["train"].get(key) != record["train"].get(key):
            raise ValueError(f"{path}: run directory belongs to {key}='{old['train'].get(key)}', not "
                             f"'{record['train'].get(key)}'; use another --run_dir")
    if old.get("hparams") != record.get("hparams"):
        raise ValueError(f"{path}: run directory was started with other model hyper-parameters "
                         f"{old.get('hparams')}; use another --run_dir to train with {record.get('hparams')}")


@keras.saving.register_keras_serializable(package="mmctr_tf")
class ClickLoss(keras.losses.Loss):
    """Binary cross-entropy per example for models whose output is the click probability [B].

    `keras.losses.BinaryCrossentropy` averages over the last axis, which for a [B] output is the batch: the loss is
    a scalar before Keras' reduction, so under a multi-replica strategy Keras cannot divide it by the number of
    replicas; the logged loss is then N x too large and auxiliary `add_loss` terms (which Keras does divide) weigh
    1/N as much against it. Returning [B] lets Keras' `sum_over_batch_size` reduction scale it like any loss."""

    def __init__(self, name="binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(keras.ops.reshape(y_true, [-1]), y_pred.dtype)
        return keras.ops.binary_crossentropy(y_true, keras.ops.reshape(y_pred, [-1]))


def compile_model(model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    lr = keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, decay_steps=steps_per_epoch,
                                                     decay_rate=cfg.lr_decay, staircase=True)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=ClickLoss(),
                  metrics=[keras.metrics.AUC(num_thresholds=2000, name="auc")], jit_compile=cfg.jit_compile)


def train(cfg: TrainConfig, hparams: Optional[dict] = None, log=print, extra_callbacks=()) -> dict:
    """Trains (or resumes) one run and returns its metrics (also written to `<run_dir>/metrics.json`).
    With TF_CONFIG set, the run is one worker of a multi-worker job (`mmctr_tf.training.multiworker`)."""
    if os.environ.get("TF_CONFIG"):
        from mmctr_tf.training import multiworker

        if extra_callbacks:
            raise ValueError("train(): extra_callbacks are Keras fit callbacks; the multi-worker loop takes none")
        return multiworker.train(cfg, hparams, log=log)
    hparams = {k: v for k, v in (hparams or {}).items() if v is not None}
    run_dir = cfg.resolved_run_dir()
    metrics_path = os.path.join(run_dir, METRICS)
    if os.path.exists(metrics_path):
        log(f"[train] {run_dir} is finished already ({METRICS} exists); use another --run_dir to train again")
        with open(metrics_path) as f:
            return json.load(f)
    keras.utils.set_random_seed(cfg.seed)
    data = Dataset(ensure_dataset(cfg.dataset, cfg.data_dir, log=log))
    os.makedirs(run_dir, exist_ok=True)
    record = {"train": dataclasses.asdict(cfg), "hparams": hparams, "schema": data.schema.to_dict(),
              "data_path": data.path}
    _check_resume(run_dir, record)
    write_json_atomic(os.path.join(run_dir, CONFIG), record)

    strategy = make_strategy(cfg.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    if cfg.jit_compile and cfg.cpu_replicas > 1 and not tf.config.list_logical_devices("GPU"):
        raise ValueError("--jit_compile with --cpu_replicas > 1: XLA cannot compile a step whose variables live on "
                         "several logical CPU devices; drop one of the two flags")
    global_batch = cfg.batch_size * replicas
    steps = cfg.steps_per_epoch or max(1, data.examples("train") // global_batch)
    with strategy.scope():
        model = build_model(cfg.model, data.schema, data.tables, **hparams)
        compile_model(model, cfg, steps)
    log(f"[train] {cfg.model} on {data.path}: {model.count_params():,} parameters, {replicas} replica(s), "
        f"global batch {global_batch}, {steps} steps/epoch, run_dir {run_dir}")

    train_ds = data.tf_dataset("train", global_batch, shuffle=True, seed=cfg.seed, repeat=True)
    valid_ds = data.tf_dataset("valid", global_batch)
    best = cb.BestCheckpointEarlyStopping(run_dir, "val_auc", cfg.patience)
    speed = Throughput(global_batch, steps)
    callbacks = [
        cb.DropUnmeasuredLogs(),  # first: later callbacks see the edited logs
        # double_checkpoint: a kill while latest.weights.h5 is rewritten leaves a truncated file; the previous
        # epoch's copy is restored instead (tests/test_reliability.py)
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"), delete_checkpoint=False,
                                         double_checkpoint=True),
        cb.NonFiniteGuard(), best, cb.EpochLog(run_dir), speed,
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"),
        cb.DiceStatistics(data, strategy, global_batch, cfg.seed),  # Dice's statistics, before each validation
        *extra_callbacks,
    ]
    try:
        model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=steps, validation_data=valid_ds,
                  callbacks=callbacks, verbose=cfg.verbose, shuffle=False)  # tf.data shuffles already
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        files = data.files("train") + data.files("valid")
        bad = find_bad_shard(files, data.schema, data.compression)
        if bad:
            raise SchemaError(f"training data is unreadable: {bad}") from None
        raise e

    if os.path.exists(best.weights_path):
        model.load_weights(best.weights_path)
    result = {
        "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "run_dir": run_dir,
        "backbone": getattr(model, "backbone_name", None),  # None for models without a sequence backbone
        "best_epoch": best.state["best_epoch"], "best_val_auc_keras": best.state["best"],
        "epochs_run": len(cb.read_epochs(run_dir)), "params": int(model.count_params()),
        "replicas": replicas, "global_batch": global_batch,
        "train_examples_per_sec": speed.examples_per_sec,
        "gauc_weighting": "impression-weighted mean of per-group AUC over groups with both classes",
    }
    for split in ("valid", "test"):
        result[split] = evaluate_split(model, data, split, cfg.eval_batch_size)
    write_json_atomic(metrics_path, result)
    t = result["test"]
    log(f"[train] best epoch {result['best_epoch']} (validation); test AUC {t['auc']:.4f} logloss "
        f"{t['logloss']:.4f} GAUC(user) {t.get('gauc_user', float('nan')):.4f} -> {metrics_path}")
    return result


def load_run(run_dir: str, weights: str = cb.BEST_WEIGHTS):
    """Rebuilds a trained model from its run directory (no dataset needed: the frozen tables are in the weights).
    Returns (model, config record)."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a run directory (no {CONFIG})")
    with open(path) as f:
        record = json.load(f)
    weights_path = os.path.join(run_dir, weights)
    if not os.path.exists(weights_path):
        raise FileNotFoundError(f"{weights_path}: run has no best checkpoint yet (did training finish an epoch?)")
    model = build_model(record["train"]["model"], Schema.from_dict(record["schema"]), **record["hparams"])
    model.load_weights(weights_path)
    return model, record
