"""Building blocks shared by every model: MLP, Dice, the frozen vector table, masking helpers."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

PACKAGE = "mmctr_tf"


def serializable(cls):
    """Registers a layer/model under the `mmctr_tf` package so saved models reload by name."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def sequence_mask(hist_len, seq_len: int):
    """[B, L] bool: slot j is a real behaviour iff j < hist_len (right padding, SPEC §1)."""
    return tf.sequence_mask(tf.cast(hist_len, tf.int32), seq_len)


def masked_mean(x, mask, axis: int = 1):
    """Mean of x [B, L, d] over valid slots; 0 (not NaN) when no slot is valid."""
    m = tf.cast(mask, x.dtype)[..., None]
    total = tf.reduce_sum(x * m, axis=axis)
    count = tf.reduce_sum(m, axis=axis)
    return total / tf.maximum(count, 1.0)


def safe_cosine(a, b, axis: int = -1, eps: float = 1e-12):
    """Cosine similarity that is 0 (not NaN) when either vector is zero (a missing modality, an all-zero ReLU
    output), with a finite gradient there too: both sides are l2-normalised with rsqrt(max(sum x^2, eps)), so sqrt is
    never evaluated at 0 (its gradient there is inf, and inf * 0 = NaN poisons XLA-compiled training).
    Computed and returned in float32 whatever the inputs' dtype (in float16, eps = 1e-12 rounds to 0)."""
    a = tf.math.l2_normalize(tf.cast(a, tf.float32), axis=axis, epsilon=eps)
    b = tf.math.l2_normalize(tf.cast(b, tf.float32), axis=axis, epsilon=eps)
    return tf.reduce_sum(a * b, axis=axis)


# Dice layers recording their input moments (`recording_dice_moments`): id(layer) -> list of per-call records
_DICE_RECORDS = {}


@serializable
class Dice(keras.layers.Layer):
    """Dice activation (DIN paper): p = sigmoid(BN(x)) without centre/scale, out = p x + (1 - p) alpha x,
    per-channel alpha initialised to 0 (SPEC §6).

    Training normalises x with the batch's mean and variance, inference with BN's stored moving ones. Keras'
    moving averages (momentum 0.99 from a variance of 1) are still far from the inputs' statistics after the few
    hundred steps of a small dataset, so the trainer re-estimates them on training batches before every
    validation (`mmctr_tf.training.callbacks.DiceStatistics`). Inside `recording_dice_moments`, this layer
    normalises with the batch statistics (as in training, the stored ones untouched) and records its input's
    count and per-channel sum and sum of squares (float64, from the batch moments).
    """

    def __init__(self, epsilon: float = 1e-8, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.bn = keras.layers.BatchNormalization(center=False, scale=False, epsilon=epsilon)

    def build(self, input_shape):
        self.alpha = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="alpha")
        self.bn.build(input_shape)

    def call(self, x, training=None):
        records = _DICE_RECORDS.get(id(self))
        if records is None:
            z = self.bn(x, training=training)
        else:
            xf = tf.cast(x, tf.float32)
            mean, var = tf.nn.moments(xf, list(range(len(x.shape) - 1)))
            z = tf.cast(tf.nn.batch_normalization(xf, mean, var, None, None, self.epsilon), x.dtype)
            n = tf.cast(tf.size(xf) // tf.shape(xf)[-1], tf.float64)
            mean, var = tf.cast(mean, tf.float64), tf.cast(var, tf.float64)
            records.append((n, n * mean, n * (var + mean * mean)))
        p = tf.sigmoid(z)
        return p * x + (1.0 - p) * self.alpha * x

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def dice_layers(model) -> list:
    """Every Dice layer inside `model` (Keras has no public recursive listing of sub-layers)."""
    return [layer for layer in model._flatten_layers() if isinstance(layer, Dice)]


@contextlib.contextmanager
def recording_dice_moments(layers):
    """While active, each layer of `layers` (Dice) normalises with batch statistics and records, per call, its
    input's (count, per-channel sum, per-channel sum of squares) in float64; yields one list of records per layer.
    Use it around a trace of the model (the records are the traced tensors)."""
    records = [[] for _ in layers]
    _DICE_RECORDS.update({id(layer): rec for layer, rec in zip(layers, records)})
    try:
        yield records
    finally:
        for layer in layers:
            _DICE_RECORDS.pop(id(layer), None)


def make_activation(name: str):
    if name == "dice":
        return Dice()
    if name == "prelu":
        return PReLU()
    return keras.layers.Activation(name)


@serializable
class PReLU(keras.layers.Layer):
    """PReLU with one learnable slope per channel (last axis): out = max(0, x) + alpha min(0, x), alpha initialised
    to 0.25 (He et al. 2015; the PReLU of the DIN paper). `keras.layers.PReLU` learns one slope per element of
    `input_shape[1:]`, so it cannot be built for [B, L, units] attention activations with an unknown L (the
    "cannot add new elements of state" crash of `att_activation="prelu"`), and for a known L it would learn a slope
    per history slot."""

    def build(self, input_shape):
        self.alpha = self.add_weight(shape=(input_shape[-1],), initializer=keras.initializers.Constant(0.25),
                                     name="alpha")

    def call(self, x):
        return tf.nn.relu(x) - self.alpha * tf.nn.relu(-x)


@serializable
class MLP(keras.layers.Layer):
    """Stack of Dense layers with an activation (relu | dice | prelu | ...) and optional dropout.

    `output_units` adds a final linear layer (e.g. 1 for a logit)."""

    def __init__(self, units=(200, 80), activation: str = "relu", dropout: float = 0.0,
                 output_units: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(int(u) for u in units)
        self.activation = activation
        self.dropout = float(dropout)
        self.output_units = int(output_units)
        self.dense = [keras.layers.Dense(u) for u in self.units]
        self.acts = [make_activation(activation) for _ in self.units]
        self.drops = [keras.layers.Dropout(self.dropout) for _ in self.units] if self.dropout > 0 else []
        self.out = keras.layers.Dense(self.output_units) if self.output_units else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, act in zip(self.dense, self.acts):
            dense.build(shape)
            shape = shape[:-1] + (dense.units,)
            act.build(shape)
        if self.out is not None:
            self.out.build(shape)

    def call(self, x, training=None):
        if not self.dense:
            return self.out(x) if self.out is not None else x
        return self.after_first_dense(self.dense[0](x), training=training)

    def after_first_dense(self, h, training=None):
        """The MLP from the output of its first Dense layer on (lets a caller compute that layer's affine map in a
        cheaper, mathematically equal way, see `TargetAttention`)."""
        for i in range(len(self.dense)):
            if i:
                h = self.dense[i](h)
            h = self.acts[i](h, training=training) if self.activation == "dice" else self.acts[i](h)
            if self.drops:
                h = self.drops[i](h, training=training)
        return self.out(h) if self.out is not None else h

    def get_config(self):
        return {**super().get_config(), "units": list(self.units), "activation": self.activation,
                "dropout": self.dropout, "output_units": self.output_units}


@serializable
class FrozenVectorTable(keras.layers.Layer):
    """Item-indexed frozen modality vectors stored inside the model (non-trainable weights), so an exported
    SavedModel carries them and a request needs only ids (SPEC §1).

    storage: float32 | float16 | int8 (int8 with a per-row float32 scale, dequantised on lookup).
    Returns `(vectors float32 [..., dim], present float32 [...])`; ids outside [0, rows) map to row 0 (zeros, not
    present). `inverse_norms=True` also keeps 1 / |v| per row (of the stored, dequantised row; 0 for a zero row,
    as `safe_cosine`), derived when the table is set or loaded: `cosines` then gives cosines of looked-up vectors
    as a dot product and two per-row factors, never normalising the looked-up vectors.
    """

    def __init__(self, rows: int, dim: int, storage: str = "float32", inverse_norms: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.dim, self.storage = int(rows), int(dim), storage
        self.inverse_norms = bool(inverse_norms)
        if storage not in ("float32", "float16", "int8"):
            raise ValueError(f"FrozenVectorTable: unknown storage '{storage}'")
        self.trainable = False

    def build(self, input_shape=None):
        # autocast=False: under a mixed precision policy the stored values are read as stored (call casts them to
        # float32), not rounded to float16 first
        def weight(name, shape, dtype="float32", init="zeros"):
            return self.add_weight(shape=shape, dtype=dtype, initializer=init, trainable=False, autocast=False,
                                   name=name)

        self.values = weight("values", (self.rows, self.dim), self.storage)
        self.scale = weight("scale", (self.rows,), init="ones") if self.storage == "int8" else None
        self.present = weight("present", (self.rows,))
        self.inv_norm = weight("inv_norm", (self.rows,)) if self.inverse_norms else None

    def set_table(self, table) -> None:
        """Loads a `mmctr_tf.data.tables.VectorTable` (converted to this layer's storage if needed)."""
        from mmctr_tf.data.tables import quantize

        if not self.built:
            self.build()
        if table.rows != self.rows or table.dim != self.dim:
            raise ValueError(f"{self.name}: table is {table.rows}x{table.dim}, layer expects {self.rows}x{self.dim}")
        if table.dtype != self.storage:
            table = quantize(table.dequantize(), table.present, self.storage)
        self.values.assign(np.asarray(table.values))
        if self.scale is not None:
            self.scale.assign(np.asarray(table.scale, np.float32))
        self.present.assign(np.asarray(table.present, np.float32))
        self._set_inverse_norms()

    def _set_inverse_norms(self):
        if self.inv_norm is not None:  # safe_cosine's 1 / sqrt(max(|v|^2, 1e-12)): 0 for a zero row
            sq = np.square(self.get_table().dequantize(), dtype=np.float64).sum(1)
            self.inv_norm.assign(np.where(sq > 0, 1.0 / np.sqrt(np.maximum(sq, 1e-12)), 0.0).astype(np.float32))

    def _table_weights(self):
        """What a weights file holds: the table itself; inv_norm is derived from it (recomputed on loading), so
        checkpoints are the same with or without it."""
        return [w for w in self.weights if w is not self.inv_norm]

    def save_own_variables(self, store):
        for i, w in enumerate(self._table_weights()):
            store[str(i)] = w

    def load_own_variables(self, store):
        weights = self._table_weights()
        if len(store.keys()) != len(weights):
            raise ValueError(f"{self.name}: the weights file holds {len(store.keys())} variables for this table, "
                             f"expected {len(weights)} ({', '.join(w.name for w in weights)})")
        for i, w in enumerate(weights):
            w.assign(store[str(i)])
        self._set_inverse_norms()

    def get_table(self):
        """The stored table as a `mmctr_tf.data.tables.VectorTable` (in this layer's storage)."""
        from mmctr_tf.data.tables import VectorTable

        return VectorTable(np.asarray(self.values.numpy()), np.asarray(self.present.numpy()) > 0,
                           None if self.scale is None else np.asarray(self.scale.numpy()))

    def call(self, ids):
        ids = tf.where((ids < 0) | (ids >= self.rows), tf.zeros_like(ids), ids)
        v = tf.cast(tf.gather(self.values, ids), tf.float32)
        if self.scale is not None:
            v = v * tf.gather(self.scale, ids)[..., None]
        return v, tf.gather(self.present, ids)

    def cosines(self, ids_a, a, ids_b, b):
        """cos(a, b) [...] float32 of vectors a, b [..., dim] looked up in this table at ids_a, ids_b: (a . b) times
        the stored inverse norms of both rows (needs inverse_norms=True), so no vector is normalised per call;
        equal to `safe_cosine(a, b)` up to rounding, 0 where either vector is zero, and exactly 1 for a row with
        itself (rounding would otherwise leave an item repeated in the history just below 1)."""
        def clip(ids):
            return tf.where((ids < 0) | (ids >= self.rows), tf.zeros_like(ids), ids)

        ids_a, ids_b = clip(ids_a), clip(ids_b)
        inv_a = tf.gather(self.inv_norm, ids_a)
        dots = tf.reduce_sum(tf.cast(a, tf.float32) * tf.cast(b, tf.float32), -1)
        cos = dots * inv_a * tf.gather(self.inv_norm, ids_b)
        return tf.where(tf.equal(ids_a, ids_b) & (inv_a > 0), tf.ones_like(cos), cos)

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "dim": self.dim, "storage": self.storage,
                "inverse_norms": self.inverse_norms}
