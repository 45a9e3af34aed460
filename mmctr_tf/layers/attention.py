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

    def call(self, query, keys, mask, values=None, training=None):
        values = keys if values is None else values
        L = tf.shape(keys)[1]
        q = tf.repeat(query[:, None, :], L, axis=1)
        x = tf.concat([q, keys, q - keys, q * keys], axis=-1)
        scores = self.mlp(x, training=training)[..., 0]  # [B, L]
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
