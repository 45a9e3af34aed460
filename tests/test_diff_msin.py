"""Diff-MSIN: layers (MFE, SRC, L_syn, FDAF, cross), BST backbone, the model, its ablations, and one capability test.

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
from mmctr_tf.evaluation.metrics import auc
from mmctr_tf.layers.bst import BSTBackbone, TransformerBlock
from mmctr_tf.layers.cross import CrossLayer
from mmctr_tf.layers.diff_msin import (AdaptiveFusion, MultimodalExperts, SynergyDiffusion, SynergyObjective,
                                       contrastive_loss, cosine, forward_noise, noise_schedule, reverse_step,
                                       synergy_hinge)
from mmctr_tf.models.base import dummy_batch
from mmctr_tf.models.diff_msin import DiffMSIN
from mmctr_tf.models.din import DIN, MMConcat

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


def test_model_config_round_trip(data):
    schema, splits, tables = data
    model = build(schema, tables, backbone="bst", tokens_per_vector=4, diffusion_schedule="cosine", w1=0.1,
                  use_fdaf=False, modalities=["image"])
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(restored) is DiffMSIN and restored.get_config() == model.get_config()
    restored(dummy_batch(schema))
    restored.set_weights(model.get_weights())
    x = inputs_of(schema, splits["test"], 16)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


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


def test_jit_compile_fit(data):
    """Default (per-position SRC) model under XLA; the batches contain empty histories, where E_syn starts at exactly
    0 (a sqrt(0) in a cosine gave NaN gradients under XLA before `cosine` was made gradient-safe)."""
    schema, splits, tables = data
    assert np.any(splits["train"]["hist_len"][:64] == 0)
    model = build(schema, tables)
    logs = fit_few(model, schema, splits["train"], jit_compile=True)  # 2 steps: step 1 used to NaN the weights
    assert np.all(np.isfinite(logs["loss"])) and np.isfinite(logs["syn_loss"][-1])
    assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    p = model.predict(inputs_of(schema, splits["test"], 16), verbose=0)
    assert p.shape == (16,) and np.all(np.isfinite(p))


# ------------------------------------------------------------------------------------------- capability
# Synthetic data (mmctr_tf.data.synthetic) with a strong text/image signal: clicks depend on the target's text
# attribute, image attribute and their AND (synergy) matching the user's preferences, which only the frozen
# vectors reveal. Sizes are chosen for < 2 minutes on 2 busy CPU cores (Diff-MSIN: d_e 32, 4 heads, T = 4, SRC on
# 4 tokens per expert vector instead of the per-position default, which costs ~5x more per step here).
CAPABILITY_DATA = dict(num_users=1500, num_items=300, seq_len=10, max_hist=12, impressions_per_user=10,
                       text_attrs=4, image_attrs=4, dim=16, vector_noise=0.3, b_text=1.0, b_image=1.0,
                       b_synergy=2.0, b_cate=0.5, item_bias_std=0.2, user_bias_std=0.2, seed=0, story="attribute")
CAPABILITY_DM = dict(expert_units=32, num_heads=4, diffusion_steps=4, tokens_per_vector=4)
CAPABILITY_EPOCHS = 2


def capability_aucs(seed: int, names=("din", "mm", "dm")):
    """Test AUC of DIN, MMConcat and Diff-MSIN (backbone din) trained with the project protocol."""
    schema, splits, vectors, present, _ = generate(SyntheticConfig(**CAPABILITY_DATA))
    tables = {m: quantize(vectors[m], present[m]) for m in schema.modalities}
    train, test = splits["train"], splits["test"]
    out = {}
    for name in names:
        keras.utils.set_random_seed(seed)
        cls, kw = {"din": (DIN, {}), "mm": (MMConcat, {}), "dm": (DiffMSIN, CAPABILITY_DM)}[name]
        model = cls(schema, emb_dim=8, **kw)
        model(dummy_batch(schema))
        model.set_tables(tables)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        model.fit({k: train[k] for k in schema.model_inputs}, train["label"], batch_size=256,
                  epochs=CAPABILITY_EPOCHS, verbose=0)
        p = model.predict({k: test[k] for k in schema.model_inputs}, batch_size=2048, verbose=0)
        out[name] = float(auc(test["label"], p))
    return out


# Seed spread, measured with (3 seeds x 3 models, same code path as the test):
#   cd /work/main && python -c "import sys; sys.path.insert(0, 'tests'); import test_diff_msin as t; \
#     [print(s, t.capability_aucs(s)) for s in (0, 1, 2)]"
#   seed 0: din 0.5135  mm 0.6072  dm 0.5811
#   seed 1: din 0.5374  mm 0.5957  dm 0.6033
#   seed 2: din 0.4974  mm 0.5884  dm 0.5939      (60-73 s per seed for all three models)
#   mean / range over seeds: din 0.516 / 0.040, mm 0.597 / 0.019, dm 0.593 / 0.022   (Bayes AUC 0.755)
# Margin = the largest seed range, 0.040. Diff-MSIN beats DIN by 0.066-0.097 on every seed. It does NOT beat the
# naive concatenation baseline by more than the spread (dm - mm: -0.026, +0.008, +0.005); a 2000-user variant
# gave the same picture (mm 0.623 +- 0.008, dm 0.612 +- 0.006). So the test asserts the gain over DIN and
# non-inferiority to MMConcat within the seed spread, which is what the measurements support (see
# docs/diff_msin.md, "Capability test", for why the synergy term cannot separate them on this data).
CAPABILITY_MARGIN = 0.040


def test_capability_multimodal_synergy():
    aucs = capability_aucs(0)
    assert aucs["dm"] - aucs["din"] > CAPABILITY_MARGIN, aucs
    assert aucs["dm"] > aucs["mm"] - CAPABILITY_MARGIN, aucs
