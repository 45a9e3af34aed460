"""Tests of the DMAE layers (mmctr_tf/layers/dmae.py) and model (mmctr_tf/models/dmae.py)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmctr_tf.data.schema import Schema
from mmctr_tf.data.synthetic import SyntheticConfig, generate
from mmctr_tf.data.tables import quantize
from mmctr_tf.evaluation.metrics import auc
from mmctr_tf.layers.core import FrozenVectorTable, safe_cosine
from mmctr_tf.layers.dmae import (CrossModalInterestAttention, InterestDecoder, InterestDistribution,
                                  SimilarityEncoder, SlidingWindowAttention, bucket_index, sine_cosine_encoding)
from mmctr_tf.models.base import dummy_batch
from mmctr_tf.models.din import DIN
from mmctr_tf.models.dmae import DMAE


# ------------------------------------------------------------------------------------------------ helpers
def _mask(hist_len, L):
    return tf.sequence_mask(tf.constant(hist_len, tf.int32), L)


def _tensor_shapes(graph):
    for op in graph.get_operations():
        for t in op.outputs:
            if t.shape.rank is not None:
                yield op, tuple(t.shape.as_list())


def _square_tensors(graph, L):
    """Every tensor in `graph` (forward and gradient ops) with two or more dimensions equal to L."""
    return [(op.name, s) for op, s in _tensor_shapes(graph) if sum(d == L for d in s) >= 2]


@pytest.fixture(scope="module")
def data():
    schema, splits, vectors, present, _ = generate(SyntheticConfig(
        num_users=150, num_items=200, seq_len=12, max_hist=16, impressions_per_user=6, seed=3))
    tables = {m: quantize(vectors[m], present[m]) for m in vectors}
    x = {k: splits["train"][k] for k in schema.model_inputs}
    return schema, splits, tables, x, splits["train"]["label"]


def _dmae(schema, tables, **kw):
    model = DMAE(schema, emb_dim=8, mieu_dim=8, num_buckets=6, dnn_units=(16,), att_units=(8,), **kw)
    model(dummy_batch(schema))
    model.set_tables(tables)
    return model


def _batch(x, n=8, start=0):
    return {k: v[start:start + n] for k, v in x.items()}


# ------------------------------------------------------------------------------------------------ r (SPEC §2)
@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_table_cosines_equal_safe_cosine(storage):
    """DMAE's r uses FrozenVectorTable.cosines (dot product times stored inverse row norms); the reference form is
    safe_cosine of the looked-up vectors: equal to rounding, 0 for missing (zero) rows and out-of-vocabulary ids."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(9, 5)).astype(np.float32) * rng.uniform(0.1, 10, size=(9, 1)).astype(np.float32)
    vectors[3] = 0.0  # an item without a vector
    table = FrozenVectorTable(9, 5, storage, inverse_norms=True)
    table.set_table(quantize(vectors, None, storage))
    target_ids = tf.constant([1, 3, 2, 0, 12], tf.int64)
    hist_ids = tf.constant([[2, 3, 4, 0], [1, 2, 3, 4], [2, 2, 8, 7], [5, 6, 0, 0], [1, -1, 9, 2]], tf.int64)
    (tv, _), (hv, _) = table(target_ids), table(hist_ids)
    got = table.cosines(target_ids, tv, hist_ids, hv).numpy()
    want = safe_cosine(tf.expand_dims(tv, 1), hv).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[1] == 0) and np.all(got[3] == 0) and got[0, 1] == 0 and got[4, 1] == got[4, 2] == 0
    v = quantize(vectors, None, storage).dequantize()  # numpy cosine of the stored rows
    n = np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(got[2, :2], v[2] @ v[2] / n[2] ** 2, rtol=1e-5)
    np.testing.assert_allclose(got[0, 2], v[1] @ v[4] / (n[1] * n[4]), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ MIEU eq. (1)-(4)
def test_sine_cosine_eq3_hand_computed():
    r = tf.constant([[0.3, 1.0]])
    got = sine_cosine_encoding(r, 4).numpy()
    s = math.sqrt(10.0)  # 10^(2*1/4)
    want = [[math.sin(0.3), math.cos(0.3), math.sin(0.3 / s), math.cos(0.3 / s)],
             [math.sin(1.0), math.cos(1.0), math.sin(1.0 / s), math.cos(1.0 / s)]]
    assert got.shape == (1, 2, 4)
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)
    # d = 6: frequencies 1, 10^(-1/3), 10^(-2/3)
    got6 = sine_cosine_encoding(tf.constant([0.5]), 6).numpy()[0]
    want6 = []
    for i in range(3):
        a = 0.5 / 10 ** (2 * i / 6)
        want6 += [math.sin(a), math.cos(a)]
    np.testing.assert_allclose(got6, want6, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        sine_cosine_encoding(r, 5)


def test_bucket_index_eq2():
    r = tf.constant([0.0, 0.24, 0.25, 0.5, 0.99, 1.0, -0.1, 1.2])
    np.testing.assert_array_equal(bucket_index(r, 5).numpy(), [0, 0, 1, 2, 3, 4, 0, 4])  # floor(r * 4), clipped


def test_similarity_encoder_eq1_2_and_recency():
    enc = SimilarityEncoder(num_buckets=5, dim=4, seq_len=6)
    r = tf.constant([[0.1, 0.2, 0.3, 0.0, 0.0, 0.0],
                     [0.9, 0.9, 0.1, 0.2, 0.3, 0.7]])
    hist_len = tf.constant([3, 5])
    mask = _mask([3, 5], 6)
    out = enc(r, mask, hist_len).numpy()
    assert out.shape == (2, 6, 4)
    assert np.all(out[0, 3:] == 0) and np.all(out[1, 5:] == 0)  # padding is zero
    # recency indexing: the last three behaviours of both rows have the same r and the same recency (2, 1, 0),
    # so their encodings match although they sit at different slots
    np.testing.assert_allclose(out[0, :3], out[1, 2:5], rtol=1e-5, atol=1e-6)
    # eq. (1)-(2): r_d = (w r + b) * Bucket[floor(r (N_B - 1))]
    enc.w.assign(2.0)
    enc.b.assign(0.5)
    table = enc.bucket_emb.embeddings.numpy()
    rd = enc.discretize(tf.constant([0.3, 1.0])).numpy()
    np.testing.assert_allclose(rd[0], (2 * 0.3 + 0.5) * table[1], rtol=1e-6)
    np.testing.assert_allclose(rd[1], (2 * 1.0 + 0.5) * table[4], rtol=1e-6)
    # w/o MIEU-se: bucket representation only (W1 is d x d)
    enc2 = SimilarityEncoder(num_buckets=5, dim=4, seq_len=6, use_sine_cosine=False)
    assert enc2(r, mask, hist_len).shape == (2, 6, 4)
    assert tuple(enc2.dense1.kernel.shape) == (4, 4)
    assert tuple(enc.dense1.kernel.shape) == (8, 4)


@pytest.mark.parametrize("use_sine_cosine", [True, False])
def test_similarity_encoder_eq4_matches_numpy(use_sine_cosine):
    """The layer projects the bucket and position tables before the lookup (no [B, L, 2d] concat); the result
    must equal eq. (4) written out literally: ReLU(W2 [ReLU(W1 [r_d ; r_sc] + b1) ; PE[T - j]] + b2)."""
    nb, d, L = 6, 4, 5
    enc = SimilarityEncoder(num_buckets=nb, dim=d, seq_len=L, use_sine_cosine=use_sine_cosine)
    # row 2: hist_len beyond L (recency indices clipped to the table; the layer's [hist_len, slot] table too)
    r = tf.constant([[0.05, 0.5, 0.99, 1.0, 0.3], [0.7, 0.2, 0.0, 0.0, 0.0], [0.4, 0.8, 0.1, 0.6, 0.9]])
    hist_len = [5, 2, 11]
    mask = _mask(hist_len, L)
    enc(r, mask, tf.constant(hist_len))
    rng = np.random.default_rng(0)
    enc.set_weights([rng.normal(size=w.shape).astype("float32") for w in enc.get_weights()])
    out = enc(r, mask, tf.constant(hist_len)).numpy()
    rn = r.numpy()
    r_d = (enc.w.numpy() * rn + enc.b.numpy())[..., None] * enc.bucket_emb.embeddings.numpy()[
        np.floor(rn * (nb - 1)).astype(int)]
    parts = [r_d, sine_cosine_encoding(r, d).numpy()] if use_sine_cosine else [r_d]
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    h = relu(np.concatenate(parts, -1) @ enc.dense1.kernel.numpy() + enc.dense1.bias.numpy())
    rec = np.clip(np.array(hist_len)[:, None] - 1 - np.arange(L)[None], 0, L - 1)
    pe = enc.pos_emb.embeddings.numpy()[rec]
    want = relu(np.concatenate([h, pe], -1) @ enc.dense2.kernel.numpy() + enc.dense2.bias.numpy())
    want *= mask.numpy()[..., None]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ MIFU eq. (5)-(9)
def test_sliding_window_is_local_and_masks_padding():
    L, d = 16, 8
    att = SlidingWindowAttention(dim=d, window=4)  # |i - j| <= 2
    x = tf.random.stateless_normal([2, L, d], seed=[1, 2])
    mask = _mask([L, 12], L)
    base = att(x, mask).numpy()
    assert base.shape == (2, L, d) and np.all(np.isfinite(base))
    assert np.all(base[1, 12:] == 0)
    # perturb slot 10 of row 0: only slots 8..12 may change
    x2 = tf.tensor_scatter_nd_update(x, [[0, 10]], [tf.ones([d]) * 5.0])
    out = att(x2, mask).numpy()
    changed = np.any(np.abs(out[0] - base[0]) > 1e-6, axis=-1)
    assert not changed[:8].any() and not changed[13:].any()
    assert changed[8:13].all()
    np.testing.assert_array_equal(out[1], base[1])
    # padded slots of row 1 (12..15) never leak into any output
    x3 = tf.tensor_scatter_nd_update(x, [[1, 12], [1, 13], [1, 15]], tf.fill([3, d], 100.0))
    np.testing.assert_allclose(att(x3, mask).numpy(), base, rtol=0, atol=1e-6)
    # empty history -> zeros, not NaN
    empty = att(x, _mask([0, 0], L)).numpy()
    assert np.all(empty == 0)
    # window 1 (only itself) without residual = x_i W_V
    att1 = SlidingWindowAttention(dim=d, window=1, residual=False)
    np.testing.assert_allclose(att1(x, mask).numpy()[0], att1.v(x).numpy()[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window,L", [(1, 13), (4, 13), (5, 13), (10, 13), (4, 12), (10, 20)])
def test_sliding_window_matches_dense_band_attention(window, L):
    """eq. (5)-(6) by brute force: out_i = x_i + sum_{j valid, |i - j| <= w // 2} softmax_j(q_i . k_j / sqrt(d)) v_j
    for valid i, 0 elsewhere; the blocked implementation must agree whether or not the block size divides L."""
    d = 4
    att = SlidingWindowAttention(dim=d, window=window)
    x = tf.random.stateless_normal([3, L, d], seed=[7, window])
    hist_len = [L, 6, 0]
    mask = _mask(hist_len, L)
    out = att(x, mask).numpy()
    xn = x.numpy() * mask.numpy()[..., None]
    q, k, v = (xn @ layer.kernel.numpy() for layer in (att.q, att.k, att.v))
    want = np.zeros_like(xn)
    for b, n in enumerate(hist_len):
        for i in range(n):
            js = [j for j in range(n) if abs(i - j) <= window // 2]
            s = np.array([q[b, i] @ k[b, j] for j in js]) / math.sqrt(d)
            a = np.exp(s - s.max())
            want[b, i] = xn[b, i] + (a / a.sum()) @ v[b, js]
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_sliding_window_builds_no_LxL_tensor():
    L, d = 64, 8
    att = SlidingWindowAttention(dim=d, window=10)

    @tf.function(input_signature=[tf.TensorSpec([3, L, d]), tf.TensorSpec([3, L], tf.bool)])
    def fwd_bwd(x, mask):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(att(x, mask) ** 2)
        return y, tape.gradient(y, [x] + att.trainable_weights)

    att(tf.zeros([3, L, d]), tf.ones([3, L], tf.bool))  # build outside the trace
    graph = fwd_bwd.get_concrete_function().graph
    assert _square_tensors(graph, L) == []

    # the detector does see a dense [L, L] attention
    @tf.function(input_signature=[tf.TensorSpec([3, L, d])])
    def dense(x):
        return tf.nn.softmax(tf.einsum("bid,bjd->bij", x, x)) @ x

    assert _square_tensors(dense.get_concrete_function().graph, L)


def test_cross_modal_attention_shapes_padding_and_empty():
    L, d = 7, 8
    cross = CrossModalInterestAttention(dim=d)
    s1 = tf.random.stateless_normal([3, L, d], seed=[3, 4])
    s2 = tf.random.stateless_normal([3, L, d], seed=[5, 6])
    m1, m2 = _mask([7, 4, 0], L), _mask([7, 2, 0], L)
    r1, r2 = cross(s1, s2, m1, m2)
    assert r1.shape == (3, d) and r2.shape == (3, d)
    assert np.all(np.isfinite(r1.numpy())) and np.all(np.isfinite(r2.numpy()))
    assert np.all(r1.numpy()[2] == 0) and np.all(r2.numpy()[2] == 0)  # empty history -> zeros
    # changing padded slots changes nothing
    s1b = tf.concat([s1[:, :4], s1[:, 4:] + 50.0], axis=1)
    s2b = tf.concat([s2[:, :2], s2[:, 2:] - 50.0], axis=1)
    r1b, r2b = cross(s1b, s2b, m1, m2)
    np.testing.assert_allclose(r1b.numpy()[1:], r1.numpy()[1:], atol=1e-5)
    np.testing.assert_allclose(r2b.numpy()[1:], r2.numpy()[1:], atol=1e-5)
    # eq. (8) by hand for row 1: query from the pooled m2 sequence, keys/values from m1
    p = cross.proj[0]
    pool2 = tf.reduce_mean(s2[1:2, :2], axis=1)
    q = p["q"](pool2).numpy()[0]
    k, v = p["k"](s1[1, :4]).numpy(), p["v"](s1[1, :4]).numpy()
    a = np.exp(k @ q / math.sqrt(d))
    np.testing.assert_allclose(r1.numpy()[1], (a / a.sum()) @ v, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ IDDU eq. (10)-(13)
def test_interest_distribution_hand_made():
    dist = InterestDistribution(l=2, n=4)
    r = tf.constant([[0.1, 0.3, 0.6, 0.95, 0.0],
                     [1.0, 0.5, 0.0, 0.9, 0.9],  # slots 3, 4 are padding (r there must be ignored)
                     [0.7, 0.7, 0.7, 0.7, 0.7]])
    hist_len = tf.constant([4, 3, 0])
    P = dist(r, _mask([4, 3, 0], 5), hist_len).numpy()
    assert P.shape == (3, 2, 4)
    # row 0: segments floor(j*2/4) = 0,0,1,1; bins floor(r*4) = 0,1,2,3
    want0 = np.zeros((2, 4))
    want0[0, 0] = want0[0, 1] = want0[1, 2] = want0[1, 3] = 0.25
    np.testing.assert_allclose(P[0], want0, atol=1e-7)
    # row 1: segments floor(j*2/3) = 0,0,1; bins 3 (r = 1 -> last bin), 2, 0
    want1 = np.zeros((2, 4))
    want1[0, 3] = want1[0, 2] = want1[1, 0] = 1 / 3
    np.testing.assert_allclose(P[1], want1, atol=1e-7)
    np.testing.assert_array_equal(P[2], 0)  # hist_len = 0 -> all zero
    # l = 1 (w/o MIEU-t): similarity histogram only
    P1 = InterestDistribution(l=1, n=4)(r, _mask([4, 3, 0], 5), hist_len).numpy()
    np.testing.assert_allclose(P1[0, 0], [0.25, 0.25, 0.25, 0.25])
    # a slot masked because its modality vector is missing is not counted; P still sums to 1
    mask = _mask([4, 3, 0], 5).numpy()
    mask[0, 1] = False
    Pm = dist(r, mask, hist_len).numpy()
    np.testing.assert_allclose(Pm[0].sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(Pm[0, 0, 0], 1 / 3, rtol=1e-6)
    assert Pm[0, 0, 1] == 0


def test_interest_distribution_sums_and_no_gradient():
    B, L = 32, 20
    r = tf.random.stateless_uniform([B, L], seed=[7, 8])
    hist_len = tf.random.stateless_uniform([B], seed=[9, 9], minval=0, maxval=L + 1, dtype=tf.int32)
    dist = InterestDistribution(l=10, n=10)
    with tf.GradientTape() as tape:
        tape.watch(r)
        P = dist(r, tf.sequence_mask(hist_len, L), hist_len)
    sums = tf.reduce_sum(P, axis=[1, 2]).numpy()
    np.testing.assert_allclose(sums, (hist_len.numpy() > 0).astype(np.float32), rtol=1e-5)
    assert tape.gradient(P, r) is None
    # number of non-empty time segments = min(hist_len, l)
    nonempty = tf.reduce_sum(tf.cast(tf.reduce_sum(P, axis=2) > 0, tf.int32), axis=1).numpy()
    np.testing.assert_array_equal(nonempty, np.minimum(hist_len.numpy(), 10))


def test_interest_decoder_loss_and_modes():
    l, n, d, L = 3, 4, 8, 6
    dec = InterestDecoder(l=l, n=n, num_modalities=2, units=(16,), mask_ratio=0.3, lambda_dec=0.5, seed=1)
    seqs = [tf.random.stateless_normal([4, L, d], seed=[i, 1]) for i in range(2)]
    hl = tf.constant([6, 3, 1, 0])
    masks = [tf.sequence_mask(hl, L)] * 2
    r = tf.random.stateless_uniform([4, L], seed=[2, 2])
    Ps = [InterestDistribution(l, n)(r, masks[0], hl)] * 2
    assert dec(seqs, masks, Ps, training=False) is None and not dec.losses
    loss = dec(seqs, masks, Ps, training=True)
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0
    assert len(dec.losses) == 1
    np.testing.assert_allclose(dec.losses[0].numpy(), 0.5 * loss.numpy(), rtol=1e-6)
    assert dec.dec_loss_tracker.result().numpy() == pytest.approx(loss.numpy(), rel=1e-6)
    # KL by hand for one example; a user without history contributes 0
    z = tf.random.stateless_normal([2, l * n], seed=[4, 4])
    p = tf.reshape(Ps[0][:1], [1, -1]).numpy()[0]
    q = tf.nn.softmax(z[0]).numpy()
    want = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    kl = dec.kl(tf.concat([Ps[0][:1], Ps[0][3:]], axis=0), z).numpy()
    assert kl[0] == pytest.approx(want, rel=1e-5) and kl[1] == 0
    # Q is a distribution over the l*n cells
    Q = dec.decode(0, seqs[0], masks[0]).numpy()
    assert Q.shape == (4, l, n)
    np.testing.assert_allclose(Q.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    # empty rows and all-empty batches give a finite (zero) loss
    dec0 = InterestDecoder(l=l, n=n, units=(16,))
    empty = [tf.zeros([4, L], tf.bool)] * 2
    zero = dec0(seqs, empty, [tf.zeros([4, l, n])] * 2, training=True)
    assert zero.numpy() == 0.0
    # the paper's sigmoid form stays available
    sig = InterestDecoder(l=l, n=n, units=(16,), q_activation="sigmoid")
    assert np.isfinite(sig(seqs, masks, Ps, training=True).numpy())
    with pytest.raises(ValueError):
        InterestDecoder(q_activation="relu")


def test_layer_configs_round_trip():
    layers = [SimilarityEncoder(num_buckets=7, dim=6, seq_len=9, use_sine_cosine=False, name="e"),
              SlidingWindowAttention(dim=6, window=5, residual=False, name="w"),
              CrossModalInterestAttention(dim=6, name="c"),
              InterestDistribution(l=3, n=5, name="p"),
              InterestDecoder(l=3, n=5, num_modalities=2, units=(12, 6), mask_ratio=0.2, lambda_dec=0.7,
                              q_activation="sigmoid", seed=4, name="d")]
    for layer in layers:
        cfg = layer.get_config()
        clone = type(layer).from_config(cfg)
        assert clone.get_config() == cfg
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(again) is type(layer) and again.get_config() == cfg


# ------------------------------------------------------------------------------------------------ model
def test_dmae_with_one_modality_pools_without_cross_fusion(data):
    """One modality: no eq. (8)-(9); r* is eq. (7)'s masked mean of the window-attention output (docs/dmae.md),
    checked against numpy; the decoder reconstructs that one modality. No modality, or more than two, is refused
    naming the data or the flag that fixes it."""
    schema, splits, tables, x, y = data
    model = _dmae(schema, {"text": tables["text"]}, modalities=["text"])
    assert model.cross_attention is None and len(model.decoder.mlps) == 1
    batch = _batch(x, 8)
    feats = model.features(batch)
    r, mask = model.similarities(feats)["text"]
    seq = model.window_attention["text"](model.encoders["text"](r, mask, feats["hist_len"]), mask).numpy()
    m = mask.numpy()[..., None]
    want = (seq * m).sum(1) / np.maximum(m.sum(1), 1)
    np.testing.assert_allclose(model.encode(feats)["interest"][0].numpy(), want, rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(batch, training=True)) + tf.add_n(model.losses)
    assert len(model.losses) == 1 and np.isfinite(model.losses[0].numpy())
    assert all(g is not None for g in tape.gradient(loss, model.decoder.trainable_weights))
    none = Schema(seq_len=5, vocab={"user_id": 3, "item_id": 4, "cate_id": 2}, modalities={})
    with pytest.raises(ValueError, match="--dataset=scientific.*--model=din"):
        DMAE(none)
    three = Schema(seq_len=5, vocab={"user_id": 3, "item_id": 4, "cate_id": 2}, modalities={"a": 2, "b": 2, "c": 2})
    with pytest.raises(ValueError, match="--modalities=a,b"):
        DMAE(three)


def test_dmae_shapes_distributions_and_config_round_trip(data):
    schema, splits, tables, x, y = data
    model = _dmae(schema, tables, l=4, n=5)
    batch = _batch(x, 8)
    p = model(batch).numpy()
    assert p.shape == (8,) and np.all((p > 0) & (p < 1))
    pq = model.interest_distributions(batch)
    assert list(pq) == ["text", "image"]
    hl = np.minimum(batch["hist_len"], schema.seq_len)
    for P, Q in pq.values():
        assert P.shape == (8, 4, 5) and Q.shape == (8, 4, 5)
        np.testing.assert_allclose(tf.reduce_sum(Q, axis=[1, 2]).numpy(), 1.0, rtol=1e-5)
        sums = tf.reduce_sum(P, axis=[1, 2]).numpy()
        assert np.all(np.isclose(sums, 1.0, atol=1e-5) | (hl == 0))
    # keras serialisation round trip of the model
    cfg = model.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(clone, DMAE) and clone.get_config() == cfg
    clone(dummy_batch(clone.schema))
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(batch).numpy(), p, rtol=1e-5, atol=1e-6)
    # ablations: w/o IDDU has no decoder; w/o MIEU-t gives l = 1
    assert _dmae(schema, tables, lambda_dec=0.0).decoder is None
    flat = _dmae(schema, tables, use_time_axis=False, l=4, n=5)
    assert flat.interest_distributions(batch)["text"][0].shape == (8, 1, 5)


@pytest.mark.parametrize("kw", [{}, {"use_sine_cosine": False, "use_time_axis": False},
                                {"use_mifu": False, "q_activation": "sigmoid"}, {"lambda_dec": 0.0}])
def test_dmae_ablations_and_empty_history_are_finite(data, kw):
    schema, splits, tables, x, y = data
    model = _dmae(schema, tables, **kw)
    batch = _batch(x, 6)
    batch["hist_len"] = np.array([0, 0, 3, 1, 0, 12])  # cold-start users
    batch["hist_item_id"] = np.where(np.arange(schema.seq_len)[None] < batch["hist_len"][:, None],
                                     batch["hist_item_id"], 0)
    batch["item_id"][1] = 0  # OOV target: no modality vector at all
    yb = tf.constant([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    with tf.GradientTape() as tape:
        p = model(batch, training=True)
        loss = keras.losses.binary_crossentropy(yb, p) + tf.add_n(model.losses) if model.losses else \
            keras.losses.binary_crossentropy(yb, p)
    assert np.all(np.isfinite(p.numpy())) and np.isfinite(loss.numpy())
    assert len(model.losses) == (0 if kw.get("lambda_dec") == 0.0 else 1)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)
    all_empty = dict(batch, hist_len=np.zeros(6, np.int64))
    assert np.all(np.isfinite(model(all_empty, training=True).numpy()))
    assert all(np.isfinite(v.numpy()) for v in model.losses)


def test_dmae_inference_graph_has_no_decoder(data):
    schema, splits, tables, x, y = data
    model = _dmae(schema, tables)
    calls = []
    original = model.decoder.call

    def counting_call(*args, **kwargs):
        calls.append(kwargs.get("training"))
        return original(*args, **kwargs)

    model.decoder.call = counting_call
    spec = {k: tf.TensorSpec([None] + list(np.shape(v)[1:]), tf.int64) for k, v in x.items()}
    infer = tf.function(lambda inp: model(inp, training=False)).get_concrete_function(spec)
    assert calls == []
    decoder_vars = {id(v.value) for v in model.decoder.weights}
    assert decoder_vars and not decoder_vars & {id(v) for v in infer.variables}
    assert not [op.name for op in infer.graph.get_operations() if "iddu" in op.name.lower()]
    train = tf.function(lambda inp: model(inp, training=True)).get_concrete_function(spec)
    assert calls == [True]
    assert decoder_vars & {id(v) for v in train.variables}


def test_dmae_model_builds_no_LxL_tensor():
    L = 64
    schema = Schema(seq_len=L, vocab={"user_id": 11, "item_id": 31, "cate_id": 5}, modalities={"text": 6, "image": 10})
    model = DMAE(schema, emb_dim=4, mieu_dim=8, dnn_units=(16,), att_units=(8,), window=10)
    model(dummy_batch(schema))
    spec = {k: tf.TensorSpec([3] + list(np.shape(v)[1:]), tf.int64) for k, v in dummy_batch(schema).items()}

    @tf.function(input_signature=[spec])
    def step(inp):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(inp, training=True)) + tf.add_n(model.losses)
        return tape.gradient(loss, model.trainable_weights)

    graph = step.get_concrete_function().graph
    assert _square_tensors(graph, L) == []


def test_dmae_fit_jit_compiled_logs_dec_loss(data):
    # (plain graph-mode fit, logging dec_loss too, is exercised by the capability test below)
    schema, splits, tables, x, y = data
    keras.utils.set_random_seed(0)
    model = _dmae(schema, tables)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=True)
    hist = model.fit(x, y, batch_size=64, epochs=2, steps_per_epoch=3, verbose=0)
    assert "dec_loss" in hist.history and len(hist.history["dec_loss"]) == 2
    assert all(np.isfinite(v) and v > 0 for v in hist.history["dec_loss"] + hist.history["loss"])
    assert hist.history["loss"][-1] > 0.5 * hist.history["dec_loss"][-1]  # loss includes lambda_dec * L_dec
    # w/o IDDU: no decoder, hence no dec_loss tracker among the model's metrics
    assert "dec_loss" not in [m.name for m in _dmae(schema, tables, lambda_dec=0.0).metrics]


# ------------------------------------------------------------------------------------------------ capability
# DMAE vs DIN on synthetic data whose clicks depend on text/image attributes that only the frozen vectors reveal
# (same data, same budget: 16k training impressions, 2 epochs, batch 256, Adam(1e-3), emb_dim 8, test = 2000).
# Seed-to-seed spread: this test's loop with keras.utils.set_random_seed(s), s = 0..4, on this exact data, run as
#   PYTHONPATH=. python spread.py --users 2000 --items 1000 --seq_len 20 --imp 10 --epochs 2 --batch 256 \
#       --seeds 0,1,2,3,4          (scratch script, not in the repository; synthetic.py of 2026-11-23 19:25)
#   test AUC  DIN : 0.5017 0.5471 0.4782 0.5344 0.5591   mean 0.5241 sd 0.0334  (near chance: id embeddings
#                                                         do not generalise yet in this budget)
#             DMAE: 0.5988 0.5996 0.5977 0.5993 0.5883   mean 0.5967 sd 0.0048  (Bayes-optimal AUC 0.794)
# Mean gap 0.073; smallest gap over all 5 x 5 seed pairs 0.029 (DMAE seed 4 vs DIN seed 4); sd of a single
# DMAE - DIN difference 0.034. The margin 0.02 is below every observed pair gap (the seed-0 pair used here has
# 0.097), so a failure means DMAE lost (most of) its multimodal signal, not an unlucky seed.
MARGIN = 0.02


@pytest.mark.slow
def test_dmae_beats_din_on_synthetic():
    schema, splits, vectors, present, _ = generate(SyntheticConfig(
        num_users=2000, num_items=1000, seq_len=20, max_hist=30, impressions_per_user=10, seed=0))
    tables = {m: quantize(vectors[m], present[m]) for m in vectors}
    x = {s: {k: splits[s][k] for k in schema.model_inputs} for s in ("train", "test")}
    aucs = {}
    for cls, kw in ((DIN, {}), (DMAE, {"mieu_dim": 8})):
        keras.utils.set_random_seed(0)
        model = cls(schema, emb_dim=8, **kw)
        model(dummy_batch(schema))
        if cls is DMAE:
            model.set_tables(tables)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        hist = model.fit(x["train"], splits["train"]["label"], batch_size=256, epochs=2, verbose=0)
        aucs[cls.__name__] = auc(splits["test"]["label"], model(x["test"], training=False).numpy())
    assert len(hist.history["dec_loss"]) == 2 and np.all(np.isfinite(hist.history["dec_loss"]))
    assert hist.history["dec_loss"][1] < hist.history["dec_loss"][0]  # the decoder learns
    print("test AUC", aucs)
    assert aucs["DMAE"] > aucs["DIN"] + MARGIN, aucs
