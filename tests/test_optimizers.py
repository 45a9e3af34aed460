"""Lazy Adam (`mmctr_tf.training.optimizers`): Adam's result when every row is touched, untouched rows and slots left
alone, two replicas, save/resume (BackupAndRestore in `fit`, the multi-worker loop's checkpoint), XLA, and the
`--optimizer` flag through run.train's config."""

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from conftest import REPO

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.models import build_model
from mmctr_tf.training import multiworker as mw
from mmctr_tf.training.optimizers import LazyAdam, make_optimizer
from mmctr_tf.training.trainer import TrainConfig, make_strategy, train
from run import common

V, D = 12, 3


def _schedule(decay_steps=2):
    return keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=decay_steps, decay_rate=0.5, staircase=True)


def _table_model(seed=0):
    """ids [B, 2] -> embedding table [V, D] -> dense -> [B]: the table's gradient is a tf.IndexedSlices."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((2,), dtype="int64")
    h = keras.layers.Flatten()(keras.layers.Embedding(V, D, name="table")(ids))
    return keras.Model(ids, keras.layers.Dense(1, name="dense")(h))


def _batches(steps, touch_all, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ids = rng.integers(1, V // 2, size=(6, 2)) if not touch_all else rng.integers(0, V, size=(V, 2))
        if touch_all:
            ids[:, 0] = rng.permutation(V)  # every row at least once, several twice
        out.append((ids, rng.normal(size=(len(ids), 1)).astype("float32")))
    return out


def _train(model, optimizer, batches, dense=False):
    """Steps of `optimizer` on a squared error; `dense`: the table's IndexedSlices gradient made a dense tensor."""
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)  # the table's; the sparse path is the one under test
        if dense:
            grads = [tf.convert_to_tensor(g) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return model


def _slots(optimizer, model):
    """{(slot, variable): value} of Adam's momentum and velocity slots."""
    names = [v.path for v in model.trainable_variables]
    return {(kind, n): s.numpy() for kind, slots in (("m", optimizer._momentums), ("v", optimizer._velocities))
            for n, s in zip(names, slots)}


def test_lazy_adam_is_adam_when_every_row_is_touched():
    """Five steps over a schedule that halves the rate every 2 steps, each batch touching every table row (some
    twice): the table, the dense layer and both slots equal keras.optimizers.Adam's bit for bit. The reference gets
    the table's gradient as a dense tensor: given the IndexedSlices, Keras 3.15's Adam squares each occurrence of a
    repeated row before adding them (`ops.square` maps over the slices' values), so its v is not Adam's there."""
    batches = _batches(5, touch_all=True)
    ref, lazy = _table_model(), _table_model()
    adam, lazy_adam = keras.optimizers.Adam(_schedule()), LazyAdam(_schedule())
    _train(ref, adam, batches, dense=True)
    _train(lazy, lazy_adam, batches)
    for a, b in zip(ref.trainable_variables, lazy.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    sa, sl = _slots(adam, ref), _slots(lazy_adam, lazy)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sl[key], err_msg=str(key))
    assert not np.allclose(ref.get_layer("table").embeddings.numpy(), _table_model().get_layer("table").embeddings)


def _numpy_lazy_adam(table, batches_grads, lr_at, b1=0.9, b2=0.999, eps=1e-7):
    """Lazy Adam written out in numpy from Kingma & Ba's Algorithm 1 (bias-corrected m-hat and v-hat; Keras adds
    epsilon to sqrt(v) before the bias correction, i.e. eps / sqrt(1 - b2^t) in this form) on the rows each step's
    gradient names; every other row and its moments are left as they are."""
    x, m, v = table.astype(np.float64), np.zeros_like(table, np.float64), np.zeros_like(table, np.float64)
    for t, (rows, g) in enumerate(batches_grads, start=1):
        dense = np.zeros_like(x)
        np.add.at(dense, rows, g)
        r = np.unique(rows)
        m[r] = b1 * m[r] + (1 - b1) * dense[r]
        v[r] = b2 * v[r] + (1 - b2) * dense[r] ** 2
        m_hat, v_hat = m[r] / (1 - b1 ** t), v[r] / (1 - b2 ** t)
        x[r] -= lr_at(t - 1) * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - b2 ** t))
    return x, m, v


def test_untouched_rows_and_their_slots_are_unchanged():
    """Batches that use rows 1..5 of 12: rows 0 and 6..11 keep their initial value and zero slots; the touched rows
    follow a numpy lazy Adam (m-hat / v-hat form) step by step."""
    batches = _batches(4, touch_all=False, seed=1)
    model, opt = _table_model(), LazyAdam(_schedule())
    table0 = model.get_layer("table").embeddings.numpy()
    grads = []
    for x, y in batches:  # the table's gradient rows, from the same forward pass as the optimizer sees
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        g = tape.gradient(loss, model.get_layer("table").embeddings)
        grads.append((g.indices.numpy(), g.values.numpy()))
        _train(model, opt, [(x, y)])
    table = model.get_layer("table").embeddings.numpy()
    slots = _slots(opt, model)
    m, v = slots[("m", "table/embeddings")], slots[("v", "table/embeddings")]
    untouched = np.setdiff1d(np.arange(V), np.concatenate([r for r, _ in grads]))
    assert set(untouched) >= {0, 6, 7, 8, 9, 10, 11}
    np.testing.assert_array_equal(table[untouched], table0[untouched])
    assert not m[untouched].any() and not v[untouched].any()
    x, m_np, v_np = _numpy_lazy_adam(table0, grads, lambda step: 0.05 * 0.5 ** (step // 2))
    np.testing.assert_allclose(table, x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m, m_np, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(v, v_np, rtol=1e-5, atol=1e-12)


class SpyLazyAdam(LazyAdam):
    """Records the type of every gradient `update_step` receives (at trace time)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = set()

    def update_step(self, gradient, variable, learning_rate):
        self.seen.add((variable.name, type(gradient).__name__))
        return super().update_step(gradient, variable, learning_rate)


def _fit(model, optimizer, batches, epochs=1, callbacks=(), jit_compile=False):
    """Keras fit over `batches` (one epoch = one pass, the same order every epoch)."""
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(batches[0][0])).repeat()
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    model.fit(ds, epochs=epochs, steps_per_epoch=len(batches), verbose=0, callbacks=list(callbacks), shuffle=False)
    return model


def test_two_replica_fit_all_reduces_indexed_slices():
    """`fit` under the trainer's two-replica MirroredStrategy: the table's gradient reaches the optimizer as an
    all-reduced tf.IndexedSlices, the result matches one device on the same global batches, and the rows no batch
    touched keep their initial values."""
    batches = [(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
               for a, b in zip(_batches(3, False, seed=2), _batches(3, False, seed=3))]  # 12 rows: 6 per replica
    one = _fit(_table_model(), LazyAdam(_schedule()), batches)
    strategy = make_strategy(2)
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        two, spy = _table_model(), SpyLazyAdam(_schedule())
        _fit(two, spy, batches)
    table_kinds = {kind for name, kind in spy.seen if "embeddings" in name}  # tf names: table/embeddings/replica_1:0
    assert table_kinds == {"IndexedSlices"} and len(spy.seen) == 6, spy.seen  # 3 variables x 2 replicas
    for a, b in zip(one.trainable_variables, two.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6, err_msg=a.path)
    table0 = _table_model().get_layer("table").embeddings.numpy()
    untouched = np.setdiff1d(np.arange(V), np.concatenate([b[0].ravel() for b in batches]))
    assert len(untouched) >= 6
    np.testing.assert_array_equal(two.get_layer("table").embeddings.numpy()[untouched], table0[untouched])


class _Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt("simulated kill after the first epoch's backup")


def test_backup_and_restore_resumes_slots_and_step(tmp_path):
    """A fit killed after epoch 1 and resumed by BackupAndRestore (as the trainer configures it) ends exactly where
    an uninterrupted fit ends: the table, the slots and the step (bias correction, schedule) were restored."""
    batches = _batches(3, False, seed=4)
    whole = _fit(_table_model(), LazyAdam(_schedule()), batches, epochs=2)

    def backup():
        return keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False,
                                                double_checkpoint=True)

    with pytest.raises(KeyboardInterrupt):
        _fit(_table_model(), LazyAdam(_schedule()), batches, epochs=2, callbacks=[backup(), _Kill()])
    resumed_opt = LazyAdam(_schedule())
    resumed = _fit(_table_model(seed=1), resumed_opt, batches, epochs=2, callbacks=[backup()])
    assert int(resumed_opt.iterations.numpy()) == int(whole.optimizer.iterations.numpy()) == 6
    for a, b in zip(whole.optimizer.variables + whole.weights, resumed_opt.variables + resumed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_jit_compiled_fit_matches_eager_graph():
    """`fit(jit_compile=True)` compiles the lazy update (tf.unique's dynamic size included) and gives the graph
    result."""
    batches = _batches(3, False, seed=5)
    ref = _fit(_table_model(), LazyAdam(_schedule()), batches)
    xla = _fit(_table_model(), LazyAdam(_schedule()), batches, jit_compile=True)
    assert xla.jit_compile is True
    for a, b in zip(ref.trainable_variables, xla.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6, err_msg=a.path)


def _custom_loop(data, devices, per_replica_batch):
    """The multi-worker custom loop with --optimizer=lazy_adam on an in-process MirroredStrategy over `devices`
    (reduction through one device, as in tests/test_multiworker.py), training logistic regression (id weights in
    embedding tables of width 1, history ids sharing the target's: the cheapest model with IndexedSlices)."""
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    cfg = TrainConfig(model="lr", batch_size=per_replica_batch, optimizer="lazy_adam")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        net = build_model("lr", data.schema, data.tables)
    loop = mw.CustomLoop(strategy, net, data, cfg, 10, _schedule())
    assert isinstance(loop.optimizer, LazyAdam)
    return loop, net


@pytest.mark.slow
def test_custom_loop_two_replicas_and_checkpoint_resume(small_dataset, tmp_path):
    """The multi-worker loop (strategy.run + apply_gradients): two replicas on the halves of a batch train like one
    replica on the whole batch (IndexedSlices all-reduce + duplicate rows summed), and a run restored from the loop's
    tf.train.Checkpoint (model + optimizer) continues exactly like the run that saved it."""
    data = Dataset(small_dataset)
    x, y = next(iter(data.tf_dataset("train", 64)))
    whole = tf.data.Dataset.from_tensors((x, y)).repeat()
    halves = tf.data.Dataset.from_tensors((x, y)).unbatch().batch(32).repeat()

    def steps(loop, ds, n):
        loop.train_steps(iter(loop.strategy.distribute_datasets_from_function(lambda ctx: ds)), n)

    loop1, net1 = _custom_loop(data, ["/cpu:0"], 64)
    steps(loop1, whole, 3)
    loop2, net2 = _custom_loop(data, ["/cpu:0", "/cpu:1"], 32)
    steps(loop2, halves, 2)
    tf.train.Checkpoint(model=net2, optimizer=loop2.optimizer).write(str(tmp_path / "ckpt"))
    steps(loop2, halves, 1)
    for a, b in zip(net1.trainable_variables, net2.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5, err_msg=a.path)

    loop3, net3 = _custom_loop(data, ["/cpu:0", "/cpu:1"], 32)
    tf.train.Checkpoint(model=net3, optimizer=loop3.optimizer).read(str(tmp_path / "ckpt")).assert_consumed()
    assert int(loop3.optimizer.iterations.numpy()) == 2
    steps(loop3, halves, 1)
    for a, b in zip(loop2.optimizer.variables + net2.weights, loop3.optimizer.variables + net3.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


class _OptimizerSeen(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.optimizer = type(self.model.optimizer)


@pytest.mark.slow
def test_optimizer_flag_reaches_config_json(small_dataset, tmp_path):
    """--optimizer goes from the flags into TrainConfig, the trainer and config.json (the industrial config's choice:
    tests/test_industrial.py)."""
    with flagsaver.flagsaver():
        common.FLAGS.unparse_flags()
        common.FLAGS(["prog", "--model=lr", "--optimizer=lazy_adam", f"--dataset={small_dataset}",
                      f"--run_dir={tmp_path / 'r'}", "--epochs=1", "--steps_per_epoch=2", "--batch_size=64",
                      "--verbose=0"])
        cfg = common.train_config()
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd", 1e-3)
    seen = _OptimizerSeen()
    result = train(cfg, {}, log=lambda *a: None, extra_callbacks=[seen])
    assert seen.optimizer is LazyAdam
    with open(tmp_path / "r" / "config.json") as f:
        assert json.load(f)["train"]["optimizer"] == "lazy_adam"
    assert np.isfinite(result["test"]["auc"])


def test_installed_keras_is_in_the_range_setup_py_pins():
    """LazyAdam reads Adam's private `_momentums`, `_velocities` and `_get_variable_index` (checked at build): the
    tests above ran on the installed Keras, which must be the minor version setup.py pins. It serializes like any
    Keras optimizer, and refuses amsgrad."""
    with open(os.path.join(REPO, "setup.py")) as f:
        low, high = re.search(r'"keras>=([\d.]+),<([\d.]+)"', f.read()).groups()
    version = tuple(int(x) for x in keras.__version__.split(".")[:2])
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))
    opt = LazyAdam(_schedule())
    opt.build([keras.Variable(np.zeros((3, 2), "float32"))])
    assert len(opt._momentums) == len(opt._velocities) == 1
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))  # as in a .keras file
    assert type(clone) is LazyAdam and clone.get_config() == opt.get_config()
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
