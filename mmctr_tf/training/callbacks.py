"""Training callbacks whose state lives in the run directory, so a killed run resumes with it."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from mmctr_tf.data.schema import read_jsonl, write_json_atomic
from mmctr_tf.evaluation import metrics as M
from mmctr_tf.evaluation.evaluate import predict_split

BEST_WEIGHTS = "best.weights.h5"
BEST_STATE = "best.json"
EPOCHS_LOG = "epochs.jsonl"


class BestCheckpointEarlyStopping(keras.callbacks.Callback):
    """Keeps the weights of the best epoch by a validation metric and stops after `patience` epochs without gain.

    Unlike `ModelCheckpoint` + `EarlyStopping`, its state (best value, best epoch) is persisted in
    `<run_dir>/best.json` next to `best.weights.h5`, so a run resumed by `BackupAndRestore` keeps comparing
    against the true best instead of starting over. Writes are atomic (temp file + rename). Model selection
    uses validation data only.
    """

    def __init__(self, run_dir: str, monitor: str = "val_auc", patience: int = 10):
        super().__init__()
        self.run_dir, self.monitor, self.patience = run_dir, monitor, int(patience)
        self.state_path = os.path.join(run_dir, BEST_STATE)
        self.weights_path = os.path.join(run_dir, BEST_WEIGHTS)
        self.state = {"best": -math.inf, "best_epoch": -1}
        self.stopped = None  # the early-stop message, printed when training ends

    def on_train_begin(self, logs=None):
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.state = json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"BestCheckpointEarlyStopping: metric '{self.monitor}' not in logs {sorted(logs or {})}")
        value = float(value)
        if math.isfinite(value) and value > self.state["best"]:
            tmp = os.path.join(self.run_dir, "best.tmp.weights.h5")
            self.model.save_weights(tmp)
            os.replace(tmp, self.weights_path)
            self.state = {"best": value, "best_epoch": epoch + 1}
            write_json_atomic(self.state_path, self.state)
        elif epoch + 1 - self.state["best_epoch"] >= self.patience:
            self.stopped = (f"[train] early stop after epoch {epoch + 1}: no {self.monitor} gain for "
                            f"{self.patience} epochs (best {self.state['best']:.5f} at epoch "
                            f"{self.state['best_epoch']})")
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        # printed here, not at the epoch's end: Keras' progress bar finishes the epoch's line after this callback
        if self.stopped:
            print(self.stopped, flush=True)


class Validation(keras.callbacks.Callback):
    """At the end of every epoch, scores the whole validation split and adds its exact metrics to the epoch logs:
    `val_auc` (ROC AUC, `metrics.auc`), `val_logloss` (`metrics.logloss`) and `val_loss`, the same click logloss
    (auxiliary losses are training-only). NaN predictions give NaN for all three, so `NonFiniteGuard` stops the run
    and `BestCheckpointEarlyStopping` never keeps such an epoch.

    It replaces Keras' own validation (`fit(validation_data=...)`), whose AUC is approximated on a grid of
    thresholds and whose test step is a graph of its own: here the model is scored by the tf.function that the
    final evaluation of the best epoch uses (`evaluate.predict_split`), traced once per run, so the epoch selected
    and the valid metrics of metrics.json come from one computation. It runs on one device. Keras hands one logs
    dict to the callbacks in list order (its progress bar and `History` come last), so this callback goes before
    every callback that reads `val_*`; `DiceStatistics` goes right before it."""

    def __init__(self, data, batch_size: int):
        super().__init__()
        self.data, self.batch_size = data, int(batch_size)

    def on_epoch_end(self, epoch, logs=None):
        p = predict_split(self.model, self.data, "valid", self.batch_size)
        finite = bool(np.all(np.isfinite(p["prob"])))
        loss = M.logloss(p["label"], p["prob"]) if finite else float("nan")
        auc = M.auc(p["label"], p["prob"]) if finite else float("nan")
        if logs is not None:
            logs.update(val_loss=loss, val_logloss=loss, val_auc=auc)


class EpochLog(keras.callbacks.Callback):
    """Appends one JSON line per finished epoch (1-based `epoch` + all logs + `extra`, e.g. the training flags in
    force when they changed on resume) to `<run_dir>/epochs.jsonl`. On resume, lines of epochs that are being re-run
    (and a last line torn by a kill) are dropped first, so each epoch appears once."""

    def __init__(self, run_dir: str, extra: Optional[dict] = None):
        super().__init__()
        self.path = os.path.join(run_dir, EPOCHS_LOG)
        self.extra = dict(extra or {})

    def on_epoch_begin(self, epoch, logs=None):
        if not os.path.exists(self.path):
            return
        kept = [r for r in read_jsonl(self.path) if r["epoch"] <= epoch]
        with open(self.path + ".tmp", "w") as f:  # always rewritten: also drops a line torn by a kill
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(self.path + ".tmp", self.path)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}, **self.extra}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class DiceStatistics(keras.callbacks.Callback):
    """At the end of every epoch, before `Validation` (next in the callback list), sets the moving mean and
    variance of each Dice layer (`mmctr_tf.layers.core.Dice`) to the mean and variance of its inputs on training
    data under the current weights, so the model that is validated, selected and evaluated is the one that was
    trained.

    Keras' BatchNormalization keeps exponential moving averages (momentum 0.99, variance started at 1): on a small
    dataset (21 steps per epoch on Amazon Scientific) the stored variances stay 10-100x the inputs' true ones, and
    the evaluated Dice is nearly linear where the trained one gated. Here the statistics come from `examples`
    training examples (a shuffled, repeated stream that moves on at every call), the model in inference mode
    except that each Dice layer normalises with its batch's statistics as in training; per-channel counts, sums
    and sums of squares are float64 and summed over every replica and worker (an all-reduce), so all replicas
    assign the same values. No weight other than the moving statistics changes. `reestimate()` is also called by
    the multi-worker loop (`mmctr_tf.training.multiworker`). A model without Dice costs nothing.
    """

    def __init__(self, data, strategy, global_batch: int, seed: int = 0, examples: int = 4096):
        super().__init__()
        self.data, self.strategy, self.global_batch, self.seed = data, strategy, int(global_batch), seed
        self.steps = max(1, math.ceil(examples / self.global_batch))
        self._step = self._iterator = None

    def on_epoch_end(self, epoch, logs=None):
        self.reestimate()

    def _build(self):
        from mmctr_tf.layers.core import dice_layers

        layers = dice_layers(self.model)
        model, strategy, data, global_batch, seed = self.model, self.strategy, self.data, self.global_batch, self.seed

        def dataset_fn(ctx: tf.distribute.InputContext):
            return data.tf_dataset("train", ctx.get_per_replica_batch_size(global_batch), shuffle=True, seed=seed,
                                   repeat=True, with_label=False,
                                   shard=(ctx.num_input_pipelines, ctx.input_pipeline_id))

        def replica_moments(feats):
            # summed over every replica of every worker (in replica context, as the multi-worker loop's own
            # all-reduces: `strategy.reduce` of a nested structure fails in a tf.function under
            # MultiWorkerMirroredStrategy)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                                   local_dice_moments(model, layers, feats))

        @tf.function
        def step(iterator):
            return strategy.experimental_local_results(strategy.run(replica_moments, args=(next(iterator),)))[0]

        self._layers, self._step = layers, step
        self._iterator = iter(strategy.distribute_datasets_from_function(dataset_fn)) if layers else None

    def reestimate(self) -> None:
        if self._step is None:
            self._build()
        if not self._layers:
            return
        assign_dice_moments(self._layers, (self._step(self._iterator) for _ in range(self.steps)))


def local_dice_moments(model, layers, feats) -> dict:
    """{layer index: [count, sum, sum of squares]} of each Dice layer of `layers` on one batch `feats` (the model in
    inference mode, Dice normalising with the batch's statistics), summed over the layer's calls."""
    from mmctr_tf.layers.core import recording_dice_moments

    with recording_dice_moments(layers) as records:
        model(feats, training=False)
    return {str(i): [tf.add_n(list(part)) for part in zip(*rec)] for i, rec in enumerate(records) if rec}


def assign_dice_moments(layers, batches) -> None:
    """Sums the per-batch moments of `local_dice_moments` over `batches` and sets each Dice layer's moving mean and
    variance to its inputs' mean and variance."""
    totals = {}
    for moments in batches:
        for key, parts in moments.items():
            parts = [np.asarray(p, np.float64) for p in parts]
            totals[key] = parts if key not in totals else [a + b for a, b in zip(totals[key], parts)]
    for key, (count, total, squares) in totals.items():
        bn = layers[int(key)].bn
        mean = total / count
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(np.maximum(squares / count - mean * mean, 0.0).astype(np.float32))


def reestimate_dice_statistics(model, batches) -> None:
    """`DiceStatistics`' re-estimation for a model trained outside the trainer (one device): `batches` is an
    iterable of training feature dicts."""
    from mmctr_tf.layers.core import dice_layers

    layers = dice_layers(model)
    if layers:
        assign_dice_moments(layers, (local_dice_moments(model, layers, feats) for feats in batches))


class NonFiniteLossError(FloatingPointError):
    pass


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN/Inf, naming epoch and step, and at the end of an epoch
    whose validation loss is NaN/Inf (the predictions of the weights that epoch ended with are not finite, e.g.
    after a last step with an enormous learning rate), before any checkpoint of that epoch is written: it comes
    before BackupAndRestore and BestCheckpointEarlyStopping in the callback list, so no non-finite weights are
    saved and such a model never becomes the best one."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss)}) at epoch {self.epoch + 1}, step {batch + 1}: training "
                f"stopped; the last good state is in the run directory (check the learning rate and the input data)")

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"non-finite validation loss ({float(loss)}) at the end of epoch {epoch + 1}: the model's predictions "
                f"are not finite, so training stopped before this epoch was checkpointed; the last good state is in "
                f"the run directory (check the learning rate and the input data)")


def read_epochs(run_dir: str):
    return read_jsonl(os.path.join(run_dir, EPOCHS_LOG))
