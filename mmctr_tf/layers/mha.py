"""Multi-head (cross) attention with its projections exposed, for attention applied many times per step.

`keras.layers.MultiHeadAttention` computes its projections with `EinsumDense` on [B, S, D] tensors; on CPU its
forward + backward for small token sets (Diff-MSIN's SRC: [6 x 1024, 8, 16], 8 heads) measured ~8x the cost of the
attention core itself (`/tmp` microbenchmark, fwd+bwd: 734 ms CPU vs 77 ms for the core). This layer computes the
same function (Vaswani et al. 2017, eq. 1 and the multi-head form) with plain 2-D matmuls, and exposes the steps
(`project`, `attend`, `output`) so a caller can project each input once and reuse it for several queries, and can
mix heads' outputs linearly before the (linear) output projection.

  head_h(Q, K, V) = softmax((Q W_q^h)(K W_k^h)^T / sqrt(d_k) + mask) (V W_v^h)
  MHA(Q, K, V)    = [head_1 ; ... ; head_H] W_o + b_o

Masked keys get a large negative logit; a query whose keys are all masked attends uniformly (finite output),
as Keras' layer does.

A single key (built with value_shape[-2] == 1): the softmax over one logit is 1 for every query and head, so
MHA(Q, v, v) = (v W_v + b_v) W_o + b_o whatever Q is: an affine map of v (`single_key_affine`). The query and key
projections cannot influence anything then and are not created; Diff-MSIN's SRC (one pooled vector per modality,
eq. 11) is this case.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from mmctr_tf.layers.core import serializable


def dense(x, w, b):
    """x [..., D] @ w [D, E] + b as one 2-D matmul (cheap gradient, unlike einsum on 3-D tensors on CPU)."""
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), w) + b
    return tf.reshape(y, tf.concat([shape[:-1], [w.shape[-1]]], 0))

@serializable
class MultiHeadCrossAttention(keras.layers.Layer):
    """call(query [B, Sq, Dq], value [B, Sk, Dk], value_mask [B, Sk] bool or None) -> [B, Sq, output_dim]
    (output_dim defaults to Dq, like keras.layers.MultiHeadAttention), and with `return_attention_scores` also
    the attention probabilities [B, heads, Sq, Sk]. Built for Sk = 1, it computes the single-key closed form
    (module docstring) and takes only Sk = 1."""

    def __init__(self, num_heads: int = 8, key_dim: int = 16, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.key_dim = int(num_heads), int(key_dim)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.single_key = False

    def build(self, query_shape, value_shape=None, value_mask_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        dq, dk = int(query_shape[-1]), int(value_shape[-1])
        hd = self.num_heads * self.key_dim
        out = self.output_dim or dq
        self.single_key = len(value_shape) >= 2 and value_shape[-2] == 1
        if not self.single_key:
            self.wq = self.add_weight(shape=(dq, hd), initializer="glorot_uniform", name="query_kernel")
            self.bq = self.add_weight(shape=(hd,), initializer="zeros", name="query_bias")
            self.wk = self.add_weight(shape=(dk, hd), initializer="glorot_uniform", name="key_kernel")
            self.bk = self.add_weight(shape=(hd,), initializer="zeros", name="key_bias")
        self.wv = self.add_weight(shape=(dk, hd), initializer="glorot_uniform", name="value_kernel")
        self.bv = self.add_weight(shape=(hd,), initializer="zeros", name="value_bias")
        self.wo = self.add_weight(shape=(hd, out), initializer="glorot_uniform", name="output_kernel")
        self.bo = self.add_weight(shape=(out,), initializer="zeros", name="output_bias")

    def _heads(self, x):
        """[B, S, H * d_k] -> [B, H, S, d_k]."""
        s = tf.shape(x)
        return tf.transpose(tf.reshape(x, [s[0], s[1], self.num_heads, self.key_dim]), [0, 2, 1, 3])

    def project(self, x, which: str):
        """Projection of x for "query", "key" or "value", split into heads [B, H, S, d_k]."""
        w, b = {"query": (self.wq, self.bq), "key": (self.wk, self.bk), "value": (self.wv, self.bv)}[which]
        return self._heads(dense(x, w, b))

    def attend(self, q, k, v, value_mask=None, return_weights: bool = False):
        """Heads [B, H, Sq, d_k] x [B, H, Sk, d_k] -> concatenated heads [B, Sq, H * d_k] (before W_o), and the
        attention probabilities [B, H, Sq, Sk] with `return_weights`."""
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.key_dim)  # [B, H, Sq, Sk]
        if value_mask is not None:
            scores = tf.where(tf.cast(value_mask, tf.bool)[:, None, None, :], scores,
                              tf.cast(-1e9 if scores.dtype == tf.float32 else -3e4, scores.dtype))
        weights = tf.nn.softmax(scores, axis=-1)
        out = tf.matmul(weights, v)  # [B, H, Sq, d_k]
        s = tf.shape(out)
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [s[0], s[2], self.num_heads * self.key_dim])
        return (out, weights) if return_weights else out

    def output(self, heads, bias_scale=1.0):
        """W_o projection of concatenated heads; `bias_scale` scales b_o (for a weighted sum of several
        attention outputs projected at once: sum_k a_k (o_k W_o + b_o) = (sum_k a_k o_k) W_o + (sum_k a_k) b_o)."""
        return dense(heads, self.wo, bias_scale * self.bo)

    def single_key_affine(self):
        """(W, b) with MHA(Q, v, v) = v W + b for a single key v [.., 1, Dk]: W = W_v W_o, b = b_v W_o + b_o."""
        return tf.matmul(self.wv, self.wo), tf.linalg.matvec(self.wo, self.bv, transpose_a=True) + self.bo

    def call(self, query, value, value_mask=None, return_attention_scores: bool = False):
        if self.single_key:
            if value.shape[-2] != 1:
                raise ValueError(f"{self.name}: built for a single key, called with {value.shape[-2]} keys")
            w, b = self.single_key_affine()
            s = tf.shape(query)
            out = tf.broadcast_to(dense(value, w, b), tf.concat([s[:2], [w.shape[-1]]], 0))
            weights = tf.ones(tf.stack([s[0], self.num_heads, s[1], 1]), out.dtype)
            return (out, weights) if return_attention_scores else out
        q, k, v = self.project(query, "query"), self.project(value, "key"), self.project(value, "value")
        heads, weights = self.attend(q, k, v, value_mask, return_weights=True)
        out = self.output(heads)
        return (out, weights) if return_attention_scores else out

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "output_dim": self.output_dim}
