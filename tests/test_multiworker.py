"""Multi-worker training: the custom loop of `mmctr_tf.training.multiworker` (same step as Keras `fit`, gradients
averaged over replicas, resume), input sharding, and a real two-worker MultiWorkerMirroredStrategy job (two
`python -m run.train` processes with TF_CONFIG on 127.0.0.1)."""

import collections
import json
import os
import socket
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from test_dice import check_stored_dice_statistics

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.models import build_model
from mmctr_tf.training import callbacks as cb
from mmctr_tf.training import multiworker as mw
from mmctr_tf.training.trainer import TrainConfig, compile_model

# Tiny widths: what these tests check (same step as fit, gradient averaging, resume, the run directory, all-reduced
# weights) does not depend on them, and a smaller model traces and steps faster.
SMALL = {"emb_dim": 4, "dnn_units": [8], "att_units": [4]}
DMAE_SMALL = {**SMALL, "mieu_dim": 4, "num_buckets": 6, "decoder_units": [4]}


def _rows(ds):
    """Multiset of examples (a few fields are enough to tell the synthetic rows apart)."""
    out = collections.Counter()
    for feats, label in ds:
        cols = [feats["user_id"], feats["item_id"], feats["hist_len"], tf.reduce_sum(feats["hist_item_id"], 1), label]
        out.update(zip(*(c.numpy().tolist() for c in cols)))
    return out


def test_shard_option_partitions_files_and_records(small_dataset):
    data = Dataset(small_dataset)
    full = _rows(data.tf_dataset("valid", 512))
    assert sum(full.values()) == data.examples("valid") and len(data.files("valid")) == 2
    for n in (2, 3):  # 2 shards: one file each; 3 shards > 2 files: every 3rd record
        parts = [_rows(data.tf_dataset("valid", 512, shard=(n, i), shuffle=True, seed=1)) for i in range(n)]
        assert sum(parts, collections.Counter()) == full, n  # disjoint and complete
        assert all(sum(p.values()) > 0 for p in parts)
    with pytest.raises(ValueError, match="shard_index 2"):
        data.tf_dataset("valid", 8, shard=(2, 2))


def _local(devices):
    """An in-process MirroredStrategy. Reduction through one device: strategies that use collective ops collide
    on their collective instance keys when several are created in one process (TF), and test_training creates one;
    the collective all-reduce itself runs in the two-worker test below."""
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def _weights(model):
    return [v.numpy() for v in model.trainable_variables]


@pytest.fixture(scope="module")
def one_batch(small_dataset):
    data = Dataset(small_dataset)
    x, y = next(iter(data.tf_dataset("train", 64)))
    return data, x, y


def _custom_run(data, batches, devices, per_replica_batch, model, hparams, steps=3):
    """CustomLoop on `devices` for `steps` steps on a dataset of per-replica batches (same seed, same init)."""
    strategy = _local(devices)
    cfg = TrainConfig(model=model, batch_size=per_replica_batch, learning_rate=1e-2)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        net = build_model(model, data.schema, data.tables, **hparams)
    lr = keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, 100, cfg.lr_decay, staircase=True)
    loop = mw.CustomLoop(strategy, net, data, cfg, steps, lr)
    loop.train_steps(iter(strategy.distribute_datasets_from_function(lambda ctx: batches)), steps)
    return loop, net


@pytest.mark.slow
def test_custom_loop_step_matches_keras_fit(one_batch):
    """Same loss (BCE + DMAE's lambda_dec * L_dec from model.losses), same Adam update as `fit`, on one replica."""
    data, x, y = one_batch
    batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    loop, net = _custom_run(data, batches, ["/cpu:0"], 64, "dmae", DMAE_SMALL)
    strategy = _local(["/cpu:0"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        ref = build_model("dmae", data.schema, data.tables, **DMAE_SMALL)
        compile_model(ref, TrainConfig(model="dmae", learning_rate=1e-2), steps_per_epoch=100)
    hist = ref.fit(batches, steps_per_epoch=3, epochs=1, verbose=0)
    assert int(loop.optimizer.iterations.numpy()) == int(ref.optimizer.iterations.numpy()) == 3
    for a, b in zip(_weights(ref), _weights(net)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(loop.loss.result()), hist.history["loss"][0], rtol=1e-5)
    aux = {m.name: float(m.result()) for m in loop.aux}
    assert set(aux) == {"dec_loss"} and aux["dec_loss"] > 0
    np.testing.assert_allclose(aux["dec_loss"], hist.history["dec_loss"][0], rtol=1e-5)


@pytest.mark.slow
def test_two_replicas_average_gradients_and_guard_stops(one_batch):
    """Two replicas on the two halves of a batch train like one replica on the whole batch: the optimizer's SUM
    all-reduce of the 1/replicas-scaled losses (BCE + DIN's emb_l2 term from model.losses) is the mean gradient.
    (Without Dice: its BatchNorm uses per-replica batch statistics, under `fit` too.) A NaN loss then stops the
    loop, naming the step."""
    data, x, y = one_batch
    hp = {**SMALL, "emb_l2": 1e-3, "dnn_activation": "relu", "att_activation": "sigmoid"}  # no batch statistics
    whole = tf.data.Dataset.from_tensors((x, y)).repeat()
    halves = tf.data.Dataset.from_tensors((x, y)).unbatch().batch(32).repeat()
    loop1, net1 = _custom_run(data, whole, ["/cpu:0"], 64, "din", hp)
    loop2, net2 = _custom_run(data, halves, ["/cpu:0", "/cpu:1"], 32, "din", hp)
    for a, b in zip(_weights(net1), _weights(net2)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(loop2.loss.result()), float(loop1.loss.result()), rtol=1e-5)
    bad = tf.data.Dataset.from_tensors((x, tf.fill(tf.shape(y), np.nan))).unbatch().batch(32).repeat()
    guard = cb.NonFiniteGuard()
    guard.on_epoch_begin(1)
    it = iter(loop2.strategy.distribute_datasets_from_function(lambda ctx: bad))
    with pytest.raises(cb.NonFiniteLossError, match="epoch 2, step 1"):
        loop2.train_steps(it, 3, guard)


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_custom_loop_run_dir_and_resume(small_dataset, tmp_path, monkeypatch):
    """multiworker.train under a local two-replica strategy: an interrupted run resumes from its checkpoint and
    writes the same run directory as the fit path."""
    run = tmp_path / "run"
    cfg = TrainConfig(model="din", dataset=small_dataset, run_dir=str(run), epochs=2, steps_per_epoch=2,
                      batch_size=128)
    strategy = _local(["/cpu:0", "/cpu:1"])
    real = mw.CustomLoop.train_epoch

    def interrupted(self, epoch, guard=None):
        if epoch == 1:
            raise _Interrupt
        return real(self, epoch, guard)

    monkeypatch.setattr(mw.CustomLoop, "train_epoch", interrupted)
    with pytest.raises(_Interrupt):
        mw.train(cfg, SMALL, log=lambda *a: None, strategy=strategy)
    assert [e["epoch"] for e in cb.read_epochs(str(run))] == [1] and not (run / "metrics.json").exists()
    monkeypatch.setattr(mw.CustomLoop, "train_epoch", real)
    logs = []
    result = mw.train(cfg, SMALL, log=logs.append, strategy=strategy)
    assert any("resumed from" in line and "after epoch 1" in line for line in logs), logs
    epochs = cb.read_epochs(str(run))
    assert [e["epoch"] for e in epochs] == [1, 2] and result["epochs_run"] == 2
    for name in ("config.json", "epochs.jsonl", "best.weights.h5", "best.json", "metrics.json", "tensorboard"):
        assert (run / name).exists(), name
    assert {"auc", "loss", "val_auc", "val_loss"} <= set(epochs[0])
    assert result["best_epoch"] == max(epochs, key=lambda e: e["val_auc"])["epoch"]  # validation, never test
    assert result["replicas"] == 2 and result["global_batch"] == 256 and {"auc", "gauc_user"} <= set(result["test"])
    check_stored_dice_statistics(run, small_dataset)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _h5_arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.slow  # subprocess training; still runs by default (.ci/run: pytest tests/)
def test_two_worker_job_with_tf_config(small_dataset, tmp_path):
    """Two `run.train` processes form a MultiWorkerMirroredStrategy cluster; both finish, the chief writes the run
    directory, and both workers end with identical weights (gradients were all-reduced across processes; with lazy
    Adam, the embedding tables' IndexedSlices by the collective all-gather)."""
    run = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    cmd = [sys.executable, "-m", "run.train", "--model=din", f"--dataset={small_dataset}", f"--run_dir={run}",
           "--epochs=2", "--steps_per_epoch=2", "--batch_size=256", "--emb_dim=4", "--dnn_units=8",
           "--att_units=4", "--optimizer=lazy_adam"]
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "2 replica(s) on 2 worker(s), global batch 512" in outs[0]
    with open(run / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["workers"] == 2 and metrics["replicas"] == 2 and {"auc", "logloss"} <= set(metrics["test"])
    other = run / "workertemp_1"
    assert not (other / "metrics.json").exists() and not (other / "backup").exists()
    assert cb.read_epochs(str(run)) == cb.read_epochs(str(other))  # global validation metrics on both workers
    chief, worker = _h5_arrays(run / "best.weights.h5"), _h5_arrays(other / "best.weights.h5")
    assert chief.keys() == worker.keys() and len(chief) > 10
    for name in chief:
        np.testing.assert_array_equal(chief[name], worker[name], err_msg=name)


def test_malformed_tf_config_is_refused(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        mw.tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker",
                                                                                         "index": 3}}))
    with pytest.raises(ValueError, match="not in its cluster"):
        mw.tf_config()
