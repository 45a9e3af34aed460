"""Tests of the DMAE layers (mmctr_tf/layers/dmae.py) and model (mmctr_tf/models/dmae.py)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_dice import check_stored_dice_statistics

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.data.schema import Schema
from mmctr_tf.data.synthetic import SyntheticConfig, generate
from mmctr_tf.data.tables import quantize
from mmctr_tf.evaluation.metrics import auc
from mmctr_tf.layers.core import FrozenVectorTable, safe_cosine
from mmctr_tf.layers.dmae import (
    CrossModalInterestAttention,
    InterestDecoder,
    InterestDistribution,
    SimilarityEncoder,
    SlidingWindowAttention,
    bucket_index,
    pack_slots,
    sine_cosine_encoding,
)
from mmctr_tf.models.base import dummy_batch
from mmctr_tf.models.din import DIN
from mmctr_tf.models.dmae import DMAE
from mmctr_tf.training.callbacks import read_epochs, reestimate_dice_statistics
from mmctr_tf.training.trainer import TrainConfig, train


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


def _numpy_decode(mlp, seq, mask, l, n):  # noqa: E741
    """eq. (11)-(12) without the random mask, in numpy: softmax over the l*n cells of MLP(mean of the valid slots)
    (a row without a valid slot pools to 0). `mlp`: the decoder MLP (one ReLU layer, then the linear output)."""
    (hidden,), out = mlp.dense, mlp.out
    m = mask.astype(np.float64)[..., None]
    pooled = (seq * m).sum(1) / np.maximum(m.sum(1), 1.0)
    z = np.maximum(pooled @ hidden.kernel.numpy() + hidden.bias.numpy(), 0.0) @ out.kernel.numpy() + out.bias.numpy()
    q = np.exp(z - z.max(-1, keepdims=True))
    return (q / q.sum(-1, keepdims=True)).reshape(-1, l, n)


def _recency(hist_len, L):
    """numpy: recency hist_len - 1 - j of every slot [B, L] (0 = most recent)."""
    return np.asarray(hist_len)[:, None] - 1 - np.arange(L)[None, :]


def _flat(mask):
    """All-slots packing of a [B, L] mask in numpy/tf form: (valid [B*L] bool, rows [B*L] int32)."""
    mask = np.asarray(mask, bool)
    return tf.constant(mask.reshape(-1)), tf.constant(np.repeat(np.arange(mask.shape[0]), mask.shape[1]), tf.int32)


# ------------------------------------------------------------------------------------------------ numpy references
def _relu(v):
    return np.maximum(v, 0.0)


def numpy_mieu(enc, r, recency, valid):
    """eq. (1)-(4) written out in numpy: ReLU(W2 [ReLU(W1 [r_d ; r_sc] + b1) ; PE[T - j]] + b2), 0 where not
    valid; r, recency, valid [B, L] (recency clipped to the position table as the layer does)."""
    r_d = (enc.w.numpy() * r + enc.b.numpy())[..., None] * enc.bucket_emb.embeddings.numpy()[
        np.floor(r * (enc.num_buckets - 1)).astype(int)]
    i = np.arange(enc.dim // 2)
    angle = r[..., None] / 10.0 ** (2 * i / enc.dim)
    r_sc = np.stack([np.sin(angle), np.cos(angle)], -1).reshape(r.shape + (enc.dim,))
    parts = [r_d, r_sc] if enc.use_sine_cosine else [r_d]
    h = _relu(np.concatenate(parts, -1) @ enc.dense1.kernel.numpy() + enc.dense1.bias.numpy())
    pe = enc.pos_emb.embeddings.numpy()[np.clip(recency, 0, enc.seq_len - 1)]
    out = _relu(np.concatenate([h, pe], -1) @ enc.dense2.kernel.numpy() + enc.dense2.bias.numpy())
    return out * valid[..., None]


def numpy_window(att, x, valid):
    """eq. (5)-(6) by brute force per example: out_i = x_i + sum_{j valid, |i - j| <= w // 2} softmax_j(q_i . k_j /
    sqrt(d)) v_j for valid i, 0 elsewhere; x [B, L, d], valid [B, L]."""
    q, k, v = (x @ layer.kernel.numpy() for layer in (att.q, att.k, att.v))
    out = np.zeros(x.shape[:2] + (att.dim,), np.float64)
    for b in range(x.shape[0]):
        for i in np.flatnonzero(valid[b]):
            js = [j for j in np.flatnonzero(valid[b]) if abs(i - j) <= att.window // 2]
            s = np.array([q[b, i] @ k[b, j] for j in js]) / math.sqrt(att.dim)
            a = np.exp(s - s.max())
            out[b, i] = (x[b, i] if att.residual else 0.0) + (a / a.sum()) @ v[b, js]
    return out


def numpy_interest(model, batch):
    """DMAE's r*_m of eq. (7)-(9) for a batch, every step in numpy on the padded [B, L] layout from the model's
    weights and stored tables: r = (cos + 1) / 2 with masking (SPEC §2), eq. (1)-(4), eq. (5)-(6), eq. (7)-(9)."""
    feats = model.features(batch)
    ids = {k: v.numpy() for k, v in feats["ids"].items()}
    hist_len, mask = feats["hist_len"].numpy(), feats["mask"].numpy()
    seqs, valids = [], []
    for m in model.modalities:
        table = model.tables[m].get_table()
        vec, present = table.dequantize().astype(np.float64), table.present
        t, h = vec[ids["item_id"]], vec[ids["hist_item_id"]]
        norm = lambda a: np.where(np.linalg.norm(a, axis=-1) > 0, np.linalg.norm(a, axis=-1), 1.0)  # noqa: E731
        cos = (h * t[:, None]).sum(-1) / (norm(h) * norm(t)[:, None])
        valid = mask & present[ids["hist_item_id"]] & present[ids["item_id"]][:, None]
        r = np.where(valid, (cos + 1) / 2, 0.0)
        seq = numpy_mieu(model.encoders[m], r, _recency(hist_len, mask.shape[1]), valid)
        if model.use_mifu:
            seq = numpy_window(model.window_attention[m], seq, valid)
        seqs.append(seq), valids.append(valid)
    pooled = [(s * v[..., None]).sum(1) / np.maximum(v.sum(1), 1)[:, None] for s, v in zip(seqs, valids)]  # eq. 7
    if model.cross_attention is None:
        return pooled
    out = []
    for i, (seq, valid) in enumerate(zip(seqs, valids)):  # eq. (8)-(9): query from the other modality
        p = {k: layer.kernel.numpy() for k, layer in model.cross_attention.proj[i].items()}
        scores = np.einsum("bld,bd->bl", seq @ p["k"], pooled[1 - i] @ p["q"]) / math.sqrt(model.mieu_dim)
        a = np.exp(np.where(valid, scores - np.where(valid, scores, -np.inf).max(1, keepdims=True), -np.inf))
        a = np.where(valid.any(1, keepdims=True), a / np.maximum(a.sum(1, keepdims=True), 1e-300), 0.0)
        out.append(np.einsum("bl,bld->bd", a, seq) @ p["v"])
    return out


# ------------------------------------------------------------------------------------------------ r (SPEC §2)
@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_table_cosines_equal_safe_cosine(storage):
    """DMAE's r uses FrozenVectorTable.cosines (dot product times stored inverse row norms); the reference form is
    safe_cosine of the looked-up vectors: equal to rounding, 0 for missing (zero) rows and out-of-vocabulary ids,
    exactly 1 for an item with itself."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(9, 5)).astype(np.float32) * rng.uniform(0.1, 10, size=(9, 1)).astype(np.float32)
    vectors[3] = 0.0  # an item without a vector
    table = FrozenVectorTable(9, 5, storage, inverse_norms=True)
    table.set_table(quantize(vectors, None, storage))
    target_ids = tf.constant([1, 3, 2, 0, 12], tf.int64)
    hist_ids = tf.constant([[2, 3, 4, 0], [1, 2, 3, 4], [2, 2, 8, 7], [5, 6, 0, 0], [1, -1, 9, 2]], tf.int64)
    (tv, _), (hv, _) = table(target_ids), table(hist_ids)
    pair_ids = tf.broadcast_to(target_ids[:, None], hist_ids.shape)
    got = table.cosines(pair_ids, tf.broadcast_to(tv[:, None], hv.shape), hist_ids, hv).numpy()
    want = safe_cosine(tf.expand_dims(tv, 1), hv).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[1] == 0) and np.all(got[3] == 0) and got[0, 1] == 0 and got[4, 1] == got[4, 2] == 0
    v = quantize(vectors, None, storage).dequantize()  # numpy cosine of the stored rows
    n = np.linalg.norm(v, axis=1)
    assert np.all(got[2, :2] == 1.0) and got[0, 0] != 1.0  # an item with itself: exactly 1 (eq. 2's last bucket)
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


def test_similarity_encoder_padding_and_recency():
    enc = SimilarityEncoder(num_buckets=5, dim=4, seq_len=6)
    r = tf.constant([[0.1, 0.2, 0.3, 0.0, 0.0, 0.0],
                     [0.9, 0.9, 0.1, 0.2, 0.3, 0.7]])
    mask, rec = _mask([3, 5], 6), _recency([3, 5], 6)
    out = enc(r, mask, rec).numpy()
    assert out.shape == (2, 6, 4)
    assert np.all(out[0, 3:] == 0) and np.all(out[1, 5:] == 0)  # padding is zero
    # recency indexing: the last three behaviours of both rows have the same r and the same recency (2, 1, 0),
    # so their encodings match although they sit at different slots
    np.testing.assert_allclose(out[0, :3], out[1, 2:5], rtol=1e-5, atol=1e-6)
    # (eq. (1)-(2) are checked in the forward pass by test_similarity_encoder_eq4_matches_numpy)
    # w/o MIEU-se: bucket representation only (W1 is d x d)
    enc2 = SimilarityEncoder(num_buckets=5, dim=4, seq_len=6, use_sine_cosine=False)
    assert enc2(r, mask, rec).shape == (2, 6, 4)
    assert tuple(enc2.dense1.kernel.shape) == (4, 4)
    assert tuple(enc.dense1.kernel.shape) == (8, 4)


@pytest.mark.parametrize("use_sine_cosine", [True, False])
def test_similarity_encoder_eq4_matches_numpy(use_sine_cosine):
    """The layer projects the bucket and position tables before the lookup (no [B, L, 2d] concat); the result
    must equal eq. (4) written out literally: ReLU(W2 [ReLU(W1 [r_d ; r_sc] + b1) ; PE[T - j]] + b2)."""
    nb, d, L = 6, 4, 5
    enc = SimilarityEncoder(num_buckets=nb, dim=d, seq_len=L, use_sine_cosine=use_sine_cosine)
    # row 2: hist_len beyond L (recency indices clipped to the position table)
    r = tf.constant([[0.05, 0.5, 0.99, 1.0, 0.3], [0.7, 0.2, 0.0, 0.0, 0.0], [0.4, 0.8, 0.1, 0.6, 0.9]])
    hist_len = [5, 2, 11]
    mask = _mask(hist_len, L)
    enc(r, mask, _recency(hist_len, L))
    rng = np.random.default_rng(0)
    enc.set_weights([rng.normal(size=w.shape).astype("float32") for w in enc.get_weights()])
    out = enc(r, mask, _recency(hist_len, L)).numpy()
    np.testing.assert_allclose(out, numpy_mieu(enc, r.numpy(), _recency(hist_len, L), mask.numpy()), rtol=1e-5,
                               atol=1e-5)


# ------------------------------------------------------------------------------------------------ MIFU eq. (5)-(9)
def _window(att, x, mask):
    """The window attention on the all-slots packing of x [B, L, d], back in [B, L, d]."""
    valid, rows = _flat(mask)
    return tf.reshape(att(tf.reshape(x, [-1, x.shape[-1]]), valid, rows), x.shape)


def test_sliding_window_is_local_and_masks_padding():
    L, d = 16, 8
    att = SlidingWindowAttention(dim=d, window=4)  # |i - j| <= 2
    x = tf.random.stateless_normal([2, L, d], seed=[1, 2])
    mask = _mask([L, 12], L)
    base = _window(att, x, mask).numpy()
    assert base.shape == (2, L, d) and np.all(np.isfinite(base))
    assert np.all(base[1, 12:] == 0)
    # perturb slot 10 of row 0: only slots 8..12 may change
    x2 = tf.tensor_scatter_nd_update(x, [[0, 10]], [tf.ones([d]) * 5.0])
    out = _window(att, x2, mask).numpy()
    changed = np.any(np.abs(out[0] - base[0]) > 1e-6, axis=-1)
    assert not changed[:8].any() and not changed[13:].any()
    assert changed[8:13].all()
    np.testing.assert_array_equal(out[1], base[1])
    # never across examples: row 0's last slot is packed right before row 1's first one
    x4 = tf.tensor_scatter_nd_update(x, [[0, L - 1]], [tf.ones([d]) * 5.0])
    np.testing.assert_array_equal(_window(att, x4, mask).numpy()[1], base[1])
    # padded slots of row 1 (12..15) never leak into any output
    x3 = tf.tensor_scatter_nd_update(x, [[1, 12], [1, 13], [1, 15]], tf.fill([3, d], 100.0))
    np.testing.assert_allclose(_window(att, x3, mask).numpy(), base, rtol=0, atol=1e-6)
    # empty history -> zeros, not NaN
    assert np.all(_window(att, x, _mask([0, 0], L)).numpy() == 0)
    # window 1 (only itself) without residual = x_i W_V
    att1 = SlidingWindowAttention(dim=d, window=1, residual=False)
    np.testing.assert_allclose(_window(att1, x, mask).numpy()[0], att1.v(x).numpy()[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("all_slots", [False, True])
@pytest.mark.parametrize("window,L", [(1, 13), (4, 13), (5, 13), (10, 13), (4, 12), (10, 20)])
def test_sliding_window_matches_dense_band_attention(window, L, all_slots):
    """eq. (5)-(6) by brute force per example: out_i = x_i + sum_{j valid, |i - j| <= w // 2} softmax_j(q_i . k_j /
    sqrt(d)) v_j for valid i, 0 elsewhere; the blocked attention on the packed slots (only j < hist_len, or all)
    must agree, with a masked slot inside a history, whether or not the block size divides N."""
    d = 4
    att = SlidingWindowAttention(dim=d, window=window)
    x = tf.random.stateless_normal([4, L, d], seed=[7, window]).numpy()
    hist_len = [L, 6, 0, 3]
    mask = _mask(hist_len, L).numpy()
    valid = mask.copy()
    valid[1, 2] = False  # e.g. a behaviour without this modality's vector
    rows, slots = (t.numpy() for t in pack_slots(tf.constant(mask), all_slots))
    out = att(tf.constant(x[rows, slots]), tf.constant(valid[rows, slots]), tf.constant(rows)).numpy()
    got = np.zeros_like(x)
    got[rows, slots] = out
    np.testing.assert_allclose(got, numpy_window(att, x, valid), rtol=1e-5, atol=1e-5)


def _large_tensors(graph, size):
    """Tensors of `graph` (forward and gradient ops) with two or more dimensions larger than `size`."""
    out = []
    for op in graph.get_operations():
        for t in op.outputs:
            if t.shape.rank is not None and sum(dim is not None and dim > size for dim in t.shape.as_list()) >= 2:
                out.append((op.name, tuple(t.shape.as_list())))
    return out


def test_sliding_window_cost_is_linear():
    """No [N, N] tensor: with N = 640 packed positions and window 10, nothing in the traced forward and gradient
    graph has two dimensions larger than the 20 keys of a block (a dense band attention would: checked)."""
    N, d = 640, 8
    att = SlidingWindowAttention(dim=d, window=10)
    spec = [tf.TensorSpec([N, d]), tf.TensorSpec([N], tf.bool), tf.TensorSpec([N], tf.int32)]

    @tf.function(input_signature=spec)
    def fwd_bwd(x, valid, rows):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(att(x, valid, rows) ** 2)
        return y, tape.gradient(y, [x] + att.trainable_weights)

    att(tf.zeros([N, d]), tf.ones([N], tf.bool), tf.zeros([N], tf.int32))  # build outside the trace
    assert _large_tensors(fwd_bwd.get_concrete_function().graph, 20) == []

    @tf.function(input_signature=spec[:1])
    def dense(x):
        return tf.nn.softmax(tf.matmul(x, x, transpose_b=True)) @ x

    assert _large_tensors(dense.get_concrete_function().graph, 20)


def test_cross_modal_attention_shapes_padding_and_empty():
    L, d = 7, 8
    cross = CrossModalInterestAttention(dim=d)
    s1 = tf.random.stateless_normal([3, L, d], seed=[3, 4])
    s2 = tf.random.stateless_normal([3, L, d], seed=[5, 6])
    m1, m2 = _mask([7, 4, 0], L), _mask([7, 2, 0], L)
    (v1, rows), (v2, _) = _flat(m1), _flat(m2)

    def run(a, b):
        return cross(tf.reshape(a, [-1, d]), tf.reshape(b, [-1, d]), v1, v2, rows, num_rows=3)

    r1, r2 = run(s1, s2)
    assert r1.shape == (3, d) and r2.shape == (3, d)
    assert np.all(np.isfinite(r1.numpy())) and np.all(np.isfinite(r2.numpy()))
    assert np.all(r1.numpy()[2] == 0) and np.all(r2.numpy()[2] == 0)  # empty history -> zeros
    # changing masked slots changes nothing
    s1b = tf.concat([s1[:, :4], s1[:, 4:] + 50.0], axis=1)
    s2b = tf.concat([s2[:, :2], s2[:, 2:] - 50.0], axis=1)
    r1b, r2b = run(s1b, s2b)
    np.testing.assert_allclose(r1b.numpy()[1:], r1.numpy()[1:], atol=1e-5)
    np.testing.assert_allclose(r2b.numpy()[1:], r2.numpy()[1:], atol=1e-5)
    # eq. (7)-(8) by hand for row 1: query from the pooled m2 sequence, keys/values from m1
    p = cross.proj[0]
    pool2 = tf.reduce_mean(s2[1:2, :2], axis=1)
    q = p["q"](pool2).numpy()[0]
    k, v = p["k"](s1[1, :4]).numpy(), p["v"](s1[1, :4]).numpy()
    a = np.exp(k @ q / math.sqrt(d))
    np.testing.assert_allclose(r1.numpy()[1], (a / a.sum()) @ v, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ IDDU eq. (10)-(13)
def _distribution(dist, r, valid, hist_len):
    """P of [B, L] inputs through the all-slots packing."""
    valid, rows = _flat(valid)
    L = np.shape(r)[1]
    slots = tf.constant(np.tile(np.arange(L), np.shape(r)[0]), tf.int32)
    return dist(tf.reshape(r, [-1]), valid, rows, slots, hist_len)


def test_interest_distribution_hand_made():
    dist = InterestDistribution(l=2, n=4)
    r = tf.constant([[0.1, 0.3, 0.6, 0.95, 0.0],
                     [1.0, 0.5, 0.0, 0.9, 0.9],  # slots 3, 4 are padding (r there must be ignored)
                     [0.7, 0.7, 0.7, 0.7, 0.7]])
    hist_len = tf.constant([4, 3, 0])
    P = _distribution(dist, r, _mask([4, 3, 0], 5), hist_len).numpy()
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
    P1 = _distribution(InterestDistribution(l=1, n=4), r, _mask([4, 3, 0], 5), hist_len).numpy()
    np.testing.assert_allclose(P1[0, 0], [0.25, 0.25, 0.25, 0.25])
    # a slot masked because its modality vector is missing is not counted; P still sums to 1
    mask = _mask([4, 3, 0], 5).numpy()
    mask[0, 1] = False
    Pm = _distribution(dist, r, mask, hist_len).numpy()
    np.testing.assert_allclose(Pm[0].sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(Pm[0, 0, 0], 1 / 3, rtol=1e-6)
    assert Pm[0, 0, 1] == 0
    # the packing of the valid slots only gives the same P
    rows, slots = pack_slots(_mask([4, 3, 0], 5))
    np.testing.assert_allclose(dist(tf.gather_nd(r, tf.stack([rows, slots], 1)), tf.ones_like(rows, tf.bool), rows,
                                    slots, hist_len).numpy(), P, atol=1e-7)


def test_interest_distribution_sums_and_no_gradient():
    B, L = 32, 20
    r = tf.random.stateless_uniform([B, L], seed=[7, 8])
    hist_len = tf.random.stateless_uniform([B], seed=[9, 9], minval=0, maxval=L + 1, dtype=tf.int32)
    dist = InterestDistribution(l=10, n=10)
    with tf.GradientTape() as tape:
        tape.watch(r)
        P = _distribution(dist, r, tf.sequence_mask(hist_len, L), hist_len)
    sums = tf.reduce_sum(P, axis=[1, 2]).numpy()
    np.testing.assert_allclose(sums, (hist_len.numpy() > 0).astype(np.float32), rtol=1e-5)
    assert tape.gradient(P, r) is None
    # number of non-empty time segments = min(hist_len, l)
    nonempty = tf.reduce_sum(tf.cast(tf.reduce_sum(P, axis=2) > 0, tf.int32), axis=1).numpy()
    np.testing.assert_array_equal(nonempty, np.minimum(hist_len.numpy(), 10))


def test_interest_decoder_loss_and_modes():
    l, n, d, L = 3, 4, 8, 6  # noqa: E741 (the paper's names)
    dec = InterestDecoder(l=l, n=n, num_modalities=2, units=(16,), mask_ratio=0.3, lambda_dec=0.5, seed=1)
    seqs = [tf.reshape(tf.random.stateless_normal([4, L, d], seed=[i, 1]), [-1, d]) for i in range(2)]
    hl = tf.constant([6, 3, 1, 0])
    valid, rows = _flat(tf.sequence_mask(hl, L))
    valids = [valid] * 2
    r = tf.random.stateless_uniform([4, L], seed=[2, 2])
    Ps = [_distribution(InterestDistribution(l, n), r, tf.sequence_mask(hl, L), hl)] * 2
    assert dec(seqs, valids, Ps, rows, training=False) is None and not dec.losses
    loss = dec(seqs, valids, Ps, rows, training=True)
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
    # Q: each modality's own MLP on the mean of all valid slots (no random mask), recomputed in numpy
    for i in range(2):
        Q = dec.decode(i, seqs[i], valids[i], rows, 4).numpy()
        assert Q.shape == (4, l, n)
        np.testing.assert_allclose(Q, _numpy_decode(dec.mlps[i], seqs[i].numpy().reshape(4, L, d),
                                                    valids[i].numpy().reshape(4, L), l, n), rtol=1e-5, atol=1e-7)
    # empty rows and all-empty batches give a finite (zero) loss
    dec0 = InterestDecoder(l=l, n=n, units=(16,))
    empty = [tf.zeros([4 * L], tf.bool)] * 2
    zero = dec0(seqs, empty, [tf.zeros([4, l, n])] * 2, rows, training=True)
    assert zero.numpy() == 0.0
    # the paper's sigmoid form stays available
    sig = InterestDecoder(l=l, n=n, units=(16,), q_activation="sigmoid")
    assert np.isfinite(sig(seqs, valids, Ps, rows, training=True).numpy())
    with pytest.raises(ValueError):
        InterestDecoder(q_activation="relu")


def test_random_keep_drops_at_the_ratio_and_keeps_an_example_whole_when_all_dropped():
    """eq. (11)'s position mask on packed slots: over many draws each valid slot is kept with probability
    1 - mask_ratio (binomial check), masked slots never are, and an example whose slots were all dropped keeps them
    all (one-slot examples are then always whole)."""
    dec = InterestDecoder(l=2, n=2, mask_ratio=0.3, seed=3)
    valid, rows = _flat(tf.sequence_mask([6, 1, 0, 4], 6))
    keeps = np.stack([dec.random_keep(valid, rows, 4).numpy() for _ in range(400)])
    v = valid.numpy()
    assert not keeps[:, ~v].any()
    row0 = keeps[:, :6]  # 6 valid slots: P(all dropped) = 0.3^6, so the fallback barely matters
    assert abs(row0.mean() - 0.7) < 4 * math.sqrt(0.7 * 0.3 / row0.size)
    assert keeps[:, 6].all()  # the one-slot example: dropped -> kept whole


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
    """One modality: no eq. (8)-(9); r* is eq. (7)'s mean of the window-attention output over the valid slots
    (docs/dmae.md), checked against numpy; the decoder reconstructs that one modality. No modality, or more than
    two, is refused naming the data or the flag that fixes it."""
    schema, splits, tables, x, y = data
    model = _dmae(schema, {"text": tables["text"]}, modalities=["text"])
    assert model.cross_attention is None and len(model.decoder.mlps) == 1
    batch = _batch(x, 8)
    feats = model.features(batch)
    enc = model.encode(feats)
    seq, valid, rows = enc["seq"][0].numpy(), enc["valid"][0].numpy(), enc["rows"].numpy()
    want = np.stack([seq[(rows == b) & valid].mean(0) if ((rows == b) & valid).any() else np.zeros(seq.shape[1])
                     for b in range(8)])
    np.testing.assert_allclose(enc["interest"][0].numpy(), want, rtol=1e-5, atol=1e-6)
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


@pytest.mark.parametrize("all_slots", [False, True])
@pytest.mark.parametrize("kw", [{}, {"use_mifu": False}, {"modalities": ["image"]}])
def test_dmae_interest_matches_the_padded_numpy_reference(data, monkeypatch, kw, all_slots):
    """The packed computation (only the slots j < hist_len, or every slot as under XLA) against eq. (1)-(9) in numpy
    on the padded layout, on a batch with empty histories, an out-of-vocabulary target and items without an image
    vector."""
    import mmctr_tf.models.dmae as dmae_module

    schema, splits, tables, x, y = data
    model = _dmae(schema, tables, **kw)
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.normal(scale=0.3, size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in model.get_weights()])
    model.set_tables(tables)
    batch = _batch(x, 16)
    batch["hist_len"] = batch["hist_len"].copy()
    batch["hist_len"][[0, 5]] = 0
    batch["item_id"] = batch["item_id"].copy()
    batch["item_id"][3] = 10 ** 6
    assert not tables["image"].present.all()  # the synthetic data has items without an image vector
    pack = dmae_module.pack_slots
    monkeypatch.setattr(dmae_module, "pack_slots", lambda mask, **_: pack(mask, all_slots))
    got = model.encode(model.features(batch))["interest"]
    for g, w in zip(got, numpy_interest(model, batch)):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_dmae_shapes_and_distributions(data):
    schema, splits, tables, x, y = data
    model = _dmae(schema, tables, l=4, n=5)
    batch = _batch(x, 8)
    p = model(batch).numpy()
    assert p.shape == (8,)
    pq = model.interest_distributions(batch)
    assert list(pq) == ["text", "image"]
    hl = np.minimum(batch["hist_len"], schema.seq_len)
    enc = model.encode(model.features(batch, training=False), training=False)
    for i, (P, Q) in enumerate(pq.values()):
        assert P.shape == (8, 4, 5) and Q.shape == (8, 4, 5)
        # Q of modality i: decoder MLP i on modality i's MIFU sequence over its valid slots (numpy, on the padded
        # [B, L] layout rebuilt from the packed positions)
        rows, slots, packed = enc["rows"].numpy(), enc["slots"].numpy(), enc["seq"][i].numpy()
        seq = np.zeros((8, schema.seq_len, packed.shape[-1]))
        mask = np.zeros((8, schema.seq_len), bool)
        seq[rows, slots], mask[rows, slots] = packed, enc["valid"][i].numpy()
        np.testing.assert_allclose(Q.numpy(), _numpy_decode(model.decoder.mlps[i], seq, mask, 4, 5),
                                   rtol=1e-5, atol=1e-7)
        sums = tf.reduce_sum(P, axis=[1, 2]).numpy()
        assert np.all(np.isclose(sums, 1.0, atol=1e-5) | (hl == 0))
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_trainer_under_xla_logs_dec_loss(small_dataset, tmp_path):
    """The trainer with `--jit_compile` (XLA compiles the training step; Dice re-estimation, validation and the
    final predictions run their own tf.functions), on a tiny DMAE: XLA is compiled once, on a model that has the DIN
    backbone's Dice and DMAE's layers and auxiliary loss. (Diff-MSIN's graph: tests/test_diff_msin.py.) Each epoch
    logs L_dec, and the training loss is the click logloss plus lambda_dec x L_dec; the stored Dice statistics are
    those of the training data (tests/test_dice.py)."""
    hparams = {"emb_dim": 4, "dnn_units": [8], "att_units": [4], "mieu_dim": 4, "num_buckets": 6,
               "decoder_units": [4], "lambda_dec": 0.5}
    run = tmp_path / "xla"
    result = train(TrainConfig(model="dmae", dataset=small_dataset, run_dir=str(run), epochs=2, steps_per_epoch=2,
                               batch_size=256, jit_compile=True, verbose=0), hparams, log=lambda *a: None)
    assert np.isfinite(result["test"]["auc"])
    epochs = read_epochs(str(run))
    assert len(epochs) == 2
    for e in epochs:
        assert np.isfinite(e["dec_loss"]) and e["dec_loss"] > 0, e
        assert e["loss"] == pytest.approx(e["logloss"] + 0.5 * e["dec_loss"], rel=1e-5), e
        assert "val_dec_loss" not in e  # trained only: never validated
    check_stored_dice_statistics(run, small_dataset)
    # w/o IDDU: no decoder, hence no dec_loss tracker among the model's metrics
    data = Dataset(small_dataset)
    assert "dec_loss" not in [m.name for m in DMAE(data.schema, lambda_dec=0.0).metrics]


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
        story="attribute", num_users=2000, num_items=1000, seq_len=20, max_hist=30, impressions_per_user=10, seed=0))
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
        # the trainer's DiceStatistics: the model scored is the one trained
        reestimate_dice_statistics(model, ({k: v[i:i + 1024] for k, v in x["train"].items()} for i in (0, 1024)))
        p = model(x["test"], training=False).numpy()
        aucs[cls.__name__] = auc(splits["test"]["label"], p)
    assert len(hist.history["dec_loss"]) == 2 and np.all(np.isfinite(hist.history["dec_loss"]))
    assert hist.history["dec_loss"][1] < hist.history["dec_loss"][0]  # the decoder learns
    print("test AUC", aucs)
    assert aucs["DMAE"] > aucs["DIN"] + MARGIN, aucs
    # calibration in the large of the trained DMAE (issue #17: over-confident probabilities): its mean predicted
    # probability is close to the test click rate (measured: 0.1405 against 0.1350)
    y = splits["test"]["label"]
    assert abs(p.mean() - y.mean()) < 0.03, (p.mean(), y.mean())
