"""`CTRModel`: the shared input side of every model.

It owns the schema, the id embeddings (history ids share the target's tables), and the frozen modality tables,
and turns a raw feature dict into the tensors models work on (`CTRModel.features`):

  user    [B, d]          user id embedding v_u
  target  [B, F*d]        concatenated target id embeddings v_i (item, category, ...)
  hist    [B, L, F*d]     history id embeddings v_j
  mask    [B, L] bool     valid history slots
  hist_len [B] int32
  vec     {modality: (target [B, dm], hist [B, L, dm], target_present [B], hist_present [B, L])}

Input normalisation happens here once for training and serving alike: ids outside the vocabulary become the OOV
row 0, hist_len is clipped to [0, L], and histories of any width are cut to the L most recent behaviours (or
padded), so a serving request may send longer sequences than the training data had.

Subclasses implement `score(feats, training) -> logit [B]` and may register auxiliary losses with
`self.add_loss` (logged through a `keras.metrics.Mean` tracker of their own); `call` returns the click
probability [B].
"""

from __future__ import annotations

from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from mmctr_tf.data.schema import Schema
from mmctr_tf.layers.core import FrozenVectorTable, sequence_mask


def normalize_inputs(inputs: Dict[str, tf.Tensor], schema: Schema) -> Dict[str, tf.Tensor]:
    L = schema.seq_len
    out = {}
    for name in ["user_id"] + schema.item_features:
        if name not in inputs:
            raise KeyError(f"model input is missing field '{name}'")
        x = tf.reshape(tf.cast(inputs[name], tf.int64), [-1])
        out[name] = tf.where((x < 0) | (x >= schema.vocab_of(name)), tf.zeros_like(x), x)
    # Inconsistent shapes would otherwise fail deep inside the model without naming the input (batch sizes) or
    # silently pair each history's behaviours with another's attributes (widths: each is cut to its own last L).
    # (No quotes in these messages: tf.debugging prints them escaped.)
    batch = tf.size(out["user_id"])
    checks = [tf.debugging.assert_equal(tf.size(inputs[n]), batch, message=f"model input {n} has a different "
                                        "batch size than user_id") for n in schema.item_features + ["hist_len"]]
    first = schema.hist_features[0]
    for name in schema.hist_features:
        shape = tf.shape(inputs[name])
        checks.append(tf.debugging.assert_equal(shape[0], batch, message=f"model input {name} has a different "
                                                "batch size than user_id"))
        checks.append(tf.debugging.assert_equal(shape[1], tf.shape(inputs[first])[1], message=f"model inputs "
                                                f"{name} and {first} have different widths (history lengths)"))
    with tf.control_dependencies(checks):
        out = {k: tf.identity(v) for k, v in out.items()}
        raw_len = tf.maximum(tf.reshape(tf.cast(inputs["hist_len"], tf.int64), [-1]), 0)
    hist_len = tf.minimum(raw_len, L)
    valid = tf.sequence_mask(hist_len, L)
    for name in schema.hist_features:
        x = tf.cast(inputs[name], tf.int64)
        width = tf.shape(x, out_type=tf.int64)[1]
        x = tf.pad(x, [[0, 0], [0, tf.maximum(L - width, 0)]])
        width = tf.maximum(width, L)
        start = tf.clip_by_value(tf.minimum(raw_len, width) - L, 0, width - L)
        x = tf.gather(x, start[:, None] + tf.range(L, dtype=tf.int64)[None, :], batch_dims=1)
        x = tf.where(valid & (x >= 0) & (x < schema.vocab_of(name)), x, tf.zeros_like(x))
        out[name] = tf.ensure_shape(x, [None, L])
    out["hist_len"] = hist_len
    return out


class CTRModel(keras.Model):
    """Base class; see module docstring. `schema` is a Schema or its dict; `table_storage` the storage dtype of the
    frozen tables inside the model (float32 | float16 | int8)."""

    uses_modalities = False
    table_inverse_norms = False  # models that read the tables only through cosines (FrozenVectorTable.cosines)

    def __init__(self, schema, emb_dim: int = 16, table_storage: str = "float32", modalities=None,
                 emb_l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        self.emb_dim = int(emb_dim)
        self.emb_l2 = float(emb_l2)
        self.table_storage = table_storage
        known = list(self.schema.modalities)
        self.modalities = list(known if modalities is None else modalities) if self.uses_modalities else []
        for m in self.modalities:
            if m not in known:
                raise ValueError(f"{type(self).__name__}: modality '{m}' is not in the dataset (has {known})")
        self.embeddings = {
            name: keras.layers.Embedding(self.schema.vocab_of(name), self.emb_dim, name=f"emb_{name}")
            for name in ["user_id"] + self.schema.item_features
        }
        self.tables = {
            m: FrozenVectorTable(self.schema.vocab["item_id"], self.schema.modalities[m], table_storage,
                                 inverse_norms=self.table_inverse_norms, name=f"table_{m}")
            for m in self.modalities
        }

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`; then, when the model is built, the optimizer's slot variables are created at once.
        Without a distribution strategy Keras creates them inside the first traced training step, and a tf.function
        that creates variables is traced twice: on a small Diff-MSIN the first `fit` took 19.2 s, 11.8 s with this.
        The values are the same (the slots start at zero either way). Call `compile` again after changing which
        variables are trainable, as Keras asks."""
        super().compile(*args, **kwargs)
        if self.built and self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    # -------------------------------------------------------------------------------------------- inputs
    def set_tables(self, tables) -> None:
        """Loads frozen vectors ({modality: VectorTable}) into the model."""
        for m, layer in self.tables.items():
            if m not in tables:
                raise ValueError(f"{self.name}: no table for modality '{m}'")
            layer.set_table(tables[m])

    def features(self, inputs, training=None):
        x = normalize_inputs(inputs, self.schema)
        L = self.schema.seq_len
        target = tf.concat([self.embeddings[n](x[n]) for n in self.schema.item_features], axis=-1)
        hist = tf.concat([self.embeddings[n[5:]](x[n]) for n in self.schema.hist_features], axis=-1)
        mask = sequence_mask(x["hist_len"], L)
        hist = hist * tf.cast(mask, hist.dtype)[..., None]
        user = self.embeddings["user_id"](x["user_id"])
        if training and self.emb_l2 > 0:
            # DIN's mini-batch aware regularisation: L2 on the embedding rows used by this batch only, so frequent
            # ids are penalised in proportion to how often they occur (no full-table decay per step).
            sq = (tf.reduce_sum(tf.square(user), -1) + tf.reduce_sum(tf.square(target), -1)
                  + tf.reduce_sum(tf.square(hist), [-2, -1]))
            self.add_loss(self.emb_l2 * tf.reduce_mean(sq))
        vec = {}
        for m, table in self.tables.items():  # float32 tables, served in the model's compute dtype
            tv, tp = table(x["item_id"])
            hv, hp = table(x["hist_item_id"])
            tv, hv = tf.cast(tv, self.compute_dtype), tf.cast(hv, self.compute_dtype)
            vec[m] = (tv, hv, tp, hp * tf.cast(mask, hp.dtype))
        return {"user": user, "target": target, "hist": hist, "mask": mask,
                "hist_len": tf.cast(x["hist_len"], tf.int32), "vec": vec, "ids": x}

    # -------------------------------------------------------------------------------------------- model
    def score(self, feats, training=None):
        raise NotImplementedError

    def call(self, inputs, training=None):
        logit = self.score(self.features(inputs, training=training), training=training)
        return tf.sigmoid(logit)

    def get_config(self):
        return {**super().get_config(), "schema": self.schema.to_dict(), "emb_dim": self.emb_dim, "emb_l2": self.emb_l2,
                "table_storage": self.table_storage,
                "modalities": self.modalities if self.uses_modalities else None}

    @property
    def target_dim(self) -> int:
        return self.emb_dim * len(self.schema.item_features)


def dummy_batch(schema: Schema, batch: int = 2, hist_len: Optional[int] = None) -> Dict[str, np.ndarray]:
    """A small valid input batch (used to build models before loading weights)."""
    L = schema.seq_len
    n = L if hist_len is None else hist_len
    out = {name: np.ones([batch], np.int64) for name in ["user_id"] + schema.item_features}
    for name in schema.hist_features:
        out[name] = np.zeros([batch, L], np.int64)
        out[name][:, :n] = 1
    out["hist_len"] = np.full([batch], n, np.int64)
    return out
