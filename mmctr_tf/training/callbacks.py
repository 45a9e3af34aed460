"""Training callbacks whose state lives in the run directory, so a killed run resumes with it."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import keras

from mmctr_tf.data.schema import read_jsonl, write_json_atomic

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


class DropUnmeasuredLogs(keras.callbacks.Callback):
    """Removes the `val_<name>` entries of auxiliary-loss trackers (DMAE's `dec_loss`, Diff-MSIN's `con_loss` and
    `syn_loss`) from the epoch logs. Keras evaluates the validation set with every metric the model tracks, but these
    trackers are updated in training only, so their `val_` copies would always read 0 in the progress bar,
    TensorBoard, `History` and epochs.jsonl. Keras hands one logs dict to the callbacks in list order (its progress
    bar and `History` come last), so this callback goes first in the list and edits that dict."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for m in self.model.metrics:
            if m.name not in ("loss", "compile_metrics"):
                logs.pop("val_" + m.name, None)


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
