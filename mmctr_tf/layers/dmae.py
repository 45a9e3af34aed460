"""DMAE layers (dmae.md §4, SPEC §2): MIEU (eq. 1-4), MIFU (eq. 5-9) and IDDU (eq. 10-13).

Conventions (SPEC §1): histories are right-padded, slot j of a row is valid iff j < hist_len, the most recent
behaviour sits at slot hist_len-1, so the recency index ("T - j" in eq. 4) of slot j is hist_len-1-j.

Packed layout. The per-behaviour layers work on the history slots packed into one sequence, example after example,
each example's slots in history order (`pack_slots`): `rows` [N] and `slots` [N] give every packed position's
example and slot, `valid` [N] the positions that count (a packed slot is masked when, e.g., its modality vector is
missing). By default only the slots j < hist_len are packed, so no work is spent on padding (on Amazon Scientific
histories fill about a tenth of L = 50, on the synthetic default 60%); `all_slots=True` packs every slot (N = B L),
so shapes do not depend on the data, which XLA needs. The window attention never crosses examples; per-example
results ([B, d]) are segment sums over `rows`. Masked positions never influence a valid output, and an example
without a valid position gives zeros, never NaN. See docs/dmae.md for the decisions the paper leaves open.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from mmctr_tf.layers.core import MLP, serializable


def _neg_large(dtype) -> float:
    """A large negative logit that stays finite in `dtype` (float16 overflows at -1e9)."""
    return -3.0e4 if tf.as_dtype(dtype) in (tf.float16, tf.bfloat16) else -1.0e9


def _f32(variable):
    """A weight's value as float32 (under a mixed precision policy a variable read inside `call` is float16)."""
    return tf.cast(tf.convert_to_tensor(variable), tf.float32)


def pack_slots(mask, all_slots: bool = False):
    """(rows [N], slots [N]) int32: the packed layout (module docstring) of the history slots of mask [B, L] bool,
    its valid slots row after row (`all_slots`: every slot, with shapes that depend on [B, L] only)."""
    if all_slots:
        shape = tf.shape(mask)
        rows = tf.repeat(tf.range(shape[0]), shape[1])
        return rows, tf.range(tf.size(rows)) - rows * shape[1]
    idx = tf.cast(tf.where(tf.cast(mask, tf.bool)), tf.int32)
    return idx[:, 0], idx[:, 1]


def segment_mean(x, valid, rows, num_rows):
    """Mean of x [N, d] over each example's valid positions -> [num_rows, d]; 0 for an example without any."""
    w = tf.cast(valid, x.dtype)
    total = tf.math.unsorted_segment_sum(x * w[:, None], rows, num_rows)
    return total / tf.maximum(tf.math.unsorted_segment_sum(w, rows, num_rows), 1.0)[:, None]


def segment_softmax(scores, valid, rows, num_rows):
    """Softmax of scores [N] over each example's valid positions (float32); 0 at the other positions, and for an
    example without a valid position."""
    scores = tf.where(valid, tf.cast(scores, tf.float32), _neg_large(tf.float32))
    top = tf.stop_gradient(tf.math.unsorted_segment_max(scores, rows, num_rows))  # softmax is shift-invariant
    e = tf.exp(scores - tf.gather(top, rows)) * tf.cast(valid, tf.float32)
    total = tf.math.unsorted_segment_sum(e, rows, num_rows)
    return e / tf.gather(tf.where(total > 0, total, 1.0), rows)


def bucket_index(r, num_buckets: int):
    """DMAE eq. (2) bucket id: floor(r * (N_B - 1)) as int32, r clipped to [0, 1] first (so ids are in [0, N_B-1];
    only r = 1 reaches the last bucket, exactly as the equation is written)."""
    r = tf.clip_by_value(tf.convert_to_tensor(r, tf.float32), 0.0, 1.0)
    return tf.cast(tf.floor(r * float(num_buckets - 1)), tf.int32)


def sine_cosine_encoding(r, dim: int):
    """DMAE eq. (3): r_sc[2i] = sin(r / 10^(2i/d)), r_sc[2i+1] = cos(r / 10^(2i/d)), i = 0 .. d/2-1 (base 10 as
    written in the paper and SPEC §2). r: any shape [...]; returns [..., dim] float32. `dim` must be even.
    Computed as one sine, sin(r f_k + phi_k) with phi = 0, pi/2 alternating (cos x = sin(x + pi/2)), so the
    interleaved code needs no stacking."""
    if dim % 2:
        raise ValueError(f"sine_cosine_encoding: dim must be even, got {dim}")
    r = tf.convert_to_tensor(r, tf.float32)
    freq = np.repeat(10.0 ** (-2.0 * np.arange(dim // 2) / dim), 2).astype(np.float32)  # 1 / 10^(2i/d), twice
    phase = np.tile(np.array([0.0, np.pi / 2], np.float32), dim // 2)
    return tf.sin(r[..., None] * freq + phase)


@serializable
class SimilarityEncoder(keras.layers.Layer):
    """Multimodal Interest Encoding Unit for one modality, DMAE eq. (1)-(4).

      eq. (1)-(2)  r_d  = (w r + b) * BucketEmb[floor(r (N_B - 1))]          (w, b learnable scalars)
      eq. (3)      r_sc = sine_cosine_encoding(r, d)
      eq. (4)      out_j = ReLU(W2 [ReLU(W1 [r_d ; r_sc] + b1) ; PE[T - j]] + b2)

    PE is a learned position embedding indexed by recency (hist_len - 1 - j, 0 = most recent behaviour).
    `use_sine_cosine=False` is the "w/o MIEU-se" ablation (bucket representation r_d only, W1 is d x d).

    call(r [...] in [0, 1], valid [...] bool, recency [...] int) -> [..., d], zero where not valid. Every position
    is independent (packed positions [N] in the model; any shape works). Recency is clipped to [0, seq_len - 1].
    Both layers of eq. (4) are written as in the paper, one matrix product each on the concatenated inputs, in
    float32 under any precision policy (r and its buckets need it), cast to the layer's compute dtype at the end.
    """

    def __init__(self, num_buckets: int = 20, dim: int = 16, seq_len: int = 50, use_sine_cosine: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if int(dim) % 2:
            raise ValueError(f"SimilarityEncoder: dim must be even (sine-cosine pairs), got {dim}")
        if int(num_buckets) < 2:
            raise ValueError(f"SimilarityEncoder: num_buckets must be >= 2, got {num_buckets}")
        self.num_buckets, self.dim, self.seq_len = int(num_buckets), int(dim), int(seq_len)
        self.use_sine_cosine = bool(use_sine_cosine)
        self.bucket_emb = keras.layers.Embedding(self.num_buckets, self.dim, name="bucket_emb")
        self.pos_emb = keras.layers.Embedding(self.seq_len, self.dim, name="recency_emb")
        self.dense1 = keras.layers.Dense(self.dim, activation="relu", name="w1")
        self.dense2 = keras.layers.Dense(self.dim, activation="relu", name="w2")

    def build(self, input_shape=None):
        self.w = self.add_weight(shape=(), initializer="ones", name="scale_w")
        self.b = self.add_weight(shape=(), initializer="zeros", name="scale_b")
        d = self.dim
        self.bucket_emb.build((None,))
        self.pos_emb.build((None,))
        self.dense1.build((None, 2 * d if self.use_sine_cosine else d))
        self.dense2.build((None, 2 * d))

    def discretize(self, r):
        """eq. (1)-(2): r_d [..., d]."""
        r = tf.clip_by_value(tf.cast(r, tf.float32), 0.0, 1.0)
        r_hat = _f32(self.w) * r + _f32(self.b)  # eq. (1)
        bucket = tf.gather(_f32(self.bucket_emb.embeddings), bucket_index(r, self.num_buckets))
        return r_hat[..., None] * bucket  # eq. (2)

    def call(self, r, valid, recency):
        shape = tf.shape(r)
        r = tf.clip_by_value(tf.reshape(tf.cast(r, tf.float32), [-1]), 0.0, 1.0)
        rec = tf.clip_by_value(tf.reshape(tf.cast(recency, tf.int32), [-1]), 0, self.seq_len - 1)
        parts = [self.discretize(r)] + ([sine_cosine_encoding(r, self.dim)] if self.use_sine_cosine else [])
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(tf.concat(parts, -1), _f32(self.dense1.kernel)),
                                      _f32(self.dense1.bias)))  # ReLU(W1 [r_d ; r_sc] + b1)
        pe = tf.gather(_f32(self.pos_emb.embeddings), rec)  # PE[T - j]
        out = tf.nn.relu(tf.nn.bias_add(tf.matmul(tf.concat([h, pe], -1), _f32(self.dense2.kernel)),
                                        _f32(self.dense2.bias)))  # eq. (4)
        out = out * tf.cast(tf.reshape(valid, [-1, 1]), out.dtype)
        return tf.cast(tf.reshape(out, tf.concat([shape, [self.dim]], 0)), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets, "dim": self.dim, "seq_len": self.seq_len,
                "use_sine_cosine": self.use_sine_cosine}


@serializable
class SlidingWindowAttention(keras.layers.Layer):
    """Intra-modal sliding-window self-attention G^m of the MIFU, DMAE eq. (5)-(6).

    Slot i attends to slot j of the same example iff |i - j| <= window // 2 and j is valid (Longformer convention:
    window w means w/2 neighbours on each side, so an even w covers w + 1 slots including i). Single head:
        out_i = x_i + sum_j softmax_j(q_i . k_j / sqrt(d)) v_j     (q, k, v = x W_Q, x W_K, x W_V)
    The residual `x_i +` is on by default (`residual=False` drops it). Masked positions are neither queries (their
    output is 0) nor keys; an example without a valid position gives zeros.

    On the packed sequence (module docstring) an example's slots are consecutive, so the window of slot i is the
    packed positions p_i - w//2 .. p_i + w//2 that belong to the same example. Cost is linear in N (blocked band
    attention, as in Longformer): queries are cut into blocks of b = 2 (window//2) positions, each block attends to
    its own positions plus window//2 on either side ([N/b, b, b + 2 (window//2)] scores, then the band, the
    example and the key mask are applied), so no [N, N] (or [L, L]) tensor is ever built; everything is pads,
    reshapes, slices and batched matmuls (cheap gradients, unlike gathers).

    Computed in an exactly equal, cheaper form: q_i . k_j = (x_i W_Q W_K^T) . x_j and sum_j a_ij (x_j W_V) =
    (sum_j a_ij x_j) W_V, so the key/value windows are windows of x itself (built once, not once for K and once
    for V) and W_V is applied once after pooling. The weights keep the W_Q / W_K / W_V Dense layout.

    call(x [N, d_in], valid [N] bool, rows [N] int, nondecreasing) -> [N, dim]  (dim = d_in when residual=True)
    """

    def __init__(self, dim: int = 16, window: int = 10, residual: bool = True, **kwargs):
        super().__init__(**kwargs)
        if int(window) < 1:
            raise ValueError(f"SlidingWindowAttention: window must be >= 1, got {window}")
        self.dim, self.window, self.residual = int(dim), int(window), bool(residual)
        self.half = self.window // 2
        self.block = max(2 * self.half, 1)  # query block size 2h: a block's keys are two blocks shifted by h
        self.q = keras.layers.Dense(self.dim, use_bias=False, name="w_q")
        self.k = keras.layers.Dense(self.dim, use_bias=False, name="w_k")
        self.v = keras.layers.Dense(self.dim, use_bias=False, name="w_v")

    def build(self, input_shape):
        if self.residual and input_shape[-1] is not None and int(input_shape[-1]) != self.dim:
            raise ValueError(f"SlidingWindowAttention: residual needs input dim {input_shape[-1]} == dim {self.dim}")
        for layer in (self.q, self.k, self.v):
            layer.build(input_shape)

    def blocks(self, x, nb, fill=0):
        """[N, ...] -> key/value windows [nb, b + 2h, ...] of the query blocks of size b = block: window n holds
        positions n*b - h .. n*b + b - 1 + h (`fill` outside [0, N)). With b = 2h that is two consecutive blocks of
        x shifted right by h: one pad, one reshape and one two-piece concat."""
        b, h = self.block, self.half
        rest = [[0, 0]] * (len(x.shape) - 1)
        xp = tf.pad(x, [[h, (nb + 1) * b - tf.shape(x)[0] - h]] + rest, constant_values=fill)
        xb = tf.reshape(xp, tf.concat([[nb + 1, b], tf.shape(x)[1:]], 0))
        # tf.slice, not xb[:-1]: the gradient of a strided slice (StridedSliceGrad) costs more on CPU than the rest
        # of this layer together; tf.slice's gradient is a pad
        tail = [0] * (len(x.shape) - 1)  # xb has one axis more than x
        size = [nb] + [-1] * (len(tail) + 1)
        first = tf.slice(xb, [0] + tail + [0], size)
        return tf.concat([first, tf.slice(xb, [1] + tail + [0], size)], axis=1) if h else first

    def call(self, x, valid, rows):
        valid = tf.cast(valid, tf.bool)
        b, h = self.block, self.half
        n = tf.shape(x)[0]
        nb = (n + b - 1) // b
        d_in = x.shape[-1]
        w_q, w_k, w_v = (tf.cast(tf.convert_to_tensor(p.kernel), x.dtype) for p in (self.q, self.k, self.v))
        # eq. (5): q_i . k_j / sqrt(d) = (x_i W_Q W_K^T / sqrt(d)) . x_j
        qk = tf.matmul(w_q, w_k, transpose_b=True) / math.sqrt(self.dim)  # [d_in, d_in]
        qb = tf.reshape(tf.pad(tf.matmul(x, qk), [[0, nb * b - n], [0, 0]]), [nb, b, d_in])  # query blocks
        xw = self.blocks(x, nb)  # key/value windows [nb, b + 2h, d_in]
        scores = tf.matmul(qb, xw, transpose_b=True)  # [nb, b, b + 2h]
        # a key counts iff it is in the band, valid, and of the query's example (masked keys carry row -2, padded
        # queries row -1, so neither ever matches); a valid query always has itself as a key
        rel = tf.range(b + 2 * h)[None, :] - tf.range(b)[:, None]  # key position - query position + h
        band = (rel >= 0) & (rel <= 2 * h)
        query_rows = tf.reshape(tf.pad(rows, [[0, nb * b - n]], constant_values=-1), [nb, b])
        key_rows = self.blocks(tf.where(valid, rows, -2), nb, fill=-2)  # [nb, b + 2h]
        keys = band[None] & tf.equal(query_rows[:, :, None], key_rows[:, None, :])
        att = tf.nn.softmax(tf.where(keys, scores, tf.cast(_neg_large(scores.dtype), scores.dtype)), axis=-1)
        ctx = tf.slice(tf.reshape(tf.matmul(att, xw), [nb * b, d_in]), [0, 0], [n, -1])  # sum_j a_ij x_j
        out = tf.matmul(ctx, w_v)  # eq. (6): (sum_j a_ij x_j) W_V
        if self.residual:
            out = out + x
        return out * tf.cast(valid, out.dtype)[:, None]

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "window": self.window, "residual": self.residual}


@serializable
class CrossModalInterestAttention(keras.layers.Layer):
    """Cross-modal fusion of the MIFU, DMAE eq. (7)-(9), for exactly two modalities.

      eq. (7)  rbar_m = mean of seq_m over its valid positions
      eq. (8)  r*_m1 = softmax((rbar_m2 W_Q^m1)(seq_m1 W_K^m1)^T / sqrt(d)) seq_m1 W_V^m1   (masked positions excluded)
      eq. (9)  r*_m2 = the same with m1 and m2 swapped (separate projections per modality)

    Computed as q . (s_l W_K) = (q W_K^T) . s_l and sum_l a_l (s_l W_V) = (sum_l a_l s_l) W_V, so keys and values
    are never projected position by position; the softmax runs over each example's positions (`segment_softmax`).

    call(seq1 [N, d], seq2 [N, d], valid1 [N], valid2 [N], rows [N], num_rows B) -> (r*_m1 [B, dim],
    r*_m2 [B, dim]) on the packed layout; a modality without a valid position gives a zero vector.
    """

    def __init__(self, dim: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.proj = [{p: keras.layers.Dense(self.dim, use_bias=False, name=f"m{i + 1}_w_{p}") for p in "qkv"}
                     for i in range(2)]

    def build(self, input_shape=None):
        d_in = self.dim if input_shape is None or input_shape[-1] is None else int(input_shape[-1])
        for proj in self.proj:
            for layer in proj.values():
                layer.build((None, d_in))

    def attend(self, index: int, query_ctx, seq, valid, rows, num_rows):
        """eq. (8)/(9) for modality `index` (0 or 1) with context vector query_ctx [B, d] from the other one."""
        p = self.proj[index]
        q_k = tf.matmul(p["q"](query_ctx), tf.convert_to_tensor(p["k"].kernel), transpose_b=True)  # [B, d_in]
        scores = tf.reduce_sum(seq * tf.gather(q_k, rows), -1) / math.sqrt(self.dim)  # [N]
        att = tf.cast(segment_softmax(scores, tf.cast(valid, tf.bool), rows, num_rows), seq.dtype)
        return p["v"](tf.math.unsorted_segment_sum(att[:, None] * seq, rows, num_rows))

    def call(self, seq1, seq2, valid1, valid2, rows, num_rows):
        pool1, pool2 = segment_mean(seq1, valid1, rows, num_rows), segment_mean(seq2, valid2, rows, num_rows)  # eq. 7
        return (self.attend(0, pool2, seq1, valid1, rows, num_rows),
                self.attend(1, pool1, seq2, valid2, rows, num_rows))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@serializable
class InterestDistribution(keras.layers.Layer):
    """Interest-distribution label P in R^{l x n}, DMAE eq. (10), computed in-graph without gradient.

    The history (the first hist_len slots) is split into l equal time segments of the user's own history,
    segment(j) = floor(j l / hist_len) (oldest first, the most recent behaviours in segment l-1); [0, 1] is split
    into n similarity bins, bin(r) = min(floor(r n), n - 1). p_ij = #{slots counted in segment i and bin j} / N,
    where the counted slots are the valid packed positions with j < hist_len and N their number (N = hist_len when
    no modality vector is missing, i.e. exactly eq. (10); slots with a missing vector are not counted, so P still
    sums to 1). Examples with nothing counted (hist_len = 0) are all zero. l = 1 is the "w/o MIEU-t" ablation.

    call(r [N], valid [N] bool, rows [N], slots [N], hist_len [B]) -> P [B, l, n]   (packed layout)
    """

    def __init__(self, l: int = 10, n: int = 10, **kwargs):  # noqa: E741 (names from the paper)
        super().__init__(**kwargs)
        if int(l) < 1 or int(n) < 1:
            raise ValueError(f"InterestDistribution: l and n must be >= 1, got l={l}, n={n}")
        self.l, self.n = int(l), int(n)
        self.built = True  # stateless

    def call(self, r, valid, rows, slots, hist_len):
        hist_len = tf.cast(hist_len, tf.int32)
        hl = tf.gather(hist_len, rows)
        seg = tf.clip_by_value((slots * self.l) // tf.maximum(hl, 1), 0, self.l - 1)
        bins = tf.clip_by_value(tf.cast(tf.floor(tf.cast(r, tf.float32) * float(self.n)), tf.int32), 0, self.n - 1)
        counted = tf.cast(tf.cast(valid, tf.bool) & (slots < hl), tf.float32)
        # histogram per example: add each counted position to cell (example, segment, bin)
        cells, num_rows = self.l * self.n, tf.shape(hist_len)[0]
        counts = tf.math.unsorted_segment_sum(counted, rows * cells + seg * self.n + bins, num_rows * cells)
        total = tf.math.unsorted_segment_sum(counted, rows, num_rows)[:, None, None]
        return tf.stop_gradient(tf.reshape(counts, [-1, self.l, self.n]) / tf.maximum(total, 1.0))

    def get_config(self):
        return {**super().get_config(), "l": self.l, "n": self.n}


@serializable
class InterestDecoder(keras.layers.Layer):
    """Interest-Distribution Decoding Unit, DMAE eq. (11)-(13), for `num_modalities` modalities (one decoder MLP
    per modality).

      eq. (11) M(r) = mean over the valid positions kept by a random position mask (each valid position dropped with
               probability mask_ratio; if every position of a non-empty example is dropped, it keeps them all)
      eq. (12) Q = softmax(MLP(M(r))) over the l*n cells (default, SPEC §2: the paper's sigmoid with KL is
               minimised by Q = 1 everywhere); q_activation="sigmoid" keeps the paper's form.
      eq. (13) L_dec = sum_m KL(P_m || Q_m) per example (0 for an all-zero P, i.e. hist_len = 0), mean over batch.

    call(seqs [list of N x d], valids [list of N], targets [list of P, B x l x n], rows [N], training) on the packed
    layout: training=True registers lambda_dec * L_dec with add_loss, logs L_dec (unweighted) in the `dec_loss`
    tracker and returns L_dec; otherwise does nothing and returns None (the decoder is training-only).
    `decode(index, seq, valid, rows, num_rows)` gives Q [B, l, n] without the random mask (for inspection).
    """

    def __init__(self, l: int = 10, n: int = 10, num_modalities: int = 2, units=(64,),  # noqa: E741
                 mask_ratio: float = 0.3, lambda_dec: float = 0.5, q_activation: str = "softmax", seed=None, **kwargs):
        super().__init__(**kwargs)
        if q_activation not in ("softmax", "sigmoid"):
            raise ValueError(f"InterestDecoder: q_activation must be 'softmax' or 'sigmoid', got '{q_activation}'")
        if not 0.0 <= float(mask_ratio) < 1.0:
            raise ValueError(f"InterestDecoder: mask_ratio must be in [0, 1), got {mask_ratio}")
        self.l, self.n, self.num_modalities = int(l), int(n), int(num_modalities)
        self.units = tuple(int(u) for u in units)
        self.mask_ratio, self.lambda_dec = float(mask_ratio), float(lambda_dec)
        self.q_activation, self.seed = q_activation, seed
        self.mlps = [MLP(self.units, "relu", output_units=self.l * self.n, name=f"decoder_mlp_{i}")
                     for i in range(self.num_modalities)]
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.dec_loss_tracker = keras.metrics.Mean(name="dec_loss")

    def build(self, input_shape=None):
        d = None
        try:
            d = int(input_shape[0][-1])
        except (TypeError, IndexError, ValueError):
            pass
        if d is not None:
            for mlp in self.mlps:  # MLP builds its Dense layers lazily: run it once so all weights exist now
                mlp(tf.zeros([1, d]))

    def logits(self, index: int, pooled):
        return self.mlps[index](pooled)

    def decode(self, index: int, seq, valid, rows, num_rows):
        """Q [B, l, n] of modality `index` from all valid positions (no random mask)."""
        z = self.logits(index, segment_mean(seq, valid, rows, num_rows))
        q = tf.nn.softmax(z, axis=-1) if self.q_activation == "softmax" else tf.sigmoid(z)
        return tf.reshape(q, [-1, self.l, self.n])

    def kl(self, p, z):
        """Per-example KL(P || Q) with Q from logits z [B, l*n]; terms with p = 0 contribute 0."""
        p = tf.reshape(tf.cast(p, tf.float32), [-1, self.l * self.n])  # the loss in float32 under any precision
        z = tf.cast(z, tf.float32)  # policy (Keras casts P, an input, to the compute dtype)
        if self.q_activation == "softmax":
            log_q = tf.nn.log_softmax(z, axis=-1)
        else:
            log_q = tf.math.log_sigmoid(z)
        log_p = tf.math.log(tf.maximum(p, 1e-12))
        return tf.reduce_sum(tf.where(p > 0, p * (log_p - log_q), tf.zeros_like(p)), axis=-1)

    def random_keep(self, valid, rows, num_rows):
        """eq. (11) Mask(.): keep each valid position with probability 1 - mask_ratio (all of an example's valid
        positions if none of them is kept)."""
        valid = tf.cast(valid, tf.bool)
        keep = valid & (keras.random.uniform(tf.shape(valid), seed=self.seed_generator) >= self.mask_ratio)
        any_kept = tf.math.unsorted_segment_max(tf.cast(keep, tf.int32), rows, num_rows) > 0
        return tf.where(tf.gather(any_kept, rows), keep, valid)

    def call(self, seqs, valids, targets, rows, training=None):
        if not training:
            return None
        num_rows = tf.shape(targets[0])[0]
        total = 0.0
        for i, (seq, valid, p) in enumerate(zip(seqs, valids, targets)):
            z = self.logits(i, segment_mean(seq, self.random_keep(valid, rows, num_rows), rows, num_rows))
            total = total + self.kl(p, z)
        loss = tf.reduce_mean(total)
        self.add_loss(self.lambda_dec * loss)
        self.dec_loss_tracker.update_state(loss)
        return loss

    def get_config(self):
        return {**super().get_config(), "l": self.l, "n": self.n, "num_modalities": self.num_modalities,
                "units": list(self.units), "mask_ratio": self.mask_ratio, "lambda_dec": self.lambda_dec,
                "q_activation": self.q_activation, "seed": self.seed}
