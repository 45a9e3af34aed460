"""BST (Behavior Sequence Transformer, Chen et al., DLP-KDD 2019) as a sequence backbone.

Same interface as every backbone in `mmctr_tf.layers.backbones`:
    call(target [B, dt], hist [B, L, dt], mask [B, L] bool, training) -> h [B, 2 * dt]
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from mmctr_tf.layers.core import masked_mean, serializable


@serializable
class TransformerBlock(keras.layers.Layer):
    """Post-LN transformer encoder block (as in BST): x = LN(x + Drop(MHA(x, x, key mask)));
    x = LN(x + Drop(FFN(x))), FFN = Dense(ff_units, LeakyReLU) -> Dense(d)."""

    def __init__(self, num_heads: int = 2, ff_units: Optional[int] = None, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.ff_units = None if ff_units is None else int(ff_units)
        self.dropout = float(dropout)
        self.mha = None  # key_dim and widths depend on the token width: created in build
        self.ln1 = keras.layers.LayerNormalization(name="ln1")
        self.ln2 = keras.layers.LayerNormalization(name="ln2")
        self.drop = keras.layers.Dropout(self.dropout)

    def build(self, input_shape, key_mask_shape=None):
        d = int(input_shape[-1])
        key_dim = max(1, d // self.num_heads)
        self.mha = keras.layers.MultiHeadAttention(self.num_heads, key_dim, dropout=self.dropout, name="mha")
        self.mha.build(input_shape, input_shape)
        ff = self.ff_units or 4 * d
        self.ff1 = keras.layers.Dense(ff, activation="leaky_relu", name="ff1")
        self.ff1.build(input_shape)
        self.ff2 = keras.layers.Dense(d, name="ff2")
        self.ff2.build(tuple(input_shape[:-1]) + (ff,))
        self.ln1.build(input_shape)
        self.ln2.build(input_shape)

    def call(self, x, key_mask, training=None):
        att = self.mha(x, x, value_mask=key_mask, training=training)
        x = self.ln1(x + self.drop(att, training=training))
        ff = self.ff2(self.ff1(x))
        return self.ln2(x + self.drop(ff, training=training))

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "ff_units": self.ff_units,
                "dropout": self.dropout}


@serializable
class BSTBackbone(keras.layers.Layer):
    """BST: a transformer over [history tokens ; target token], padding masked.

    Tokens: the L history id embeddings followed by the target's id embedding, each plus a learned positional
    embedding. Positions are *recency* indices, not slot indices: the most recent behaviour (slot hist_len-1 of the
    right-padded history) gets position 0, the one before position 1, ..., and the target its own position L, so a
    position means the same thing for a user with 3 behaviours and one with 50 (BST uses the time gap to the target
    for the same purpose; recency is what the data contract guarantees).

    Masking: padded slots are masked as attention keys in every block and excluded from the pooling, so their
    content never changes the output; the target token is always a valid key, so an empty history still gives a
    finite output (the target attends to itself, the pooled history is 0).

    Output: concat(transformer output at the target token, masked mean of the history outputs) -> [B, 2 * dt].
    (BST itself flattens all outputs into its MLP; a fixed-size output keeps the backbone interface.)

    Args:
      seq_len: L (size of the positional table is L + 1).
      num_heads, num_blocks: transformer shape (BST: 8 heads, 1 block; key_dim = dt // num_heads).
      ff_units: FFN width (default 4 * dt).
      dropout: attention / residual dropout.
    """

    def __init__(self, seq_len: int, num_heads: int = 2, num_blocks: int = 1, ff_units: Optional[int] = None,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.seq_len = int(seq_len)
        self.num_heads = int(num_heads)
        self.num_blocks = int(num_blocks)
        self.ff_units = None if ff_units is None else int(ff_units)
        self.dropout = float(dropout)
        self.blocks = [TransformerBlock(self.num_heads, self.ff_units, self.dropout, name=f"block_{i}")
                       for i in range(self.num_blocks)]

    def build(self, target_shape, hist_shape=None, mask_shape=None):
        d = int(target_shape[-1])
        self.pos_emb = self.add_weight(shape=(self.seq_len + 1, d), initializer="glorot_uniform", name="pos_emb")
        for block in self.blocks:
            block.build((None, self.seq_len + 1, d))

    def call(self, target, hist, mask, training=None):
        L = self.seq_len
        mask = tf.cast(mask, tf.bool)
        hist_len = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)  # right padding: slots < hist_len are valid
        recency = tf.clip_by_value(hist_len[:, None] - 1 - tf.range(L)[None, :], 0, L - 1)  # [B, L]
        hist = hist * tf.cast(mask, hist.dtype)[..., None] + tf.gather(self.pos_emb, recency)
        x = tf.concat([hist, (target + self.pos_emb[L])[:, None, :]], axis=1)  # [B, L + 1, d]
        key_mask = tf.concat([mask, tf.ones_like(mask[:, :1])], axis=1)
        for block in self.blocks:
            x = block(x, key_mask, training=training)
        return tf.concat([x[:, L, :], masked_mean(x[:, :L, :], mask)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "seq_len": self.seq_len, "num_heads": self.num_heads,
                "num_blocks": self.num_blocks, "ff_units": self.ff_units, "dropout": self.dropout}
