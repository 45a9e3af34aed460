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
        self.mlp.build((None, None, 4 * int(keys_shape[-1])))

    def first_layer(self, query, keys):
        """W [q ; k ; q - k ; q * k] + b of the MLP's first Dense layer, computed as
        q (W_q + W_d) + k (W_k - W_d) + (q * k) W_p + b: equal to the concatenated form, but the query part is
        computed once per example instead of once per history slot and the [B, L, 4d] input is never built."""
        dense = self.mlp.dense[0]
        w_q, w_k, w_d, w_p = tf.split(tf.convert_to_tensor(dense.kernel), 4, axis=0)
        per_example = tf.matmul(query, w_q + w_d) + dense.bias  # [B, u]
        per_slot = (tf.einsum("bld,du->blu", keys, w_k - w_d)
                    + tf.einsum("bld,du->blu", tf.expand_dims(query, 1) * keys, w_p))
        return per_slot + tf.expand_dims(per_example, 1)

    def call(self, query, keys, mask, values=None, training=None):
        values = keys if values is None else values
        # squeeze, not [..., 0]: a strided slice's gradient is slow on CPU
        scores = tf.squeeze(self.mlp.after_first_dense(self.first_layer(query, keys), training=training), -1)  # [B, L]
        if self.normalization == "softmax":
            scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
            weights = tf.nn.softmax(scores, axis=-1)
            weights = tf.where(mask, weights, tf.zeros_like(weights))  # all-padding row -> zeros
        else:
            weights = tf.where(mask, scores, tf.zeros_like(scores))
        pooled = tf.einsum("bl,bld->bd", weights, values)
        return pooled, weights

    def get_config(self):
        return {**super().get_config(), "units": list(self.units), "activation": self.activation,
                "normalization": self.normalization}
