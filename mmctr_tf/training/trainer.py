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

from mmctr_tf import locks
from mmctr_tf.data.datasets import Dataset, ensure_dataset
from mmctr_tf.data.schema import MANIFEST, Schema, SchemaError, write_json_atomic
from mmctr_tf.data.tfrecord import find_bad_shard, tf_error_text
from mmctr_tf.evaluation.evaluate import evaluate_split
from mmctr_tf.models import build_model
from mmctr_tf.training import callbacks as cb
from mmctr_tf.training.optimizers import make_optimizer

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
    optimizer: str = "adam"  # adam | lazy_adam (mmctr_tf/training/optimizers.py)
    seed: int = 0
    patience: int = 10
    jit_compile: bool = False
    steps_per_epoch: Optional[int] = None  # default: one pass over the training split
    cpu_replicas: int = 1  # >1 splits the CPU into logical devices (for testing MirroredStrategy)
    eval_batch_size: int = 4096
    verbose: str = "auto"
    allow_changed_flags: bool = False  # resume with other training flags (recorded per epoch in epochs.jsonl)

    def resolved_run_dir(self) -> str:
        name = os.path.basename(self.dataset.rstrip("/"))
        return self.run_dir or os.path.join("runs", f"{self.model}-{name}-s{self.seed}")


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
    """MirroredStrategy over all visible GPUs; on a CPU-only machine, TensorFlow's default strategy (one device), or a
    MirroredStrategy over `cpu_replicas` logical CPUs when it is above 1.

    One CPU device gets the default strategy, not a MirroredStrategy of one replica: the same computation without the
    replica threads and the multi-device iterators, which cost a run about a quarter of its CPU time on a small
    dataset (a 2-epoch DIN run of 16 steps: 13.2 s against 10.3 s of CPU, scratch measurement of this change).

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
    elif cpu_replicas <= 1:
        return tf.distribute.get_strategy()
    else:
        configure_cpu_devices(cpu_replicas)
        devices = tuple(d.name for d in tf.config.list_logical_devices("CPU")[:cpu_replicas])
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


# TrainConfig fields that do not change what a run trains: they may differ when a run is resumed (the dataset
# directory is compared as the resolved `data_path`, not as the --data_dir spelling)
RESUME_FREE = ("run_dir", "verbose", "eval_batch_size", "jit_compile", "allow_changed_flags", "data_dir")
# fields that may grow when a run is resumed: that is how a run is extended
RESUME_GROW = ("epochs", "patience")


def resume_record(run_dir: str, record: dict):
    """The config.json to write for `record` (a new run's config) in `run_dir`, and the fields `EpochLog` adds to
    every epoch's line. A new run: (`record`, {}). A resumed run must have the same model, dataset, schema and
    hyper-parameters (ValueError otherwise) and the same training flags as those in force (`--epochs` and
    `--patience` may grow); other flags are refused, naming each with its old -> new value, unless
    `allow_changed_flags`: then config.json keeps the flags the run started with plus a `flag_changes` list, and
    each later epoch's line records the flags in force that differ from them (`"flags"`)."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        return record, {}
    with open(path) as f:
        old = json.load(f)
    for key in ("model", "dataset"):
        if old["train"].get(key) != record["train"].get(key):
            raise ValueError(f"{path}: run directory belongs to {key}='{old['train'].get(key)}', not "
                             f"'{record['train'].get(key)}'; use another --run_dir")
    if old.get("hparams") != record.get("hparams"):
        raise ValueError(f"{path}: run directory was started with other model hyper-parameters "
                         f"{old.get('hparams')}; use another --run_dir to train with {record.get('hparams')}")
    if old.get("schema") not in (None, record.get("schema")):
        raise ValueError(f"{path}: the dataset's schema changed since this run started (was {old['schema']}, now "
                         f"{record['schema']} in {record.get('data_path')}: re-converted?); its checkpoints do not "
                         f"fit the new data: use another --run_dir")
    start = old["train"]
    in_force = dict(start)
    for change in old.get("flag_changes", []):
        in_force.update(change)
    new = record["train"]
    changed = {}
    for k, v in new.items():
        if k in RESUME_FREE or k not in in_force:  # a field older runs did not record is not compared
            continue
        was = in_force[k]
        if k in RESUME_GROW and isinstance(v, int) and isinstance(was, int) and v >= was:
            continue
        if v != was:
            changed[k] = (was, v)
    if old.get("data_path") and os.path.realpath(old["data_path"]) != os.path.realpath(record["data_path"]):
        changed["data_path"] = (old["data_path"], record["data_path"])
    if changed and not new.get("allow_changed_flags"):
        raise ValueError(f"{path}: this run was started with other training flags: "
                         + ", ".join(f"{'the dataset directory' if k == 'data_path' else '--' + k} {a!r} -> {b!r}"
                                     for k, (a, b) in changed.items())
                         + "; resume with the same flags (--epochs and --patience may grow, to extend a run), use "
                         "another --run_dir, or pass --allow_changed_flags to go on with the new values (epochs.jsonl "
                         "then records them on every later epoch)")
    out = {**old, "train": {**start, **{k: new[k] for k in RESUME_GROW if k in new}}}
    if changed:
        out["flag_changes"] = old.get("flag_changes", []) + [{k: b for k, (_, b) in changed.items()}]
        out["data_path"] = record["data_path"]
    differ = {k: new[k] for k in new if k in start and k not in RESUME_FREE + RESUME_GROW and new[k] != start[k]}
    return out, ({"flags": differ} if differ else {})


@keras.saving.register_keras_serializable(package="mmctr_tf")
def click_logloss(y_true, y_pred):
    """Binary cross-entropy of the click probability, per example ([B]): the click loss (`ClickLoss`) and the
    `logloss` metric that the progress bar shows for training and validation alike."""
    y_true = keras.ops.cast(keras.ops.reshape(y_true, [-1]), y_pred.dtype)
    return keras.ops.binary_crossentropy(y_true, keras.ops.reshape(y_pred, [-1]))


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
        return click_logloss(y_true, y_pred)


def compile_model(model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    lr = keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, decay_steps=steps_per_epoch,
                                                     decay_rate=cfg.lr_decay, staircase=True)
    # `loss` is the training objective (the click loss plus the model's weighted auxiliary losses, training only);
    # `logloss` is the click loss alone, measured alike on training and validation batches (see `describe_logs`).
    metrics = [keras.metrics.AUC(num_thresholds=2000, name="auc"),
               keras.metrics.MeanMetricWrapper(click_logloss, name="logloss")]
    model.compile(optimizer=make_optimizer(cfg.optimizer, lr), loss=ClickLoss(), metrics=metrics,
                  jit_compile=cfg.jit_compile)


def describe_logs(model) -> str:
    """One line saying what the progress bar's numbers are (the total `loss` is not comparable with `val_loss`
    when the model has auxiliary losses)."""
    aux = [m.name for m in model.metrics if m.name not in ("loss", "compile_metrics")]
    if not aux:
        return "[train] progress: loss = click logloss (training), val_loss = the same on validation; auc = ROC AUC"
    return (f"[train] progress: loss = click logloss + weighted auxiliary losses ({', '.join(aux)}; training "
            f"batches only), so compare logloss with val_logloss, not loss with val_loss; auc = ROC AUC")


def train(cfg: TrainConfig, hparams: Optional[dict] = None, log=print, extra_callbacks=()) -> dict:
    """Trains (or resumes) one run and returns its metrics (also written to `<run_dir>/metrics.json`).
    With TF_CONFIG set, the run is one worker of a multi-worker job (`mmctr_tf.training.multiworker`).

    The run directory is locked for the whole call (`mmctr_tf.locks`): a second process training into it is
    refused with the holder's pid. When a split cannot be read at the final evaluation, metrics.json keeps what the
    run finished (best epoch, the other split) with that split's error, `RunDataError` is raised, and the same call
    made again evaluates again without training."""
    if os.environ.get("TF_CONFIG"):
        from mmctr_tf.training import multiworker

        if extra_callbacks:
            raise ValueError("train(): extra_callbacks are Keras fit callbacks; the multi-worker loop takes none")
        return multiworker.train(cfg, hparams, log=log)
    run_dir = cfg.resolved_run_dir()
    with locks.hold(run_dir, f"run.train of {cfg.model} on {cfg.dataset}", log=log):
        return _train(cfg, hparams, run_dir, log, extra_callbacks)


class RunDataError(SchemaError):
    """The data a run reads is unreadable or was replaced under it; the message names the file or the dataset."""


# What tf.data raises on a damaged, truncated, missing or replaced shard (FailedPrecondition: fewer examples than
# the manifest says, e.g. a dataset re-converted while a run reads it)
DATA_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError,
               tf.errors.NotFoundError)


def unreadable(data: Dataset, splits) -> Optional[str]:
    """Why `splits` of `data` cannot be read: the dataset was replaced since it was opened, or the first bad shard
    ('file: reason'); None when neither holds."""
    if data.replaced():
        return (f"{data.path}: the dataset was replaced while this run used it (its {MANIFEST} changed since the run "
                f"started)")
    bad = find_bad_shard([f for s in splits for f in data.files(s)], data.schema, data.compression)
    return f"{'/'.join(splits)} data is unreadable: {bad}" if bad else None


def failed_splits(metrics: dict) -> dict:
    """{split: error} of a metrics.json whose final evaluation failed (empty for a finished run)."""
    return {k: v["error"] for k, v in metrics.items() if isinstance(v, dict) and "error" in v}


def _train(cfg: TrainConfig, hparams: Optional[dict], run_dir: str, log, extra_callbacks) -> dict:
    hparams = {k: v for k, v in (hparams or {}).items() if v is not None}
    metrics_path = os.path.join(run_dir, METRICS)
    previous = None
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            previous = json.load(f)
        if not failed_splits(previous):
            log(f"[train] {run_dir} is finished already ({METRICS} exists); use another --run_dir to train again")
            return previous
    keras.utils.set_random_seed(cfg.seed)
    data = Dataset(ensure_dataset(cfg.dataset, cfg.data_dir, log=log))
    os.makedirs(run_dir, exist_ok=True)
    record = {"train": dataclasses.asdict(cfg), "hparams": hparams, "schema": data.schema.to_dict(),
              "data_path": data.path}
    record, epoch_extra = resume_record(run_dir, record)
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
    best = cb.BestCheckpointEarlyStopping(run_dir, "val_auc", cfg.patience)
    if previous is None:
        log(f"[train] {cfg.model} on {data.path}: {model.count_params():,} parameters, {replicas} replica(s), "
            f"global batch {global_batch}, {steps} steps/epoch, run_dir {run_dir}")
        log(describe_logs(model))
        result = _fit(model, data, cfg, run_dir, best, strategy, steps, epoch_extra, extra_callbacks)
    else:
        log(f"[train] {run_dir}: training finished earlier; evaluating again ({METRICS} recorded: "
            f"{'; '.join(failed_splits(previous).values())})")
        result = {k: v for k, v in previous.items() if k not in ("valid", "test")}

    if os.path.exists(best.weights_path):
        model.load_weights(best.weights_path)
    for split in ("valid", "test"):
        result[split] = evaluate_or_error(model, data, split, cfg.eval_batch_size)
    write_json_atomic(metrics_path, result)
    errors = failed_splits(result)
    if errors:
        raise RunDataError(f"{'; '.join(dict.fromkeys(errors.values()))}. Training finished (best epoch "
                           f"{result['best_epoch']}); {METRICS} keeps what was evaluated, with the error of "
                           f"{' and '.join(errors)}: fix the data and run the same command again to evaluate")
    t = result["test"]
    log(f"[train] best epoch {result['best_epoch']} (validation); test AUC {t['auc']:.4f} logloss "
        f"{t['logloss']:.4f} GAUC(user) {t.get('gauc_user', float('nan')):.4f}"
        + (f" GAUC(request) {t['gauc_request']:.4f}" if "gauc_request" in t else "") + f" -> {metrics_path}")
    return result


def evaluate_or_error(model, data: Dataset, split: str, batch_size: int) -> dict:
    """`evaluate_split`, or {"error": why} when the split cannot be read or the dataset was replaced since the run
    opened it (its ids may mean other items now)."""
    if data.replaced():
        return {"error": unreadable(data, [split])}
    try:
        return evaluate_split(model, data, split, batch_size)
    except DATA_ERRORS as e:
        return {"error": unreadable(data, [split]) or f"{split} data: {tf_error_text(e)}"}


def _fit(model, data: Dataset, cfg: TrainConfig, run_dir: str, best, strategy, steps: int, epoch_extra,
         extra_callbacks) -> dict:
    """Keras `fit` with the run directory's callbacks; returns the training part of metrics.json."""
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    train_ds = data.tf_dataset("train", global_batch, shuffle=True, seed=cfg.seed, repeat=True)
    speed = Throughput(global_batch, steps)
    callbacks = [
        cb.DiceStatistics(data, strategy, global_batch, cfg.seed),  # Dice's statistics, before each validation
        cb.Validation(data, cfg.eval_batch_size),  # before every callback that reads val_* from the logs
        cb.NonFiniteGuard(),  # before the checkpoints: a non-finite epoch is never saved
        # double_checkpoint: a kill while latest.weights.h5 is rewritten leaves a truncated file; the previous
        # epoch's copy is restored instead (tests/test_reliability.py)
        keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup"), delete_checkpoint=False,
                                         double_checkpoint=True),
        best, cb.EpochLog(run_dir, epoch_extra), speed,
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"),
        *extra_callbacks,
    ]
    try:
        model.fit(train_ds, epochs=cfg.epochs, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=cfg.verbose, shuffle=False)  # tf.data shuffles already
    except DATA_ERRORS:
        why = unreadable(data, ["train", "valid"])
        if why:
            raise RunDataError(f"training stopped: {why}") from None
        raise
    return {
        "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "run_dir": run_dir,
        "backbone": getattr(model, "backbone_name", None),  # None for models without a sequence backbone
        "best_epoch": best.state["best_epoch"], "best_val_auc": best.state["best"],
        "epochs_run": len(cb.read_epochs(run_dir)), "params": int(model.count_params()),
        "replicas": replicas, "global_batch": global_batch,
        "train_examples_per_sec": speed.examples_per_sec,
        "gauc_weighting": "impression-weighted mean of per-group AUC over groups with both classes",
    }


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
