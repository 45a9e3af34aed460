"""Diff-MSIN: layers (MFE, SRC, L_syn, FDAF, cross), BST backbone, the model and its ablations (its capability
test: tests/test_capability.py).

Run: python -m pytest tests/test_diff_msin.py -x -q
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmctr_tf.data.synthetic import SyntheticConfig, generate
from mmctr_tf.data.tables import quantize
from mmctr_tf.layers.attention import TargetAttention
from mmctr_tf.layers.bst import BSTBackbone, TransformerBlock
from mmctr_tf.layers.core import PReLU
from mmctr_tf.layers.cross import CrossLayer
from mmctr_tf.layers.diff_msin import (
    AdaptiveFusion,
    MultimodalExperts,
    SynergyDiffusion,
    SynergyObjective,
    contrastive_loss,
    cosine,
    forward_noise,
    noise_schedule,
    reverse_step,
    synergy_hinge,
)
from mmctr_tf.layers.mha import MultiHeadCrossAttention
from mmctr_tf.models.base import dummy_batch
from mmctr_tf.models.diff_msin import DiffMSIN
from mmctr_tf.models.din import DIN

# Small model for the mechanical tests (the paper's sizes are the constructor defaults).
SMALL = dict(emb_dim=8, att_units=(8, 4), dnn_units=(16, 8), expert_units=16, num_heads=2, diffusion_steps=2)


@pytest.fixture(scope="module")
def data():
    cfg = SyntheticConfig(num_users=60, num_items=80, num_cates=5, dim=8, seq_len=6, min_hist=0, max_hist=8,
                          impressions_per_user=10, missing_image_rate=0.2, seed=3)
    schema, splits, vectors, present, _ = generate(cfg)
    tables = {m: quantize(vectors[m], present[m]) for m in schema.modalities}
    return schema, splits, tables


def inputs_of(schema, split, n=None):
    return {k: split[k][:n] for k in schema.model_inputs}


def build(schema, tables, **kw):
    model = DiffMSIN(schema, **{**SMALL, **kw})
    model(dummy_batch(schema))
    model.set_tables(tables)
    return model


def fit_few(model, schema, split, n=64, jit_compile=False, epochs=1, run_eagerly=False):
    """A couple of Adam steps through `fit`. run_eagerly=True skips tracing (graph building costs more than the
    steps on a small model), for tests that only check that a variant trains."""
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=jit_compile,
                  run_eagerly=run_eagerly)
    hist = model.fit(inputs_of(schema, split, n), split["label"][:n], batch_size=32, epochs=epochs, verbose=0)
    return hist.history


# ------------------------------------------------------------------------------------------- schedule, SRC math
def test_linear_schedule_values():
    alphas, bars = noise_schedule(12, "linear", 0.999, 0.98)
    assert alphas.shape == (12,) and bars.shape == (12,)
    np.testing.assert_allclose(alphas[[0, -1]], [0.999, 0.98])
    np.testing.assert_allclose(np.diff(alphas), -(0.999 - 0.98) / 11)
    np.testing.assert_allclose(bars, np.cumprod(alphas))
    np.testing.assert_allclose(noise_schedule(1, "linear")[0], [0.999])


def test_cosine_schedule_is_clamped():
    for T in (1, 5, 12, 50):
        alphas, bars = noise_schedule(T, "cosine")
        s = np.linspace(0, 0.9 * math.pi / 2, T + 1)
        raw = np.cos(s[1:]) ** 2 / np.cos(s[:-1]) ** 2
        np.testing.assert_allclose(alphas, np.clip(raw, 1e-2, 1 - 1e-4))
        assert np.all((alphas >= 1e-2) & (alphas < 1)) and np.all(np.diff(alphas) <= 0)
        assert np.all(bars < 1) and np.all(np.diff(bars) < 0)  # t starts at 1: sqrt(1 - abar_t) > 0
    with pytest.raises(ValueError):
        noise_schedule(4, "quadratic")


def test_reverse_step_inverts_forward_noise():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(4, 5, 16)).astype(np.float32)
    eps = rng.normal(size=h.shape).astype(np.float32)
    for kind in ("linear", "cosine"):
        for a in noise_schedule(12, kind)[0]:
            noisy = forward_noise(tf.constant(h), tf.constant(eps), tf.constant(a, tf.float32))
            assert np.abs(noisy.numpy() - h).max() > 1e-4  # the noise did something
            back = reverse_step(noisy, tf.constant(eps), tf.constant(a, tf.float32))
            np.testing.assert_allclose(back.numpy(), h, atol=1e-4)
            np.testing.assert_allclose(reverse_step(forward_noise(h, eps, float(a)), eps, float(a)), h, atol=1e-4)


def test_src_layer_inference_is_deterministic_and_unroll_matches_loop():
    toks = {m: tf.random.stateless_normal([3, 5, 8], seed=[i, 1]) for i, m in enumerate(["id", "text", "image"])}
    masks = {m: tf.sequence_mask([0, 2, 5], 5) for m in toks}
    loop = SynergyDiffusion(["id", "text", "image"], steps=3, num_heads=2, hidden=8, seed=1)
    unrolled = SynergyDiffusion.from_config({**loop.get_config(), "unroll": True})
    a = loop(toks, masks)
    unrolled(toks, masks)
    unrolled.set_weights(loop.get_weights())
    b = unrolled(toks, masks)
    for m in toks:
        np.testing.assert_allclose(a[m].numpy(), loop(toks, masks)[m].numpy())
        np.testing.assert_allclose(a[m].numpy(), b[m].numpy(), atol=1e-5)
        assert np.all(a[m].numpy()[0] == 0) and np.all(np.isfinite(a[m].numpy()))  # empty history stays 0
    noisy = loop(toks, masks, training=True)
    assert any(np.abs(noisy[m].numpy() - a[m].numpy()).max() > 1e-4 for m in toks)


# ------------------------------------------------------------------------------------------- losses
def test_contrastive_loss_hand_made():
    v = lambda *x: tf.constant([x], tf.float32)  # noqa: E731
    specific = [v(1, 0), v(0, 1), v(1, 1), v(-1, 0)]  # sh, id, te, im
    shared = [v(1, 0), v(2, 0), v(0, 1)]  # id, te, im
    # unordered specific pairs: 0 + 1/sqrt2 - 1 + 1/sqrt2 + 0 - 1/sqrt2; shared: 1 + 0 + 0; eq. 9 sums ordered pairs
    expected = 2 * (1 / math.sqrt(2) - 1) - 2 * 1.0
    np.testing.assert_allclose(contrastive_loss(specific, shared).numpy(), expected, rtol=1e-6)
    zero = [v(0, 0), v(0, 0), v(1, 0)]  # missing modality: cosine 0, not NaN
    np.testing.assert_allclose(contrastive_loss(zero, zero[:2]).numpy(), 0.0)


def test_cosine_is_zero_with_finite_gradient_at_zero_vectors():
    a = tf.Variable([[0.0, 0.0], [1.0, 0.0]])
    b = tf.constant([[1.0, 2.0], [0.0, 0.0]])
    with tf.GradientTape() as tape:
        c = cosine(a, b)
        loss = tf.reduce_sum(synergy_hinge(tf.constant([1.0, 0.0]), c, margin=-0.5)) + contrastive_loss([a, b], [a, b])
    np.testing.assert_allclose(c.numpy(), [0.0, 0.0])
    assert np.all(np.isfinite(tape.gradient(loss, a).numpy()))


def test_mfe_registers_con_loss_only_when_training():
    mfe = MultimodalExperts(["id", "text"], units=4, con_weight=0.5)
    x = {"id": tf.ones([2, 3]), "text": tf.zeros([2, 5])}
    out = mfe(x)
    assert set(out) == {"expert", "share", "shared", "fused", "gate"} and not mfe.losses
    mfe(x, training=True)
    (weighted,) = mfe.losses
    np.testing.assert_allclose(weighted.numpy(), 0.5 * mfe.con_loss_tracker.result().numpy(), rtol=1e-6)


def test_synergy_hinge_hand_made():
    y = tf.constant([1.0, 0.0, 1.0, 0.0])
    cos = tf.constant([1.0, -0.5, 0.2, 0.3])
    np.testing.assert_allclose(synergy_hinge(y, cos).numpy(), [0.0, 0.0, 0.8, 0.3], atol=1e-6)
    np.testing.assert_allclose(synergy_hinge(y, cos, margin=0.25).numpy(), [0.0, 0.0, 0.8, 0.05], atol=1e-6)
    # margin 1 is the literal eq. (13): max(0, -1 - cos) == 0, non-clicks never contribute
    np.testing.assert_allclose(synergy_hinge(y, cos, margin=1.0).numpy(), [0.0, 0.0, 0.8, 0.0], atol=1e-6)
    obj = SynergyObjective(units=4)
    np.testing.assert_allclose(obj.loss(y, cos).numpy(), 1.1 / 4, rtol=1e-6)
    np.testing.assert_allclose(obj.syn_loss_tracker.result().numpy(), 1.1 / 4, rtol=1e-6)


def test_cross_layer_is_dcn_v1():
    layer = CrossLayer()
    x0 = np.array([[1.0, 2.0, -1.0]], np.float32)
    xl = np.array([[0.5, 0.0, 3.0]], np.float32)
    layer(x0)
    w, b = np.array([0.2, -0.1, 0.4], np.float32), np.array([0.0, 1.0, 2.0], np.float32)
    layer.set_weights([w, b])
    np.testing.assert_allclose(layer(x0, xl).numpy(), x0 * (xl @ w) + b + xl, rtol=1e-6)
    np.testing.assert_allclose(layer(x0).numpy(), x0 * (x0 @ w) + b + x0, rtol=1e-6)  # eq. 16


def test_fusion_shapes():
    fdaf = AdaptiveFusion(num_aux=3, units=8, num_heads=2, cross_layers=2)
    out = fdaf(tf.ones([4, 8]), [tf.ones([4, 8])] * 3, tf.ones([4, 5]))
    assert out.shape == (4, 8) and fdaf.gates(tf.ones([4, 5])).shape == (4, 3, 8)


# ------------------------------------------------------------------------------------------- serialisation
@pytest.mark.parametrize("layer", [
    CrossLayer(use_bias=False, name="c"),
    TransformerBlock(num_heads=2, ff_units=12, dropout=0.1),
    BSTBackbone(seq_len=6, num_heads=2, num_blocks=2, ff_units=16, dropout=0.1),
    MultimodalExperts(["id", "image"], units=8, activation="relu", con_weight=0.3),
    SynergyDiffusion(["id", "text"], steps=5, alpha_start=0.99, alpha_end=0.9, schedule="cosine", num_heads=2,
                     hidden=8, reverse_coef="ddpm", unroll=True, seed=7),
    SynergyObjective(units=8, margin=0.2),
    AdaptiveFusion(num_aux=2, units=8, num_heads=2, cross_layers=3),
], ids=lambda layer: type(layer).__name__)
def test_layer_config_round_trip(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


# ------------------------------------------------------------------------------------------- BST backbone
def test_bst_padding_is_ignored_and_empty_history_is_finite():
    bst = BSTBackbone(seq_len=5, num_heads=2, num_blocks=2)
    rng = np.random.default_rng(1)
    target = rng.normal(size=(3, 8)).astype(np.float32)
    hist = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.arange(5)[None] < np.array([0, 2, 5])[:, None]
    out = bst(target, hist, mask).numpy()
    changed = np.where(mask[..., None], hist, 9.0 * rng.normal(size=hist.shape)).astype(np.float32)
    np.testing.assert_allclose(bst(target, changed, mask).numpy(), out, atol=1e-5)
    assert out.shape == (3, 16) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 8:], 0.0)  # empty history: pooled history part is 0
    # valid slots do matter
    moved = hist.copy()
    moved[2, 0] += 1.0
    assert np.abs(bst(target, moved, mask).numpy()[2] - out[2]).max() > 1e-4


# ------------------------------------------------------------------------------------------- the model
@pytest.mark.slow
def test_inference_is_deterministic_and_training_returns_syn_cos(data):
    schema, splits, tables = data
    model = build(schema, tables)
    x = inputs_of(schema, splits["test"], 32)
    a, b = model(x, training=False).numpy(), model(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    out = model(x, training=True)
    assert set(out) == {"prob", "syn_cos"} and out["prob"].shape == (32,)
    assert np.abs(out["prob"].numpy() - a).max() > 0  # diffusion noise only in training


def test_empty_history_and_missing_vectors_are_finite(data):
    schema, splits, tables = data
    model = build(schema, tables)
    x = inputs_of(schema, splits["train"], 8)
    x = {k: v.copy() for k, v in x.items()}
    x["hist_len"][:] = 0
    for k in schema.hist_features:
        x[k][:] = 0
    x["item_id"][:4] = 0  # unknown target: no vectors at all
    p = model(x, training=False).numpy()
    out = model(x, training=True)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(out["prob"].numpy()))
    assert np.all(np.isfinite(out["syn_cos"].numpy()))
    y = np.arange(8) % 2
    loss = model.compute_loss(x, y, out, None, training=True)
    assert np.isfinite(loss.numpy())


@pytest.mark.slow
def test_fit_logs_aux_losses_and_total(data):
    schema, splits, tables = data
    model = build(schema, tables, w1=0.5, w2=0.5, backbone="bst", tokens_per_vector=4, diffusion_schedule="cosine")
    logs = fit_few(model, schema, splits["train"], run_eagerly=True)  # graph-mode fit: capability and jit tests
    assert {"loss", "con_loss", "syn_loss"} <= set(logs)
    assert all(np.isfinite(v[-1]) for v in logs.values())
    ev = model.evaluate(inputs_of(schema, splits["valid"]), splits["valid"]["label"], verbose=0, return_dict=True)
    assert np.isfinite(ev["loss"])


@pytest.mark.parametrize("flags", [
    dict(use_mfe=False, use_src=False),  # paper: w/o MFE and SRC
    dict(use_src=False),  # w/o SRC
    dict(use_fdaf=False),  # w/o FDAF
    dict(use_mfe=False, use_src=False, use_fdaf=False),  # w/o all
], ids=["wo_mfe_src", "wo_src", "wo_fdaf", "wo_all"])
def test_ablations_build_and_train(data, flags):
    schema, splits, tables = data
    model = build(schema, tables, **flags)
    logs = fit_few(model, schema, splits["train"], run_eagerly=True)
    assert np.isfinite(logs["loss"][-1])
    assert ("con_loss" in logs) == flags.get("use_mfe", True)
    assert ("syn_loss" in logs) == flags.get("use_src", True)


@pytest.mark.parametrize("modalities", [["text"], []], ids=["text_only", "id_only"])
def test_removing_modalities_builds_and_trains(data, modalities):
    schema, splits, tables = data
    model = build(schema, tables, modalities=modalities)
    assert model.modalities == modalities and set(model.tables) == set(modalities)
    logs = fit_few(model, schema, splits["train"], run_eagerly=True)
    assert np.isfinite(logs["loss"][-1])


@pytest.mark.slow
def test_jit_compile_fit(data):
    """The (small) model's training step under XLA (what `--jit_compile` compiles); the batches contain
    empty histories, where E_syn starts at exactly 0 (a sqrt(0) in a cosine gave NaN gradients under XLA before
    `cosine` was made gradient-safe). The trained model then scores finitely (inference is not compiled with XLA
    anywhere in the project: the trainer's evaluation and the SavedModel run plain graphs)."""
    schema, splits, tables = data
    assert np.any(splits["train"]["hist_len"][:64] == 0)
    model = build(schema, tables)
    logs = fit_few(model, schema, splits["train"], jit_compile=True)  # 2 steps: step 1 used to NaN the weights
    assert np.all(np.isfinite(logs["loss"])) and np.isfinite(logs["syn_loss"][-1])
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    p = model(inputs_of(schema, splits["test"], 16), training=False).numpy()
    assert p.shape == (16,) and np.all(np.isfinite(p))


# ------------------------------------------------------------------------------------------- maths against numpy
def np_mha(query, value, w, heads):
    """Multi-head attention (Vaswani et al. 2017) in numpy: query [B, Sq, d], value = key [B, Sk, d]."""
    q, k, v = query @ w["wq"] + w["bq"], value @ w["wk"] + w["bk"], value @ w["wv"] + w["bv"]
    b, sq, hd = q.shape
    dk = hd // heads
    q, k, v = (x.reshape(b, -1, heads, dk).transpose(0, 2, 1, 3) for x in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dk)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(b, sq, hd)
    return o @ w["wo"] + w["bo"]


def mha_weights(rng, d, hd):
    return {"wq": rng.normal(size=(d, hd)), "bq": rng.normal(size=hd), "wk": rng.normal(size=(d, hd)),
            "bk": rng.normal(size=hd), "wv": rng.normal(size=(d, hd)), "bv": rng.normal(size=hd),
            "wo": rng.normal(size=(hd, d)), "bo": rng.normal(size=d)}


def set_mha(layer, w):
    for name in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"):
        if hasattr(layer, name):
            getattr(layer, name).assign(w[name].astype(np.float32))


def np_cos(a, b):
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return np.where((na > 0) & (nb > 0), (a * b).sum(-1) / np.maximum(na * nb, 1e-30), 0.0)


MODS = ["id", "text", "image"]
H0 = {"id": [[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.5, 0.5]],  # hand-made h_0^m, B = 2, d = 4
      "text": [[0.0, 1.0, 1.0, 0.0], [-1.0, 2.0, 0.0, 1.0]],
      "image": [[2.0, -1.0, 0.0, 1.0], [0.0, 0.0, 3.0, -1.0]]}
ALPHA = {("id", "text"): 0.3, ("id", "image"): -0.2, ("text", "id"): 0.5, ("text", "image"): 0.1,
         ("image", "id"): 0.7, ("image", "text"): -0.4}


@pytest.mark.parametrize("tokens", [1, 2], ids=["paper_one_token", "two_tokens"])
@pytest.mark.parametrize("noisy", [True, False], ids=["training_noise", "inference"])
def test_src_forward_matches_numpy(tokens, noisy):
    """SynergyDiffusion's own forward pass against eq. (10)-(11) in numpy, T = 3: for t = 3, 2, 1
    x = sqrt(a_t) h + sqrt(1 - a_t) eps, eps_hat^m = sum_n alpha_{m,n} MHA(x^m, x^n, x^n),
    h = (x - sqrt(1 - a_t) eps_hat) / sqrt(a_t), a_t = linspace(0.999, 0.98, 3). With one token the numpy
    attention has query/key projections the layer does not have (a single key's weight is 1)."""
    T, d, heads = 3, 4, 2
    rng = np.random.default_rng(5)
    h0 = {m: np.asarray(H0[m]).reshape(2, tokens, d // tokens) for m in MODS}
    layer = SynergyDiffusion(MODS, steps=T, num_heads=heads, hidden=4)
    layer({m: tf.constant(v, tf.float32) for m, v in h0.items()})
    w = mha_weights(rng, d // tokens, 4)
    set_mha(layer.ci, w)
    assert hasattr(layer.ci, "wq") == (tokens > 1)
    layer.pair_coef.assign([ALPHA[p] for p in layer.pairs])
    noise = {m: rng.normal(size=(T,) + h0[m].shape) for m in MODS}
    out = layer({m: tf.constant(v, tf.float32) for m, v in h0.items()}, training=noisy,
                noise={m: tf.constant(v, tf.float32) for m, v in noise.items()})

    a = np.linspace(0.999, 0.98, T)
    h = dict(h0)
    for i in range(T):
        a_t = a[T - 1 - i]
        x = {m: np.sqrt(a_t) * h[m] + (np.sqrt(1 - a_t) * noise[m][i] if noisy else 0.0) for m in MODS}
        eps = {m: sum(ALPHA[(m, n)] * np_mha(x[m], x[n], w, heads) for n in MODS if n != m) for m in MODS}
        h = {m: (x[m] - np.sqrt(1 - a_t) * eps[m]) / np.sqrt(a_t) for m in MODS}
    for m in MODS:
        np.testing.assert_allclose(out[m].numpy(), h[m], rtol=1e-4, atol=1e-4)
    if not noisy:  # inference ignores any noise and equals a training call whose noise is 0
        zero = layer({m: tf.constant(v, tf.float32) for m, v in h0.items()}, training=True,
                     noise={m: tf.zeros((T,) + h0[m].shape) for m in MODS})
        for m in MODS:
            np.testing.assert_allclose(zero[m].numpy(), out[m].numpy(), rtol=1e-6, atol=1e-6)


def test_single_key_attention_is_the_affine_closed_form():
    """MultiHeadCrossAttention built for one key: (v W_v + b_v) W_o + b_o for every query, weights 1."""
    rng = np.random.default_rng(2)
    mha = MultiHeadCrossAttention(num_heads=2, key_dim=3)
    q, v = rng.normal(size=(4, 5, 6)).astype(np.float32), rng.normal(size=(4, 1, 6)).astype(np.float32)
    mha(q, v)
    w = mha_weights(rng, 6, 6)
    set_mha(mha, w)
    out, scores = mha(q, v, return_attention_scores=True)
    np.testing.assert_allclose(out.numpy(), np_mha(q, v, w, 2), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(scores.numpy(), np.ones((4, 2, 5, 1)))
    with pytest.raises(ValueError, match="single key"):
        mha(q, np.concatenate([v, v], 1))


def test_fdaf_matches_numpy():
    """AdaptiveFusion against eq. (14)-(17) in numpy: w = sigmoid(E_target^id W + b) (one d-gate per auxiliary),
    E' = [w_i * A_i], E_c = E' (E' . w_c) + b_c + E', E_att = MHA(E^id, E_c cut into n tokens)."""
    rng = np.random.default_rng(3)
    n, d, B = 3, 4, 2
    query = np.array([[1.0, -1.0, 0.5, 2.0], [0.0, 1.0, 1.0, -2.0]])
    aux = [np.array([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 1.0, 1.0]]) * (i + 1) for i in range(n)]
    gate_in = np.array([[0.2, -0.3, 1.0], [1.5, 0.0, -1.0]])
    fdaf = AdaptiveFusion(num_aux=n, units=d, num_heads=2)
    fdaf(query.astype(np.float32), [a.astype(np.float32) for a in aux], gate_in.astype(np.float32))
    gk, gb = rng.normal(size=(3, n * d)), rng.normal(size=n * d)
    cw, cb = rng.normal(size=n * d), rng.normal(size=n * d)
    w = mha_weights(rng, d, d)
    fdaf.gate.kernel.assign(gk.astype(np.float32))
    fdaf.gate.bias.assign(gb.astype(np.float32))
    fdaf.cross[0].w.assign(cw.astype(np.float32))
    fdaf.cross[0].b.assign(cb.astype(np.float32))
    set_mha(fdaf.attention, w)
    out = fdaf(query.astype(np.float32), [a.astype(np.float32) for a in aux], gate_in.astype(np.float32))

    gates = (1 / (1 + np.exp(-(gate_in @ gk + gb)))).reshape(B, n, d)  # eq. 14
    e = (np.stack(aux, 1) * gates).reshape(B, n * d)  # eq. 15
    e_c = e * (e @ cw)[:, None] + cb + e  # eq. 16
    expected = np_mha(query[:, None, :], e_c.reshape(B, n, d), w, 2)[:, 0]  # eq. 17
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_training_loss_is_bce_plus_weighted_aux_losses(data):
    """The loss of a training call equals BCE + w1 L_con + w2 L_syn, each term computed here in numpy from the
    same call's vectors (L_con, eq. 9: ordered-pair cosines; L_syn, eq. 13 with margin 0)."""
    schema, splits, tables = data
    w1, w2 = 0.3, 0.7
    model = build(schema, tables, w1=w1, w2=w2, att_activation="sigmoid", dnn_activation="prelu")
    model.compile(loss="binary_crossentropy")
    x, y = inputs_of(schema, splits["train"], 32), splits["train"]["label"][:32].astype(np.float32)
    parts = {}
    logit, syn_cos = model.forward(model.features(x, training=True), training=True, parts=parts)
    prob = tf.sigmoid(logit)
    loss = model.compute_loss(x, y, {"prob": prob, "syn_cos": syn_cos}, training=True).numpy()

    p = np.clip(prob.numpy(), 1e-7, 1 - 1e-7)
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    mfe = {k: (v.numpy() if hasattr(v, "numpy") else {m: t.numpy() for m, t in v.items()})
           for k, v in parts["mfe"].items()}
    specific = [mfe["shared"]] + [mfe["expert"][m] for m in ["id"] + model.modalities]
    shared = [mfe["share"][m] for m in ["id"] + model.modalities]
    pairs = lambda vs: sum(np_cos(a, b) for i, a in enumerate(vs) for j, b in enumerate(vs) if i != j)  # noqa: E731
    l_con = np.mean(pairs(specific) - pairs(shared))
    cos = np_cos(parts["e_syn"].numpy(), parts["e_target"].numpy())
    l_syn = np.mean((1 - y) * np.maximum(0, cos) + y * np.maximum(0, 1 - cos))
    assert abs(l_con) > 1e-3 and l_syn > 1e-3
    np.testing.assert_allclose(loss, bce + w1 * l_con + w2 * l_syn, rtol=1e-5)


def test_noise_is_training_only(data):
    """With activations that have no batch statistics (sigmoid attention, PReLU MLP) and no dropout, the only
    difference between a training and an inference call is SRC's noise: without SRC both calls agree exactly;
    with it inference is deterministic and training is not."""
    schema, splits, tables = data
    x = inputs_of(schema, splits["test"], 32)
    plain = dict(att_activation="sigmoid", dnn_activation="prelu")
    no_src = build(schema, tables, use_src=False, **plain)
    np.testing.assert_allclose(no_src(x, training=True).numpy(), no_src(x, training=False).numpy(), atol=1e-6)
    model = build(schema, tables, **plain)
    a, b = model(x, training=False).numpy(), model(x, training=False).numpy()
    np.testing.assert_array_equal(a, b)
    t1, t2 = model(x, training=True)["prob"].numpy(), model(x, training=True)["prob"].numpy()
    assert np.abs(t1 - a).max() > 1e-6 and np.abs(t1 - t2).max() > 1e-6


# ------------------------------------------------------------------------------------------- shared layers
def reference_target_attention(att, q, k, mask, training):
    """DIN's activation unit in its concatenated form on every slot, masked keys set to 0 (TargetAttention's
    docstring), in numpy around the layer's own MLP."""
    k = np.where(mask[..., None], k, 0.0).astype(np.float32)
    (b, L, d), qq = k.shape, np.repeat(q[:, None, :], k.shape[1], 1)
    x = np.concatenate([qq, k, qq - k, qq * k], -1).reshape(b * L, 4 * d)
    s = att.mlp(tf.constant(x), training=training).numpy().reshape(b, L)
    if att.normalization == "softmax":
        s = np.where(mask, s, -1e9)
        e = np.exp(s - s.max(-1, keepdims=True))
        s = e / e.sum(-1, keepdims=True)
    w = np.where(mask, s, 0.0)
    return np.einsum("bl,bld->bd", w, k), w


@pytest.mark.parametrize("activation", ["dice", "sigmoid", "prelu"])
@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_target_attention_equals_concatenated_form(activation, normalization):
    """The split first layer and the valid-slot computation equal the [q, k, q - k, q * k] MLP on all slots, in
    training (Dice's batch statistics over all slots) and inference; garbage in masked slots changes nothing."""
    rng = np.random.default_rng(4)
    q, k = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(5, 7, 6)).astype(np.float32)
    mask = np.arange(7)[None] < np.array([0, 3, 7, 1, 5])[:, None]
    att = TargetAttention((8, 4), activation, normalization)
    att(q, k, mask)
    for training in (True, False):
        pooled, weights = att(q, k, mask, training=training)
        ref_pooled, ref_weights = reference_target_attention(att, q, k, mask, training)
        np.testing.assert_allclose(weights.numpy(), ref_weights, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pooled.numpy(), ref_pooled, rtol=1e-5, atol=1e-5)


def test_prelu_attention_builds_trains_and_is_per_channel(data):
    """att_activation="prelu" used to crash at build (keras PReLU wants a slope per element of input_shape[1:]);
    PReLU is now max(0, x) + alpha min(0, x) with one slope per channel."""
    layer = PReLU()
    x = np.array([[[-2.0, 1.0, -0.5]], [[3.0, -1.0, 0.0]]], np.float32)
    layer(x)
    layer.alpha.assign([0.1, 0.2, 0.3])
    np.testing.assert_allclose(layer(x).numpy(), np.maximum(x, 0) + [0.1, 0.2, 0.3] * np.minimum(x, 0), rtol=1e-6)
    schema, splits, tables = data
    model = DIN(schema, emb_dim=4, att_units=(8, 4), dnn_units=(8,), att_activation="prelu", dnn_activation="prelu")
    model(dummy_batch(schema))
    logs = fit_few(model, schema, splits["train"], run_eagerly=True)
    assert np.isfinite(logs["loss"][-1])
