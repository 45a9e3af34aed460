"""Target attention (DIN's local activation unit), shared by DIN, the naive multimodal baseline, and Diff-MSIN
eq. (2)."""

from __future__ import annotations

import keras
import tensorflow as tf

from mmctr_tf.layers.core import MLP, serializable


@serializable
class TargetAttention(keras.layers.Layer):
    """DIN activation unit: score_j = MLP([q, k_j, q - k_j, q * k_j]) (80-40-1), padding masked.

    normalization="none" (DIN paper, DeepCTR default): weights are the raw scores with padded slots set to 0, so
    the pooled vector keeps the intensity of the user's interest. normalization="softmax" (FuxiCTR/EasyRec default):
    softmax over valid slots (large negative mask). Either way an empty history gives a zero vector, never NaN.

    A masked slot counts as a zero key (k_j = 0): its value never reaches the output, and where the activation
    takes batch statistics (Dice) the slot enters them with k_j = 0. Every model passes zero vectors there anyway
    (padded id embeddings are zeroed, padded and missing rows of the frozen tables are zero).

    Cheaper exact form (`first_layer`): the first Dense layer of the MLP on [q ; k ; q - k ; q * k] is split into a
    per-example term and per-slot terms, and the per-slot terms are computed for the valid slots only. With an
    activation without batch statistics (sigmoid, PReLU, ...) the whole MLP then runs on the valid slots only;
    with Dice, whose batch normalisation takes its statistics over all B x L slots (padding included), it runs
    on all slots, a padded slot's first-layer output being the per-example term alone.

    call(query [B, d], keys [B, L, d], mask [B, L], values [B, L, dv] = keys) -> (pooled [B, dv], weights [B, L])
    """

    def __init__(self, units=(80, 40), activation: str = "dice", normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        if normalization not in ("none", "softmax"):
            raise ValueError(f"TargetAttention: normalization must be 'none' or 'softmax', got '{normalization}'")
        self.units = tuple(units)
        self.activation = activation
        self.normalization = normalization
        self.mlp = MLP(self.units, activation=activation, output_units=1)

    def build(self, query_shape, keys_shape, mask_shape=None, values_shape=None):
        self.mlp.build((None, 4 * int(keys_shape[-1])))

    @property
    def all_slots(self) -> bool:
        """Whether the MLP must run on every slot: Dice's batch statistics include the padded ones."""
        return self.activation == "dice"

    def first_layer(self, query, keys, valid):
        """W [q ; k ; q - k ; q * k] + b of the MLP's first Dense layer, computed as
        q (W_q + W_d) + b  +  k (W_k - W_d) + (q * k) W_p: equal to the concatenated form, but the query part is
        computed once per example, the key parts only for the valid slots `valid` ([N, 2] (example, slot) indices),
        and the [B, L, 4d] input is never built. Returns (per-example term [B, u], per-slot terms [N, u])."""
        dense = self.mlp.dense[0]
        w_q, w_k, w_d, w_p = tf.split(tf.convert_to_tensor(dense.kernel), 4, axis=0)
        per_example = tf.matmul(query, w_q + w_d) + dense.bias
        k = tf.gather_nd(keys, valid)  # [N, d]
        per_slot = tf.matmul(k, w_k - w_d) + tf.matmul(tf.gather(query, valid[:, 0]) * k, w_p)
        return per_example, per_slot

    def call(self, query, keys, mask, values=None, training=None):
        values = keys if values is None else values
        mask = tf.cast(mask, tf.bool)
        valid = tf.where(mask)  # [N, 2] int64
        per_example, per_slot = self.first_layer(query, keys, valid)
        shape = tf.shape(mask, out_type=tf.int64)  # [B, L]
        if self.all_slots:
            h = tf.scatter_nd(valid, per_slot, tf.concat([shape, tf.shape(per_slot, out_type=tf.int64)[1:]], 0))
            h = tf.reshape(h + per_example[:, None, :], [-1, per_slot.shape[-1]])  # [B L, u]: padded = per-example
            scores = tf.reshape(self.mlp.after_first_dense(h, training=training), shape)  # [B, L]
        else:
            h = per_slot + tf.gather(per_example, valid[:, 0])  # [N, u]
            # squeeze, not [..., 0]: a strided slice's gradient is slow on CPU
            scores = tf.scatter_nd(valid, tf.squeeze(self.mlp.after_first_dense(h, training=training), -1), shape)
        if self.normalization == "softmax":
            big = -1e9 if scores.dtype == tf.float32 else -3e4  # float16 cannot hold -1e9
            scores = tf.where(mask, scores, tf.fill(tf.shape(scores), tf.cast(big, scores.dtype)))
            weights = tf.nn.softmax(scores, axis=-1)
            weights = tf.where(mask, weights, tf.zeros_like(weights))  # all-padding row -> zeros
        else:
            weights = tf.where(mask, scores, tf.zeros_like(scores))
        pooled = tf.einsum("bl,bld->bd", weights, values)
        return pooled, weights

    def get_config(self):
        return {**super().get_config(), "units": list(self.units), "activation": self.activation,
                "normalization": self.normalization}
