"""Multi-worker training (`TF_CONFIG`): `tf.distribute.MultiWorkerMirroredStrategy` with a custom training loop.

Keras 3 `fit` under MultiWorkerMirroredStrategy is broken upstream (keras-team/keras #20585, #20329), so this module
runs the same training as `trainer.train`'s `fit` path with `strategy.run` + `tf.GradientTape`:

* loss per replica = mean BCE over the replica's batch + the model's auxiliary losses (`model.losses`: what layers
  register with `add_loss`, e.g. DMAE's lambda_dec * L_dec), divided by the number of replicas; Keras 3's
  TensorFlow optimizer all-reduces the gradients with SUM when `apply_gradients` runs in a replica context
  (`TFOptimizer._backend_update_step`), so the update uses the mean over the global batch. On one replica the
  weights and logged losses match `fit`'s after the same steps, and two replicas on two half-batches match one
  replica on the whole batch (`tests/test_multiworker.py`). (With several replicas Keras 3.15 `fit` does not divide
  the compiled BCE by the replica count, because the model's [B] output makes it a scalar that `keras.losses.Loss`
  returns unscaled, while it does divide `model.losses`: under `fit` the logged BCE is replicas x too large and the
  auxiliary losses weigh 1/replicas as much; this loop weighs them as on one replica);
* `--jit_compile` compiles the forward and backward pass with XLA; the all-reduce and the optimizer update stay
  outside (collective ops in an XLA cluster do not compile on CPU workers);
* non-trainable state that each replica updates from its own batches and Keras never aggregates (BatchNorm moving
  statistics, e.g. inside Dice) is averaged over all replicas after every epoch's steps, so all workers hold the
  same model and validate it on the same statistics;
* the same optimizer (`--optimizer`) with the same per-epoch staircase decay, AUC(num_thresholds=2000) on train
  and validation, the same callbacks (`BestCheckpointEarlyStopping` on `val_auc`, `EpochLog`, `NonFiniteGuard`), so
  the run directory holds the same files: config.json, epochs.jsonl, best.weights.h5, best.json, tensorboard/,
  metrics.json;
* input: `strategy.distribute_datasets_from_function`; each worker reads its own part of the training and
  validation files (`input_context.input_pipeline_id` of `num_input_pipelines`, see `tfrecord.make_dataset`);
  batches are per replica (`--batch_size`), the global batch is batch_size x all replicas of all workers;
* validation metrics are variables that aggregate by SUM across replicas, so every worker sees the global
  `val_auc` and takes the same best-epoch / early-stopping decision. It is Keras' AUC on 2,000 thresholds (metrics.json
  calls the best value `best_val_auc_keras`), where the single-host trainer scores the validation split exactly on
  one device (`callbacks.Validation`, `best_val_auc`): here each worker reads only its part of the split;
* resume: a `tf.train.Checkpoint` (model, optimizer, finished epochs, best value/epoch) saved after every epoch to
  `<run_dir>/backup` by the chief; every worker restores from there (so `--run_dir` must be on storage all workers
  can read, as in TensorFlow's multi-worker guide) and the workers check that they restored the same state. As in
  the `fit` path, the input iterator is not part of the checkpoint: a resumed run restarts the shuffled stream.

Non-chief workers take part in every save (saving may run collectives) but write into
`<run_dir>/workertemp_<task_id>/` (TensorFlow's convention): their checkpoint copies are deleted after each save;
their best.weights.h5 / epochs.jsonl are kept (identical to the chief's; useful to check it) and never read. The
final exact metrics (metrics.json) are computed by the chief alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Optional

import keras
import tensorflow as tf

from mmctr_tf.training import callbacks as cb
from mmctr_tf.training.optimizers import make_optimizer

BACKUP = "backup"


# ------------------------------------------------------------------------------------------------- cluster
def tf_config() -> dict:
    """The parsed TF_CONFIG, with a clear error when it is malformed."""
    raw = os.environ.get("TF_CONFIG", "")
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]}") from None
    if not isinstance(conf, dict) or "cluster" not in conf or "task" not in conf:
        raise ValueError('TF_CONFIG needs "cluster" and "task", e.g. {"cluster": {"worker": ["host1:12345", '
                         f'"host2:12345"]}}, "task": {{"type": "worker", "index": 0}}}}; got {raw[:200]}')
    task = conf["task"]
    if task.get("type") not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task type '{task.get('type')}' is not supported (chief or worker)")
    if task.get("type") not in conf["cluster"] or int(task.get("index", 0)) >= len(conf["cluster"][task["type"]]):
        raise ValueError(f"TF_CONFIG task {task} is not in its cluster {conf['cluster']}")
    return conf


def make_multiworker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy from TF_CONFIG (every local GPU of every worker is a replica; one CPU device
    per worker on CPU-only hosts). Must be created before TensorFlow runs anything else in the process."""
    tf_config()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def task_of(strategy) -> tuple:
    """(task_type, task_id, is_chief). A strategy without a cluster (one host) is its own chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0, True
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    cluster = resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return task_type, task_id, chief


def num_workers(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def worker_dir(run_dir: str, strategy) -> str:
    """Where this worker writes: the run directory on the chief, `<run_dir>/workertemp_<task_id>` elsewhere."""
    _, task_id, chief = task_of(strategy)
    return run_dir if chief else os.path.join(run_dir, f"workertemp_{task_id}")


def agree_with_chief(strategy, values, what: str) -> None:
    """Raises on every worker if this worker's `values` differ from the chief's (one broadcast + one sum)."""
    if num_workers(strategy) == 1:
        return
    local = tf.constant([float(v) for v in values], tf.float32)

    def fn():
        ctx = tf.distribute.get_replica_context()
        first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32)  # global replica 0 is on the chief
        chief = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local * first)
        differs = tf.reduce_any(tf.not_equal(chief, local))
        return chief, ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(differs, tf.float32))

    chief, bad = (strategy.experimental_local_results(t)[0] for t in strategy.run(fn))
    if float(bad) > 0:
        raise RuntimeError(f"workers disagree on {what}: this worker has {list(values)}, the chief "
                           f"{chief.numpy().tolist()}; --run_dir must be on storage every worker can read "
                           f"(shared file system or GCS), and every worker must run the same command")


# ------------------------------------------------------------------------------------------------- loop
class CustomLoop:
    """Trains `model` under `strategy` with a per-replica step (see module docstring). Used by `train` below with
    MultiWorkerMirroredStrategy, and usable with any strategy (the tests compare it with `fit` in one process)."""

    def __init__(self, strategy, model, data, cfg, steps_per_epoch: int, learning_rate_schedule):
        self.strategy, self.model, self.data, self.cfg = strategy, model, data, cfg
        self.steps = int(steps_per_epoch)
        self.replicas = strategy.num_replicas_in_sync
        self.global_batch = cfg.batch_size * self.replicas
        with strategy.scope():
            self.optimizer = make_optimizer(cfg.optimizer, learning_rate_schedule)
            self.optimizer.build(model.trainable_variables)
            self.loss = keras.metrics.Mean(name="loss")
            self.auc = keras.metrics.AUC(num_thresholds=2000, name="auc")
            self.val_loss = keras.metrics.Mean(name="val_loss")
            self.val_auc = keras.metrics.AUC(num_thresholds=2000, name="val_auc")
        # auxiliary-loss trackers owned by layers (DMAE dec_loss, Diff-MSIN con_loss / syn_loss), logged like fit
        self.aux = [m for m in model.metrics if m.name not in ("loss", "compile_metrics")]
        replicas = self.replicas

        def forward_backward(x, y):
            with tf.GradientTape() as tape:
                p = model(x, training=True)
                loss = tf.reduce_mean(keras.ops.binary_crossentropy(y, p))  # = keras.losses.BinaryCrossentropy
                if model.losses:
                    loss = loss + tf.add_n(model.losses)
                scaled = loss / replicas  # gradients are summed over replicas by the optimizer
            return tape.gradient(scaled, model.trainable_variables), loss, p

        # --jit_compile: XLA compiles the forward and backward pass; the gradient all-reduce and the optimizer update
        # stay outside (collective ops inside an XLA cluster fail to compile on CPU workers)
        grads_fn = tf.function(forward_backward, jit_compile=True) if cfg.jit_compile else forward_backward

        def replica_step(batch):
            x, y = batch
            y = tf.cast(y, tf.float32)
            grads, loss, p = grads_fn(x, y)
            self.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            self.loss.update_state(loss, sample_weight=tf.cast(tf.shape(y)[0], tf.float32))
            self.auc.update_state(y, p)

        def replica_eval(batch):
            x, y = batch
            y = tf.cast(y, tf.float32)
            p = model(x, training=False)
            per_example = keras.ops.binary_crossentropy(y, p)
            if model.losses:
                per_example = per_example + tf.add_n(model.losses)
            self.val_loss.update_state(per_example)  # empty batches (uneven worker shards) add nothing
            self.val_auc.update_state(y, p)

        # Non-trainable float state outside the frozen tables (BatchNorm moving statistics, e.g. in Dice) is updated
        # by each replica from its own batches and never aggregated (Keras creates it with aggregation "none");
        # after each epoch's steps it is averaged over all replicas, so every worker holds the same model and the
        # statistics cover every worker's data.
        tables = {id(w) for layer in getattr(model, "tables", {}).values() for w in layer.weights}
        self.local_state = [v for v in model.non_trainable_variables
                            if id(v) not in tables and v.dtype in ("float16", "float32", "float64")]
        local_state = self.local_state

        def replica_sync():
            ctx = tf.distribute.get_replica_context()
            means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in local_state])
            for v, m in zip(local_state, means):
                v.assign(m)  # aggregation "none": each replica assigns its own copy

        step = tf.function(replica_step, reduce_retracing=True)

        @tf.function
        def train_step(iterator):
            strategy.run(step, args=(next(iterator),))

        @tf.function
        def eval_step(dist_dataset):
            for batch in dist_dataset:  # one graph for the whole pass; ends when every worker's shard is done
                strategy.run(replica_eval, args=(batch,))

        @tf.function
        def sync_local_state():
            strategy.run(replica_sync)

        self.dice = cb.DiceStatistics(data, strategy, self.global_batch, cfg.seed)  # re-estimated before validation
        self.dice.set_model(model)
        self._train_step, self._eval_step = train_step, eval_step
        self._sync = sync_local_state if local_state else (lambda: None)
        self._iterator = None

    def _split(self, split: str, **kw):
        data, global_batch = self.data, self.global_batch

        def fn(ctx: tf.distribute.InputContext):
            return data.tf_dataset(split, ctx.get_per_replica_batch_size(global_batch),
                                   shard=(ctx.num_input_pipelines, ctx.input_pipeline_id), **kw)

        return self.strategy.distribute_datasets_from_function(fn)

    def train_steps(self, iterator, steps: int, guard: Optional[cb.NonFiniteGuard] = None) -> None:
        """`steps` optimizer steps on batches of a distributed-dataset iterator (per-replica batches)."""
        for step in range(steps):
            self._train_step(iterator)
            if guard is not None:  # the running mean is global (SUM-aggregated), so every worker stops together
                guard.on_train_batch_end(step, {"loss": float(self.loss.result())})

    def train_epoch(self, epoch: int, guard: Optional[cb.NonFiniteGuard] = None) -> dict:
        """One epoch of `steps` steps on the (repeated, shuffled) training split, then validation; returns logs.
        The training iterator lives across epochs (like `fit` with steps_per_epoch on a repeated dataset)."""
        if self._iterator is None:
            self._iterator = iter(self._split("train", shuffle=True, seed=self.cfg.seed, repeat=True))
        for m in [self.loss, self.auc, self.val_loss, self.val_auc, *self.aux]:
            m.reset_state()
        self.train_steps(self._iterator, self.steps, guard)
        self._sync()
        self.dice.reestimate()
        self._eval_step(self._split("valid"))
        logs = {"auc": self.auc.result(), "loss": self.loss.result(), **{m.name: m.result() for m in self.aux},
                "val_auc": self.val_auc.result(), "val_loss": self.val_loss.result()}
        return {k: float(v) for k, v in logs.items()}


# ------------------------------------------------------------------------------------------------- train
def train(cfg, hparams: Optional[dict] = None, log=print, strategy=None) -> dict:
    """`trainer.train` for multi-worker jobs (TF_CONFIG set): same run directory and metrics, custom loop."""
    if strategy is None:  # first: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything
        if cfg.cpu_replicas > 1:
            raise ValueError("--cpu_replicas > 1 with TF_CONFIG: a multi-worker job uses one CPU device (or all "
                             "GPUs) per worker; drop --cpu_replicas")
        strategy = make_multiworker_strategy()
    _, _, chief = task_of(strategy)
    run_dir = cfg.resolved_run_dir()
    with lock_run_dir(strategy, run_dir, chief, f"run.train of {cfg.model} on {cfg.dataset} (multi-worker chief)",
                      log):
        return _train(cfg, hparams, log, strategy, run_dir)


def lock_run_dir(strategy, run_dir: str, chief: bool, what: str, log) -> contextlib.ExitStack:
    """The chief's lock of the run directory (`mmctr_tf.locks`; the other workers write into it too, so only the
    chief takes it). When another job holds it, every worker stops: the chief with `LockHeld`, the others with the
    disagreement error of `agree_with_chief`."""
    from mmctr_tf import locks

    stack, refused = contextlib.ExitStack(), None
    if chief:
        try:
            stack.enter_context(locks.hold(run_dir, what, log=log))
        except locks.LockHeld as e:
            refused = e
    try:
        agree_with_chief(strategy, [refused is None], "whether the chief could lock the run directory (another job "
                         "trains into it)")
    except RuntimeError:
        stack.close()
        if refused is None:
            raise
    if refused is not None:
        raise refused
    return stack


def _train(cfg, hparams, log, strategy, run_dir) -> dict:
    from mmctr_tf.data.datasets import Dataset, ensure_dataset
    from mmctr_tf.data.schema import write_json_atomic
    from mmctr_tf.evaluation.evaluate import evaluate_split
    from mmctr_tf.models import build_model
    from mmctr_tf.training import trainer

    task_type, task_id, chief = task_of(strategy)
    name = "chief" if chief else f"{task_type} {task_id}"
    hparams = {k: v for k, v in (hparams or {}).items() if v is not None}
    out_dir = worker_dir(run_dir, strategy)
    metrics_path = os.path.join(run_dir, trainer.METRICS)
    finished = os.path.exists(metrics_path)
    agree_with_chief(strategy, [finished], f"whether {metrics_path} exists")
    if finished:
        log(f"[train] {run_dir} is finished already ({trainer.METRICS} exists); use another --run_dir to train again")
        with open(metrics_path) as f:
            return json.load(f)
    if os.path.exists(os.path.join(run_dir, BACKUP, "training_metadata.json")):
        raise ValueError(f"{run_dir}: run was started without TF_CONFIG (Keras fit backup in {BACKUP}/); resume it "
                         f"the same way or use another --run_dir")

    keras.utils.set_random_seed(cfg.seed)
    data = Dataset(ensure_dataset(cfg.dataset, cfg.data_dir, log=log))
    os.makedirs(out_dir, exist_ok=True)
    record = {"train": dataclasses.asdict(cfg), "hparams": hparams, "schema": data.schema.to_dict(),
              "data_path": data.path}
    record, epoch_extra = trainer.resume_record(run_dir, record)
    write_json_atomic(os.path.join(out_dir, trainer.CONFIG), record)

    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    steps = cfg.steps_per_epoch or max(1, data.examples("train") // global_batch)
    lr = keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, decay_steps=steps,
                                                     decay_rate=cfg.lr_decay, staircase=True)
    with strategy.scope():
        model = build_model(cfg.model, data.schema, data.tables, **hparams)
    loop = CustomLoop(strategy, model, data, cfg, steps, lr)
    workers = num_workers(strategy)
    log(f"[train] {name}: {cfg.model} on {data.path}: {model.count_params():,} parameters, {replicas} replica(s) on "
        f"{workers} worker(s), global batch {global_batch}, {steps} steps/epoch, run_dir {run_dir}"
        + ("" if chief else f" (this worker writes to {out_dir})"))

    # resume state: restored from the chief's checkpoint by every worker
    epoch_v = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    best_v = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best")
    best_epoch_v = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
    stopped_v = tf.Variable(False, trainable=False, name="stopped")
    ckpt = tf.train.Checkpoint(model=model, optimizer=loop.optimizer, epoch=epoch_v, best=best_v,
                               best_epoch=best_epoch_v, stopped=stopped_v)
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, BACKUP))
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
        log(f"[train] {name}: resumed from {latest} after epoch {int(epoch_v.numpy())}")
    agree_with_chief(strategy, [int(epoch_v.numpy()), int(best_epoch_v.numpy()), bool(stopped_v.numpy())],
                     "the restored checkpoint (epoch, best epoch, stopped)")
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out_dir, BACKUP), max_to_keep=2)

    best = cb.BestCheckpointEarlyStopping(out_dir, "val_auc", cfg.patience)
    epoch_log, guard = cb.EpochLog(out_dir, epoch_extra), cb.NonFiniteGuard()
    for c in (best, epoch_log, guard):
        c.set_model(model)
    best.state = {"best": float(best_v.numpy()), "best_epoch": int(best_epoch_v.numpy())}
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard")) if chief else None
    model.stop_training = bool(stopped_v.numpy())
    seconds, epochs_timed = 0.0, 0
    epoch = int(epoch_v.numpy())
    while epoch < cfg.epochs and not model.stop_training:
        epoch_log.on_epoch_begin(epoch)
        guard.on_epoch_begin(epoch)
        t0 = time.perf_counter()
        logs = loop.train_epoch(epoch, guard)
        seconds += time.perf_counter() - t0
        epochs_timed += 1
        guard.on_epoch_end(epoch, logs)  # a non-finite validation loss stops every worker before any save
        best.on_epoch_end(epoch, logs)  # best weights before the checkpoint: a resumed run never misses them
        epoch_log.on_epoch_end(epoch, logs)
        if writer is not None:
            with writer.as_default(step=epoch + 1):
                for k, v in logs.items():
                    tf.summary.scalar(k, v)
            writer.flush()
        epoch += 1
        epoch_v.assign(epoch)
        best_v.assign(best.state["best"])
        best_epoch_v.assign(best.state["best_epoch"])
        stopped_v.assign(bool(model.stop_training))
        manager.save()
        if not chief:
            tf.io.gfile.rmtree(os.path.join(out_dir, BACKUP))
        log(f"[train] {name}: epoch {epoch}/{cfg.epochs} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items()))

    result = {
        "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "run_dir": run_dir,
        "backbone": getattr(model, "backbone_name", None),
        "best_epoch": best.state["best_epoch"], "best_val_auc_keras": best.state["best"],
        "epochs_run": len(cb.read_epochs(out_dir)), "params": int(model.count_params()),
        "replicas": replicas, "workers": workers, "global_batch": global_batch,
        "train_examples_per_sec": epochs_timed * steps * global_batch / seconds if seconds else None,
        "gauc_weighting": "impression-weighted mean of per-group AUC over groups with both classes",
    }
    if chief:  # exact metrics are the chief's job
        if os.path.exists(best.weights_path):
            model.load_weights(best.weights_path)
        for split in ("valid", "test"):
            result[split] = evaluate_split(model, data, split, cfg.eval_batch_size)
        write_json_atomic(metrics_path, result)
    # every worker leaves together, after metrics.json exists (a worker that exits first sees the chief's
    # coordination service go away under it)
    agree_with_chief(strategy, [0], "the end of training")
    if not chief:
        log(f"[train] {name}: done (best epoch {result['best_epoch']}); the chief wrote {metrics_path}")
        return result
    t = result["test"]
    log(f"[train] best epoch {result['best_epoch']} (validation); test AUC {t['auc']:.4f} logloss "
        f"{t['logloss']:.4f} GAUC(user) {t.get('gauc_user', float('nan')):.4f} -> {metrics_path}")
    return result
