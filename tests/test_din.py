"""DIN backbone, shared layers and input normalisation: shapes, masking, OOV, empty histories (the model life
cycle of DIN and mm_concat, reloading included, is in tests/test_models.py)."""

import numpy as np
import pytest
import tensorflow as tf

from mmctr_tf.data import synthetic
from mmctr_tf.data.schema import Schema
from mmctr_tf.data.tables import quantize
from mmctr_tf.layers.attention import TargetAttention
from mmctr_tf.layers.core import MLP, Dice, FrozenVectorTable, masked_mean, safe_cosine
from mmctr_tf.models.base import normalize_inputs


@pytest.fixture(scope="module")
def world():
    cfg = synthetic.SyntheticConfig(num_users=200, num_items=150, impressions_per_user=6, dim=8, seq_len=10)
    schema, splits, vectors, present, _ = synthetic.generate(cfg)
    tables = {m: quantize(vectors[m], present[m], "int8") for m in vectors}
    batch = {k: splits["test"][k][:32] for k in schema.model_inputs}
    return schema, tables, batch


@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_target_attention_masks_padding(normalization):
    att = TargetAttention((8, 4), "dice", normalization)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 6)).astype(np.float32)
    k = rng.normal(size=(3, 5, 6)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    pooled, w = att(q, k, mask)
    k2 = k.copy()
    k2[~mask] = 99.0  # change only the padded slots
    pooled2, w2 = att(q, k2, mask)
    np.testing.assert_allclose(pooled, pooled2, atol=1e-6)
    assert np.all(np.asarray(w)[~mask] == 0)
    np.testing.assert_array_equal(np.asarray(pooled)[2], 0)  # empty history: zero vector, finite
    if normalization == "softmax":
        np.testing.assert_allclose(np.asarray(w)[:2].sum(-1), 1, atol=1e-5)


def test_masked_mean_and_safe_cosine_finite():
    x = tf.ones([2, 3, 4])
    m = tf.constant([[True, False, False], [False, False, False]])
    np.testing.assert_allclose(masked_mean(x, m), [[1] * 4, [0] * 4])
    z = tf.Variable(tf.zeros([2, 4]))
    with tf.GradientTape() as tape:
        c = safe_cosine(z, tf.ones([2, 4]))
    assert np.all(np.asarray(c) == 0) and np.all(np.isfinite(tape.gradient(c, z)))  # no NaN gradient at 0
    np.testing.assert_allclose(safe_cosine(tf.constant([1.0, 0.0]), tf.constant([1.0, 1.0])), 2 ** -0.5, rtol=1e-6)


def test_dice_and_mlp_configs_round_trip():
    for layer in (Dice(), MLP((4, 2), "prelu", 0.1, output_units=1), TargetAttention((4,), "sigmoid"),
                  FrozenVectorTable(5, 3, "int8")):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_frozen_table_lookup_dequantises_and_handles_oov(world):
    schema, tables, _ = world
    layer = FrozenVectorTable(tables["text"].rows, tables["text"].dim, "int8")
    layer.set_table(tables["text"])
    ids = np.array([0, 1, 5, 10_000, -3])
    v, p = layer(ids)
    ref = tables["text"].dequantize()
    np.testing.assert_allclose(v[:3], ref[[0, 1, 5]], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(v)[3:], 0)
    np.testing.assert_array_equal(p, [0, 1, 1, 0, 0])
    assert not layer.trainable_weights


def test_normalize_inputs_truncates_to_most_recent_and_clips():
    schema = Schema(seq_len=3, vocab={"user_id": 5, "item_id": 10, "cate_id": 3})
    inputs = {"user_id": [7, 1], "item_id": [3, 12], "cate_id": [1, 2],
              "hist_item_id": [[1, 2, 3, 4, 5], [6, 0, 0, 0, 0]], "hist_cate_id": [[1, 1, 2, 2, 1], [2, 0, 0, 0, 0]],
              "hist_len": [5, 1]}
    normalized = normalize_inputs({k: tf.constant(v) for k, v in inputs.items()}, schema)
    out = {k: np.asarray(v) for k, v in normalized.items()}
    np.testing.assert_array_equal(out["hist_item_id"], [[3, 4, 5], [6, 0, 0]])
    np.testing.assert_array_equal(out["hist_len"], [3, 1])
    np.testing.assert_array_equal(out["user_id"], [0, 1])  # 7 >= vocab 5 -> OOV row 0
    np.testing.assert_array_equal(out["item_id"], [3, 0])
    short = {**inputs, "hist_item_id": [[1], [6]], "hist_cate_id": [[1], [2]], "hist_len": [1, 1]}
    out = normalize_inputs({k: tf.constant(v) for k, v in short.items()}, schema)
    np.testing.assert_array_equal(out["hist_item_id"], [[1, 0, 0], [6, 0, 0]])
