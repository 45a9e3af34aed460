"""Optimizers of the trainer (`--optimizer`): Keras' Adam, and a lazy Adam whose cost follows the batch, not the
vocabulary.

Why a lazy Adam. An embedding lookup's gradient is a `tf.IndexedSlices` (the rows the batch read and their
gradients), but Keras 3's Adam (`keras.optimizers.Adam.update_step`) computes `m += (g - m) * (1 - beta_1)` and
`v += (g^2 - v) * (1 - beta_2)` with dense ops, so every step reads and writes the whole table and both of its slots
(keras-team/keras#19992: `m * (1 - b1)` materialises a table-sized tensor). On a 1M x 16 table at batch 2048 that
step took 335 ms against 22 ms for SGD (measured for issue #18), and it grows with the vocabulary, not the batch.
The DMAE paper's industrial setup (10.1M users, 1.65M items) cannot be trained that way.

`LazyAdam` is `keras.optimizers.Adam` with one change: for a gradient that arrives as `tf.IndexedSlices` (embedding
tables), m, v and the variable are updated on the rows the batch touched only, with exactly Adam's arithmetic on
those rows (same bias correction from the global step, same learning-rate schedule); rows the batch did not touch
keep their value and their slots (their moments are not decayed: the "lazy" part, as TensorFlow Addons' LazyAdam and
TF1's `LazyAdamOptimizer`). Every dense gradient (MLPs, attention, small tables read densely) goes through Adam's own
`update_step`. When a batch touches every row of a table the result is Adam's, bit for bit: the touched rows are
updated by the same float operations (tests/test_optimizers.py compares with `keras.optimizers.Adam` given the
table's gradient as a dense tensor). Keras 3.15's Adam given the IndexedSlices itself is not quite Adam: its
`ops.square(gradient)` maps over the slices' values, so a row that occurs k times in a batch adds the sum of its k
squared gradients to v instead of the square of their sum (m is right). `--optimizer=adam` trains with that
behaviour (every history id repeated in a batch, padding row 0 included); lazy Adam uses Adam's v.

Duplicate ids in a batch (an item in many histories) are summed first (`tf.unique` + `unsorted_segment_sum`, per row
in batch order, like the dense conversion of the IndexedSlices), then each touched row is updated once with the
scatter ops of Keras' TF optimizer (`assign_add` / `assign_sub` of an IndexedSlices -> `scatter_add` /
`scatter_sub`). Under `tf.distribute` the gradient all-reduce of an IndexedSlices concatenates the replicas' rows
(MirroredStrategy, MultiWorkerMirroredStrategy's all-gather), and the sum above merges rows two replicas share.
The step compiles with XLA (`--jit_compile`, with `tf.unique`'s dynamic size; tested on CPU).

The slots are Adam's own (`momentum`, `velocity`, same names and order), so BackupAndRestore, `tf.train.Checkpoint`
and `.keras` files hold the same variables as with Adam. Reaching them needs three private members of Keras' Adam,
the ones its own `update_step` uses (`_momentums`, `_velocities`, `_get_variable_index`, the latter also in the
`keras.optimizers.Optimizer` docstring's example of a custom optimizer); `setup.py` pins Keras to the minor
version this was checked against, and `LazyAdam.build` fails with a clear message if they change.
"""

from __future__ import annotations

import keras
import tensorflow as tf

OPTIMIZERS = ("adam", "lazy_adam")


@keras.saving.register_keras_serializable(package="mmctr_tf")
class LazyAdam(keras.optimizers.Adam):
    """Adam that updates embedding tables (gradients as `tf.IndexedSlices`) on the touched rows only.

    Takes `keras.optimizers.Adam`'s arguments, except `amsgrad` (refused: its running maximum is not implemented
    for the sparse rows).

    Per touched row r, with g_r the sum of the batch's gradients for r and t = iterations + 1 (Kingma & Ba 2015,
    Algorithm 1, in Keras' form with epsilon-hat):
        m_r <- m_r + (g_r - m_r)(1 - beta_1);  v_r <- v_r + (g_r^2 - v_r)(1 - beta_2)
        x_r <- x_r - lr sqrt(1 - beta_2^t) / (1 - beta_1^t) * m_r / (sqrt(v_r) + epsilon)

    Example:
        model.compile(optimizer=LazyAdam(keras.optimizers.schedules.ExponentialDecay(1e-3, 1000, 0.9)), ...)
    """

    def __init__(self, *args, amsgrad=False, **kwargs):
        if amsgrad:
            raise ValueError("LazyAdam: amsgrad=True is not supported (use keras.optimizers.Adam)")
        super().__init__(*args, **kwargs)

    def build(self, var_list):
        super().build(var_list)
        missing = [a for a in ("_momentums", "_velocities", "_get_variable_index") if not hasattr(self, a)]
        if missing:
            raise RuntimeError(f"LazyAdam: keras {keras.__version__}'s Adam has no {', '.join(missing)}; this module "
                               f"was written against keras 3.15 (see setup.py and mmctr_tf/training/optimizers.py)")

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]

        rows, grad = sum_duplicate_rows(gradient)
        grad = tf.cast(grad, dtype)
        m_rows, v_rows = tf.gather(m, rows), tf.gather(v, rows)
        # the same float operations as Adam.update_step, on the touched rows (so a fully touched table is Adam's)
        dm = (grad - m_rows) * (1 - self.beta_1)
        dv = (tf.square(grad) - v_rows) * (1 - self.beta_2)
        m_rows, v_rows = m_rows + dm, v_rows + dv  # = the rows of m and v after the two scatters below
        self.assign_add(m, tf.IndexedSlices(dm, rows))
        self.assign_add(v, tf.IndexedSlices(dv, rows))
        self.assign_sub(variable, tf.IndexedSlices((m_rows * alpha) / (tf.sqrt(v_rows) + self.epsilon), rows))


def sum_duplicate_rows(slices: tf.IndexedSlices):
    """(unique row ids, their summed gradient rows): each row's occurrences are added in batch order, as
    `tf.convert_to_tensor(slices)` adds them."""
    rows, position = tf.unique(slices.indices)
    return rows, tf.math.unsorted_segment_sum(slices.values, position, tf.shape(rows)[0])


def make_optimizer(name: str, learning_rate):
    """The optimizer `--optimizer=name` selects, with `learning_rate` (a float or a schedule)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "lazy_adam":
        return LazyAdam(learning_rate)
    raise ValueError(f"--optimizer={name}: unknown optimizer (one of {', '.join(OPTIMIZERS)})")
