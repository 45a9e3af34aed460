"""DMAE layers (dmae.md §4, SPEC §2): MIEU (eq. 1-4), MIFU (eq. 5-9) and IDDU (eq. 10-13).

Conventions (SPEC §1): histories are right-padded, slot j of a row is valid iff j < hist_len, the most recent
behaviour sits at slot hist_len-1, so the recency index ("T - j" in eq. 4) of slot j is hist_len-1-j.
Every layer takes an explicit boolean mask [B, L]; padded (or masked) slots never influence a valid output, and an
all-masked row (hist_len = 0) gives zeros, never NaN. See docs/dmae.md for the decisions the paper leaves open.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from mmctr_tf.layers.core import MLP, masked_mean, serializable


def _neg_large(dtype) -> float:
    """A large negative logit that stays finite in `dtype` (float16 overflows at -1e9)."""
    return -3.0e4 if tf.as_dtype(dtype) in (tf.float16, tf.bfloat16) else -1.0e9


def _f32(variable):
    """A weight's value as float32 (under a mixed precision policy a variable read inside `call` is float16)."""
    return tf.cast(tf.convert_to_tensor(variable), tf.float32)


def masked_softmax(scores, valid, axis: int = -1):
    """Softmax over the valid entries of `scores`; rows without a valid entry give all-zero weights (not NaN)."""
    scores = tf.where(valid, scores, tf.cast(_neg_large(scores.dtype), scores.dtype))
    weights = tf.nn.softmax(scores, axis=axis)
    return tf.where(valid, weights, tf.zeros_like(weights))


def bucket_index(r, num_buckets: int):
    """DMAE eq. (2) bucket id: floor(r * (N_B - 1)) as int32, r clipped to [0, 1] first (so ids are in [0, N_B-1];
    only r = 1 reaches the last bucket, exactly as the equation is written)."""
    r = tf.clip_by_value(tf.convert_to_tensor(r, tf.float32), 0.0, 1.0)
    return tf.cast(tf.floor(r * float(num_buckets - 1)), tf.int32)


def sine_cosine_encoding(r, dim: int):
    """DMAE eq. (3): r_sc[2i] = sin(r / 10^(2i/d)), r_sc[2i+1] = cos(r / 10^(2i/d)), i = 0 .. d/2-1 (base 10 as
    written in the paper and SPEC §2). r: any shape [...]; returns [..., dim] float32. `dim` must be even."""
    if dim % 2:
        raise ValueError(f"sine_cosine_encoding: dim must be even, got {dim}")
    r = tf.convert_to_tensor(r, tf.float32)
    i = tf.range(dim // 2, dtype=tf.float32)
    inv_freq = tf.pow(10.0, -2.0 * i / float(dim))  # 1 / 10^(2i/d)
    angle = r[..., None] * inv_freq  # [..., d/2]
    # interleave: [sin_0, cos_0, sin_1, cos_1, ...]
    out = tf.stack([tf.sin(angle), tf.cos(angle)], axis=-1)
    return tf.reshape(out, tf.concat([tf.shape(r), [dim]], axis=0))


def recency_index(hist_len, length, num_positions: int):
    """[B, length] int32: recency ("T - j" in eq. 4, 0 = most recent) of each slot, hist_len-1-j, clipped to
    [0, num_positions-1] (padded slots get a clipped index; their outputs are masked anyway)."""
    j = tf.range(length, dtype=tf.int32)[None, :]
    rec = tf.cast(hist_len, tf.int32)[:, None] - 1 - j
    return tf.clip_by_value(rec, 0, num_positions - 1)


@serializable
class SimilarityEncoder(keras.layers.Layer):
    """Multimodal Interest Encoding Unit for one modality, DMAE eq. (1)-(4).

      eq. (1)-(2)  r_d  = (w r + b) * BucketEmb[floor(r (N_B - 1))]          (w, b learnable scalars)
      eq. (3)      r_sc = sine_cosine_encoding(r, d)
      eq. (4)      out_j = ReLU(W2 [ReLU(W1 [r_d ; r_sc] + b1) ; PE[T - j]] + b2)

    PE is a learned position embedding indexed by recency (hist_len - 1 - j, 0 = most recent behaviour).
    `use_sine_cosine=False` is the "w/o MIEU-se" ablation (bucket representation r_d only, W1 is d x d).

    call(r [B, L] in [0, 1], mask [B, L] bool, hist_len [B] = number of valid slots, optional) -> [B, L, d],
    zero at masked slots. `hist_len` should be the length of the whole history (so recency counts every behaviour
    even where this modality's vector is missing and masked); without it, it is taken as mask.sum(-1).
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

    def call(self, r, mask, hist_len=None):
        r = tf.clip_by_value(tf.cast(r, tf.float32), 0.0, 1.0)
        mask = tf.cast(mask, tf.bool)
        if hist_len is None:
            hist_len = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        d = self.dim
        # eq. (4) with W1 = [W1_d ; W1_sc] and W2 = [W2_h ; W2_pe] split by input block: the embedding parts are
        # projected on the (tiny) tables before the lookup, so neither [B, L, 2d] input is ever concatenated.
        # Equal to dense(concat(...)) of the eq.; the weights keep the Dense layout. Computed in float32 under any
        # precision policy (r and its buckets need it), cast to the layer's compute dtype at the end.
        w1 = tf.split(_f32(self.dense1.kernel), 2 if self.use_sine_cosine else 1, axis=0)
        w2_h, w2_pe = tf.split(_f32(self.dense2.kernel), 2, axis=0)
        r_hat = _f32(self.w) * r + _f32(self.b)  # eq. (1)
        bucket_w1 = tf.matmul(_f32(self.bucket_emb.embeddings), w1[0])  # eq. (2) times W1_d
        h = tf.expand_dims(r_hat, -1) * tf.gather(bucket_w1, bucket_index(r, self.num_buckets)) + _f32(self.dense1.bias)
        if self.use_sine_cosine:
            h += tf.einsum("bld,de->ble", sine_cosine_encoding(r, d), w1[1])  # eq. (3) times W1_sc
        h = tf.nn.relu(h)
        out = tf.nn.relu(tf.einsum("bld,de->ble", h, w2_h) + self.recency_term(hist_len, tf.shape(r)[1], w2_pe)
                         + _f32(self.dense2.bias))  # eq. (4)
        return tf.cast(out * tf.cast(mask, out.dtype)[..., None], self.compute_dtype)

    def recency_term(self, hist_len, length, w2_pe):
        """PE[T - j] W2_pe for every slot, [B, length, d]. It depends on the row only through hist_len, so the
        rows are looked up in a [hist_len, slot] table of every possible history length (a gather of B rows, not
        of B * L embeddings; hist_len beyond length + seq_len - 1 gives the same row as that value)."""
        pos_w2 = tf.matmul(_f32(self.pos_emb.embeddings), w2_pe)  # PE times W2_pe
        lengths = tf.range(length + self.seq_len)
        table = tf.gather(pos_w2, recency_index(lengths, length, self.seq_len))  # [length + seq_len, length, d]
        hl = tf.clip_by_value(tf.cast(hist_len, tf.int32), 0, length + self.seq_len - 1)
        return tf.gather(table, hl)

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets, "dim": self.dim, "seq_len": self.seq_len,
                "use_sine_cosine": self.use_sine_cosine}


@serializable
class SlidingWindowAttention(keras.layers.Layer):
    """Intra-modal sliding-window self-attention G^m of the MIFU, DMAE eq. (5)-(6).

    Slot i attends to slot j iff |i - j| <= window // 2 and j is valid (Longformer convention: window w means w/2
    neighbours on each side, so an even w covers w + 1 slots including i). Single head:
        out_i = x_i + sum_j softmax_j(q_i . k_j / sqrt(d)) v_j     (q, k, v = x W_Q, x W_K, x W_V)
    The residual `x_i +` is on by default (`residual=False` drops it). Padded/masked slots are neither queries
    (their output is 0) nor keys; a row without valid slots gives zeros.

    Cost is linear in L (blocked band attention, as in Longformer): queries are cut into blocks of b = 2 (window//2)
    slots, each block attends to its own slots plus window//2 on either side ([B, L/b, b, b + 2 (window//2)]
    scores, then the band |i - j| <= window//2 is masked), so no [L, L] tensor is ever built; everything is
    reshapes, slices and batched matmuls (cheap gradients, unlike gathers).

    Computed in an exactly equal, cheaper form: q_i . k_j = (x_i W_Q W_K^T) . x_j and sum_j a_ij (x_j W_V) =
    (sum_j a_ij x_j) W_V, so the key/value windows are windows of x itself (built once, not once for K and once
    for V) and W_V is applied once after pooling; masking is one additive bias (no gradient) and the masked query
    rows are zeroed at the end. The weights keep the W_Q / W_K / W_V Dense layout.

    call(x [B, L, d_in], mask [B, L] bool) -> [B, L, dim]  (dim must equal d_in when residual=True)
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

    def blocks(self, x, nb: int):
        """[B, L, ...] -> key/value windows [B, nb, b + 2h, ...] of the query blocks of size b = block: window n
        holds slots n*b - h .. n*b + b - 1 + h (zero / False outside [0, L)). With b = 2h that is two consecutive
        blocks of x shifted right by h, so it is one pad, one reshape and one two-piece concat."""
        b, h = self.block, self.half
        L = tf.shape(x)[1]
        rest = [[0, 0]] * (len(x.shape) - 2)
        xp = tf.pad(x, [[0, 0], [h, (nb + 1) * b - L - h]] + rest)
        xb = tf.reshape(xp, tf.concat([tf.shape(x)[:1], [nb + 1, b], tf.shape(x)[2:]], 0))
        # tf.slice, not xb[:, :-1]: the gradient of a strided slice (StridedSliceGrad) costs more on CPU than
        # the rest of this layer together; tf.slice's gradient is a pad
        tail = [0] * (len(x.shape) - 1)  # xb has one axis more than x
        size = [-1, nb] + [-1] * len(tail)
        first = tf.slice(xb, [0, 0] + tail, size)
        return tf.concat([first, tf.slice(xb, [0, 1] + tail, size)], axis=2) if h else first

    def call(self, x, mask):
        mask = tf.cast(mask, tf.bool)
        mf = tf.cast(mask, x.dtype)[..., None]
        x = x * mf
        b, h = self.block, self.half
        L = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
        nb = (L + b - 1) // b
        aligned = isinstance(L, int) and nb * b == L  # no padding of the query blocks needed
        w_q, w_k, w_v = (tf.cast(tf.convert_to_tensor(p.kernel), x.dtype) for p in (self.q, self.k, self.v))
        # eq. (5): q_i . k_j / sqrt(d) = (x_i W_Q W_K^T / sqrt(d)) . x_j
        qk = tf.matmul(w_q, w_k, transpose_b=True) / math.sqrt(self.dim)  # [d_in, d_in]
        q = tf.einsum("bld,de->ble", x, qk)
        if not aligned:
            q = tf.pad(q, [[0, 0], [0, nb * b - L], [0, 0]])
        qb = tf.reshape(q, [-1, nb, b, x.shape[-1]])  # query blocks [B, nb, b, d_in]
        xw = self.blocks(x, nb)  # key/value windows [B, nb, b + 2h, d_in]
        scores = tf.matmul(qb, xw, transpose_b=True)  # [B, nb, b, b + 2h]
        rel = tf.range(b + 2 * h)[None, :] - tf.range(b)[:, None]  # key slot - query slot + h
        band = (rel >= 0) & (rel <= 2 * h)
        keys = band[None, None] & self.blocks(mask, nb)[:, :, None, :]
        # masked keys get a large negative bias (exp underflows to exactly 0); a valid query always has itself
        # as a valid key, and masked query rows are zeroed below
        bias = tf.where(keys, tf.zeros([], scores.dtype), tf.cast(_neg_large(scores.dtype), scores.dtype))
        att = tf.nn.softmax(scores + bias, axis=-1)
        ctx = tf.reshape(tf.matmul(att, xw), [-1, nb * b, x.shape[-1]])  # sum_j a_ij x_j
        if not aligned:
            ctx = tf.slice(ctx, [0, 0, 0], [-1, L, -1])
        out = tf.einsum("bld,de->ble", ctx, w_v)  # eq. (6): (sum_j a_ij x_j) W_V
        if self.residual:
            out = out + x
        return out * mf

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "window": self.window, "residual": self.residual}


@serializable
class CrossModalInterestAttention(keras.layers.Layer):
    """Cross-modal fusion of the MIFU, DMAE eq. (7)-(9), for exactly two modalities.

      eq. (7)  rbar_m = mean of seq_m over its valid slots
      eq. (8)  r*_m1 = softmax((rbar_m2 W_Q^m1)(seq_m1 W_K^m1)^T / sqrt(d)) seq_m1 W_V^m1   (padding masked)
      eq. (9)  r*_m2 = the same with m1 and m2 swapped (separate projections per modality)

    call(seq1 [B, L, d], seq2 [B, L, d], mask1 [B, L], mask2 [B, L]) -> (r*_m1 [B, dim], r*_m2 [B, dim]);
    a modality without a valid slot gives a zero vector.
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

    @staticmethod
    def pool(seq, mask):
        """eq. (7): masked mean over valid slots (0 when none)."""
        return masked_mean(seq, mask)

    def attend(self, index: int, query_ctx, seq, mask):
        """eq. (8)/(9) for modality `index` (0 or 1) with context vector query_ctx [B, d] from the other one."""
        p = self.proj[index]
        q = p["q"](query_ctx)  # [B, d]
        # q . (s_l W_K) = (q W_K^T) . s_l and sum_l a_l (s_l W_V) = (sum_l a_l s_l) W_V: the keys and values are
        # never projected slot by slot (same result, no [B, L, d] projections)
        q_k = tf.matmul(q, tf.convert_to_tensor(p["k"].kernel), transpose_b=True)  # [B, d_in]
        scores = tf.squeeze(tf.matmul(seq, tf.expand_dims(q_k, -1)), -1) / math.sqrt(self.dim)  # [B, L]
        att = masked_softmax(scores, tf.cast(mask, tf.bool))
        return p["v"](tf.squeeze(tf.matmul(tf.expand_dims(att, 1), seq), 1))

    def call(self, seq1, seq2, mask1, mask2):
        pool1, pool2 = self.pool(seq1, mask1), self.pool(seq2, mask2)
        return self.attend(0, pool2, seq1, mask1), self.attend(1, pool1, seq2, mask2)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@serializable
class InterestDistribution(keras.layers.Layer):
    """Interest-distribution label P in R^{l x n}, DMAE eq. (10), computed in-graph without gradient.

    The history (the first hist_len slots) is split into l equal time segments of the user's own history,
    segment(j) = floor(j l / hist_len) (oldest first, the most recent behaviours in segment l-1); [0, 1] is split
    into n similarity bins, bin(r) = min(floor(r n), n - 1). p_ij = #{slots counted in segment i and bin j} / N,
    where the counted slots are those of `mask` and N their number (N = hist_len when no modality vector is
    missing, i.e. exactly eq. (10); slots with a missing vector are not counted, so P still sums to 1).
    Rows with nothing counted (hist_len = 0) are all zero. l = 1 is the "w/o MIEU-t" ablation.

    call(r [B, L], mask [B, L] bool, hist_len [B]) -> P [B, l, n]
    """

    def __init__(self, l: int = 10, n: int = 10, **kwargs):  # noqa: E741 (names from the paper)
        super().__init__(**kwargs)
        if int(l) < 1 or int(n) < 1:
            raise ValueError(f"InterestDistribution: l and n must be >= 1, got l={l}, n={n}")
        self.l, self.n = int(l), int(n)
        self.built = True  # stateless

    def call(self, r, mask, hist_len):
        r = tf.cast(r, tf.float32)
        mask = tf.cast(mask, tf.bool)
        L = tf.shape(r)[1]
        hl = tf.cast(hist_len, tf.int32)[:, None]
        j = tf.range(L, dtype=tf.int32)[None, :]
        seg = tf.clip_by_value((j * self.l) // tf.maximum(hl, 1), 0, self.l - 1)  # [B, L]
        bins = tf.clip_by_value(tf.cast(tf.floor(r * float(self.n)), tf.int32), 0, self.n - 1)
        counted = tf.cast(mask & (j < hl), tf.float32)
        # histogram per row: add each counted slot to cell (row, segment, bin) (no [B, L, l*n] one-hot)
        cells = self.l * self.n
        rows = tf.shape(r)[0]
        ids = tf.range(rows)[:, None] * cells + seg * self.n + bins
        counts = tf.math.unsorted_segment_sum(tf.reshape(counted, [-1]), tf.reshape(ids, [-1]), rows * cells)
        total = tf.reduce_sum(counted, axis=1)[:, None, None]
        p = tf.reshape(counts, [-1, self.l, self.n]) / tf.maximum(total, 1.0)
        return tf.stop_gradient(p)

    def get_config(self):
        return {**super().get_config(), "l": self.l, "n": self.n}


@serializable
class InterestDecoder(keras.layers.Layer):
    """Interest-Distribution Decoding Unit, DMAE eq. (11)-(13), for `num_modalities` modalities (one decoder MLP
    per modality).

      eq. (11) M(r) = mean over the valid slots kept by a random position mask (each valid slot dropped with
               probability mask_ratio; if every slot of a non-empty row is dropped, the row keeps them all)
      eq. (12) Q = softmax(MLP(M(r))) over the l*n cells (default, SPEC §2: the paper's sigmoid with KL is
               minimised by Q = 1 everywhere); q_activation="sigmoid" keeps the paper's form.
      eq. (13) L_dec = sum_m KL(P_m || Q_m) per example (0 for an all-zero P, i.e. hist_len = 0), mean over batch.

    call(seqs [list of B x L x d], masks [list of B x L], targets [list of P, B x l x n], training):
      training=True: registers lambda_dec * L_dec with add_loss, logs L_dec (unweighted) in the `dec_loss` tracker
      and returns L_dec; otherwise does nothing and returns None (the decoder is training-only).
    `decode(index, seq, mask)` gives Q [B, l, n] without the random mask (for inspection).
    """

    def __init__(self, l: int = 10, n: int = 10, num_modalities: int = 2, units=(64,), mask_ratio: float = 0.3,
                 lambda_dec: float = 0.5, q_activation: str = "softmax", seed=None, **kwargs):  # noqa: E741
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

    def decode(self, index: int, seq, mask):
        """Q [B, l, n] of modality `index` from all valid slots (no random mask)."""
        z = self.logits(index, masked_mean(seq, mask))
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

    def random_keep(self, mask):
        """eq. (11) Mask(.): keep each valid slot with probability 1 - mask_ratio (all of them if none is kept)."""
        mask = tf.cast(mask, tf.bool)
        u = keras.random.uniform(tf.shape(mask), seed=self.seed_generator)
        keep = mask & (u >= self.mask_ratio)
        none_kept = ~tf.reduce_any(keep, axis=1, keepdims=True)
        return tf.where(none_kept, mask, keep)

    def call(self, seqs, masks, targets, training=None):
        if not training:
            return None
        total = 0.0
        for i, (seq, mask, p) in enumerate(zip(seqs, masks, targets)):
            z = self.logits(i, masked_mean(seq, self.random_keep(mask)))
            total = total + self.kl(p, z)
        loss = tf.reduce_mean(total)
        self.add_loss(self.lambda_dec * loss)
        self.dec_loss_tracker.update_state(loss)
        return loss

    def get_config(self):
        return {**super().get_config(), "l": self.l, "n": self.n, "num_modalities": self.num_modalities,
                "units": list(self.units), "mask_ratio": self.mask_ratio, "lambda_dec": self.lambda_dec,
                "q_activation": self.q_activation, "seed": self.seed}
