"""Layers of the baseline models (issue #7): FM terms, the SimTier similarity histogram, and the mean / GRU
sequence poolers.

The two poolers have the sequence-backbone interface of `mmctr_tf.layers.backbones`
    call(target [B, dt], hist [B, L, dt], mask [B, L] bool, training) -> h [B, dh]
and are registered there as `--backbone=youtubenet` and `--backbone=gru4rec`, so the plugin models (DIN, DMAE,
Diff-MSIN) take them as well.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import keras
import tensorflow as tf

from mmctr_tf.layers.core import masked_mean, safe_cosine, serializable


@serializable
class LinearTerm(keras.layers.Layer):
    """First-order term over one-hot ids: w_0 + sum_f w_f[x_f] (FM, Rendle ICDM 2010, eq. (1); the wide part
    y = w^T x + b of Wide&Deep, Cheng et al. DLRS 2016, eq. (1), without cross-product features).

    One scalar weight per id of each field in `vocab` ({feature: vocabulary size}). A history field is a
    normalised multi-hot vector (x = 1/hist_len on each valid behaviour), so it adds the mean of its ids' weights
    over the valid slots; history ids share the weights of the target field of the same name (as the id
    embeddings do, CTRModel). An empty history adds 0.

    call(ids {feature: [B]}, hist {feature: [B, L]} (keys are target field names), mask [B, L]) -> logit [B]
    """

    def __init__(self, vocab: Dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self.vocab = {str(k): int(v) for k, v in vocab.items()}
        self.weights_of = {name: keras.layers.Embedding(size, 1, embeddings_initializer="zeros", name=f"w_{name}")
                           for name, size in self.vocab.items()}

    def build(self, *args, **kwargs):
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")
        for name, emb in self.weights_of.items():
            emb.build((None,))

    def call(self, ids, hist=None, mask=None):
        logit = self.bias + tf.add_n([self.weights_of[name](x)[:, 0] for name, x in ids.items()])
        for name, x in (hist or {}).items():
            logit += masked_mean(self.weights_of[name](x), mask)[:, 0]
        return logit

    def get_config(self):
        return {**super().get_config(), "vocab": dict(self.vocab)}


@serializable
class FMInteraction(keras.layers.Layer):
    """Second-order term of a factorization machine (Rendle ICDM 2010, eq. (1) computed by lemma 3.1 / eq. (5)):

        sum_{i<j} <v_i, v_j> = 0.5 * sum_k [ (sum_i v_ik)^2 - sum_i v_ik^2 ]

    over the field embeddings v_i (one-hot fields: x_i = 1; the mean-pooled history is one field per history
    feature, its x_i folded into the pooled vector). Also DeepFM's FM component (Guo et al. IJCAI 2017, eq. (2)).

    call(fields [B, F, k]) -> [B]
    """

    def call(self, fields):
        square_of_sum = tf.square(tf.reduce_sum(fields, axis=1))
        sum_of_square = tf.reduce_sum(tf.square(fields), axis=1)
        return 0.5 * tf.reduce_sum(square_of_sum - sum_of_square, axis=-1)


@serializable
class SimTier(keras.layers.Layer):
    """SimTier (Sheng et al., CIKM 2024, "Enhancing Taobao Display Advertising with Multimodal Representations",
    §4.2; SPEC §6): a histogram of the cosine similarities between the target's and the history items' frozen
    modality vectors, each bin's count embedded as log(1 + count) * e_bin.

      c_j    = cos(v_target, v_j)                   (`safe_cosine`: 0, not NaN, for zero vectors), clipped to [-1, 1]
      bin(c) = k for -1 + k*eps < c <= -1 + (k+1)*eps, and c = -1 in bin 0: ceil(2/eps) bins of width eps over [-1, 1]
      n_k    = #{valid j : bin(c_j) = k}            (padding and items without a vector are NOT counted)
      out    = flatten_k( log(1 + n_k) * e_k )      e_k in R^dim learnable, -> [B, num_bins * dim]

    Differences from Alibaba's public code (SimTierLevel): it counts padding slots as cosine 0 (we mask them,
    SPEC §6), and its bin index ceil(c / eps) + 1/eps gives 2/eps + 2 = 22 bins for eps = 0.1, of which one holds
    only c = -1 exactly and one only rounding errors above 1; here c is clipped to [-1, 1] and the end points fold
    into the first/last bin, so eps = 0.1 gives 20 bins of equal width. Bin edges are exact up to float32
    rounding. Like the reference, e_k is initialised uniform in [0, 1).

    call(target [B, d], hist [B, L, d], valid [B, L] bool) -> [B, num_bins * dim]
    """

    def __init__(self, eps: float = 0.1, dim: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.eps = float(eps)
        self.dim = int(dim)
        if not 0.0 < self.eps <= 2.0:
            raise ValueError(f"SimTier: eps must be in (0, 2], got {eps}")
        if self.dim < 1:
            raise ValueError(f"SimTier: dim must be >= 1, got {dim}")
        self.num_bins = int(math.ceil(2.0 / self.eps - 1e-9))

    @property
    def output_dim(self) -> int:
        return self.num_bins * self.dim

    def build(self, *args, **kwargs):
        self.tier_emb = self.add_weight(shape=(self.num_bins, self.dim),
                                        initializer=keras.initializers.RandomUniform(0.0, 1.0), name="tier_emb")

    def bins(self, target, hist):
        """Bin index [B, L] int32 of each history slot's cosine with the target."""
        c = tf.clip_by_value(safe_cosine(target[:, None, :], hist), -1.0, 1.0)
        k = tf.math.ceil((c + 1.0) * (1.0 / self.eps)) - 1.0
        return tf.clip_by_value(tf.cast(k, tf.int32), 0, self.num_bins - 1)

    def counts(self, target, hist, valid):
        """n_k [B, num_bins] float32: valid history slots per similarity bin (no gradient flows through counts)."""
        onehot = tf.one_hot(self.bins(target, hist), self.num_bins, dtype=tf.float32)
        return tf.reduce_sum(onehot * tf.cast(valid, tf.float32)[..., None], axis=1)

    def call(self, target, hist, valid):
        n = self.counts(target, hist, valid)
        feat = tf.cast(tf.math.log1p(n), self.compute_dtype)[..., None] * self.tier_emb[None]  # [B, num_bins, dim]
        return tf.reshape(feat, [-1, self.output_dim])

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "dim": self.dim}


@serializable
class MeanPoolingBackbone(keras.layers.Layer):
    """YouTube DNN's user-history tower input (Covington et al., RecSys 2016, §3.1/Fig. 3: "a variable-length
    sequence of sparse video IDs is mapped to a sequence of dense vectors via the embeddings ... simply averaging
    performed best"): h = (1/|valid|) sum_{j valid} v_j, 0 for an empty history. The target is not used."""

    def call(self, target, hist, mask, training=None):
        return masked_mean(hist, mask)


@serializable
class GRUBackbone(keras.layers.Layer):
    """GRU4Rec's session encoder (Hidasi et al., ICLR 2016, §3.1: GRU update/reset gates, h_t = (1 - z_t) h_{t-1}
    + z_t h^_t) run over the history, most recent last; the interest is the hidden state after the last VALID
    behaviour. Padded slots are masked (the state is carried over them unchanged), so their content never changes
    the output; an empty history gives the zero initial state. The target is not used.

    The GRU is Keras' `reset_after=True` form (reset gate applied after the recurrent matmul, as in cuDNN) so that
    GPUs run the fused kernel; GRU4Rec's equations apply it before. `gru_units`: hidden size (default: the width of
    the history embeddings).
    """

    def __init__(self, gru_units: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.gru_units = None if gru_units is None else int(gru_units)
        if self.gru_units is not None and self.gru_units < 1:
            raise ValueError(f"GRUBackbone: gru_units must be >= 1, got {gru_units}")
        self.gru = None  # the default width depends on the input: created in build

    def build(self, target_shape, hist_shape=None, mask_shape=None):
        d = int((hist_shape or target_shape)[-1])
        self.gru = keras.layers.GRU(self.gru_units or d, name="gru")
        self.gru.build((None, None, d))

    def call(self, target, hist, mask, training=None):
        return self.gru(hist, mask=tf.cast(mask, tf.bool), training=training)

    def get_config(self):
        return {**super().get_config(), "gru_units": self.gru_units}
