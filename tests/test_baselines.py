"""Baselines (issue #7): FM / linear terms, SimTier, the mean and GRU poolers, a graph-mode fit under the 2-replica
MirroredStrategy, the backbones plugged into DIN and Diff-MSIN, and flag validation. Every baseline also goes
through the shared model life cycle (build, fit step, `.keras` and SavedModel round trips) in tests/test_models.py.

Run: python -m pytest tests/test_baselines.py -x -q
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.data.synthetic import SyntheticConfig, generate
from mmctr_tf.data.tables import quantize
from mmctr_tf.layers.backbones import BACKBONES, make_backbone
from mmctr_tf.layers.baselines import FMInteraction, GRUBackbone, LinearTerm, MeanPoolingBackbone, SimTier
from mmctr_tf.models import MODELS, accepted_hparams, build_model
from mmctr_tf.training.trainer import make_strategy
from run import common

BASELINES = ["lr", "fm", "deepfm", "wide_deep", "youtubenet", "gru4rec", "bst", "simtier"]
# Small sizes for the mechanical tests; each model gets the ones it takes (LR takes none of them).
SMALL = dict(emb_dim=4, dnn_units=[16, 8], att_units=[8, 4], gru_units=6, simtier_dim=2)


def small_hparams(name):
    ok = accepted_hparams(MODELS[name])
    return {k: v for k, v in SMALL.items() if k in ok}


@pytest.fixture(scope="module")
def world():
    cfg = SyntheticConfig(num_users=60, num_items=80, num_cates=5, dim=8, seq_len=6, min_hist=0, max_hist=8,
                          impressions_per_user=10, missing_image_rate=0.3, cold_start_rate=0.1, seed=3)
    schema, splits, vectors, present, _ = generate(cfg)
    tables = {m: quantize(vectors[m], present[m]) for m in schema.modalities}
    return schema, splits, tables


@pytest.fixture
def mirrored():
    """The trainer's 2-replica MirroredStrategy (`make_strategy` keeps one per device set and process, so models
    trained one after another in one process never collide on collective instance keys)."""
    return make_strategy(cpu_replicas=2)


def inputs_of(schema, split, n=None):
    return {k: split[k][:n] for k in schema.model_inputs}


# ------------------------------------------------------------------------------------------- layers
def test_fm_second_order_hand_computed():
    # v1 = (1, 2), v2 = (3, -1), v3 = (0.5, 0.5): <v1,v2> + <v1,v3> + <v2,v3> = 1 + 1.5 + 1 = 3.5
    # = 0.5 * (|(4.5, 1.5)|^2 - (5 + 10 + 0.5)) = 0.5 * (22.5 - 15.5)
    fields = np.array([[[1, 2], [3, -1], [0.5, 0.5]], [[1, 0], [0, 0], [0, 0]]], np.float32)
    np.testing.assert_allclose(FMInteraction()(fields).numpy(), [3.5, 0.0], rtol=1e-6)


def test_linear_term_hand_computed():
    layer = LinearTerm({"user_id": 3, "item_id": 5})
    ids = {"user_id": np.array([1, 2]), "item_id": np.array([4, 0])}
    hist = {"item_id": np.array([[1, 2, 3], [4, 4, 4]])}
    mask = np.array([[True, True, False], [False, False, False]])
    layer(ids, hist, mask)
    layer.bias.assign(0.5)
    layer.weights_of["user_id"].embeddings.assign([[0.0], [1.0], [2.0]])
    layer.weights_of["item_id"].embeddings.assign([[0.0], [10.0], [20.0], [30.0], [40.0]])
    # row 0: 0.5 + w_u[1] + w_i[4] + mean(w_i[1], w_i[2]) = 0.5 + 1 + 40 + 15 (slot 3 is padding)
    # row 1: empty history adds 0: 0.5 + 2 + 0
    np.testing.assert_allclose(layer(ids, hist, mask).numpy(), [56.5, 2.5], rtol=1e-6)


def test_simtier_bins_and_counts_hand_made():
    st = SimTier(eps=0.5, dim=3)  # 4 bins: [-1, -0.5], (-0.5, 0], (0, 0.5], (0.5, 1]
    assert st.num_bins == 4 and st.output_dim == 12
    target = np.array([[1.0, 0.0]], np.float32)
    hist = np.array([[[2, 0],        # cos 1           -> bin 3
                      [-1, 0],       # cos -1          -> bin 0
                      [0, 1],        # cos 0           -> bin 1
                      [1, 1],        # cos 0.707       -> bin 3
                      [1, -3],       # cos 0.316       -> bin 2
                      [-1, 1.5],     # cos -0.555      -> bin 0
                      [0, 0],        # no vector (present 0): not counted
                      [5, 0]]],      # padding: not counted
                    np.float32)
    valid = np.array([[1, 1, 1, 1, 1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(st.bins(target, hist).numpy()[0, :6], [3, 0, 1, 3, 2, 0])
    n = st.counts(target, hist, valid).numpy()
    np.testing.assert_array_equal(n, [[2, 1, 1, 2]])
    out = st(target, hist, valid).numpy()
    expected = (np.log1p(n)[..., None] * st.tier_emb.numpy()[None]).reshape(1, -1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # an empty history gives all-zero features, finite
    assert np.all(st(target, hist, np.zeros_like(valid)).numpy() == 0)


def test_simtier_default_eps_covers_exact_plus_minus_one():
    st = SimTier()  # eps 0.1 -> 20 bins of width 0.1 over [-1, 1]
    assert st.num_bins == 20
    rng = np.random.default_rng(0)
    v = rng.normal(size=(64, 16)).astype(np.float32)
    hist = np.stack([v, -v, 3.0 * v], axis=1)  # cos = 1, -1, 1 up to float rounding (either side of +-1)
    b = st.bins(v, hist).numpy()
    np.testing.assert_array_equal(b[:, 0], 19)
    np.testing.assert_array_equal(b[:, 1], 0)
    np.testing.assert_array_equal(b[:, 2], 19)
    n = st.counts(v, hist, np.ones((64, 3), bool)).numpy()
    assert np.all(n.sum(-1) == 3) and np.all(n[:, 19] == 2) and np.all(n[:, 0] == 1)


def test_gru_backbone_masks_padding_and_returns_last_valid_state():
    gru = GRUBackbone(gru_units=5)
    rng = np.random.default_rng(1)
    target = rng.normal(size=(3, 4)).astype(np.float32)
    hist = rng.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.arange(6)[None] < np.array([0, 2, 6])[:, None]
    out = gru(target, hist, mask).numpy()
    assert out.shape == (3, 5) and np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], 0.0)  # hist_len 0: the zero initial state
    garbage = np.where(mask[..., None], hist, 50.0 * rng.normal(size=hist.shape)).astype(np.float32)
    np.testing.assert_allclose(gru(target, garbage, mask).numpy(), out, atol=1e-6)
    # row 1 = the GRU run over its 2 valid behaviours only
    np.testing.assert_allclose(gru.gru(hist[1:2, :2]).numpy()[0], out[1], atol=1e-5)
    assert GRUBackbone().get_config()["gru_units"] is None


def test_mean_backbone_and_registered_backbones():
    hist = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[True, True, False], [False, False, False]])
    out = MeanPoolingBackbone()(hist[:, 0], hist, mask).numpy()
    np.testing.assert_allclose(out, [hist[0, :2].mean(0), np.zeros(4)])
    assert {"din", "bst", "youtubenet", "gru4rec"} <= set(BACKBONES)
    # make_backbone drops the arguments a backbone does not take (DIN/DMAE/Diff-MSIN pass the attention ones)
    b = make_backbone("gru4rec", att_units=(8,), att_activation="dice", seq_len=6, dropout=0.1)
    assert isinstance(b, GRUBackbone) and b.name == "backbone_gru4rec"


@pytest.mark.parametrize("layer", [
    LinearTerm({"user_id": 3, "item_id": 7}), FMInteraction(), SimTier(eps=0.25, dim=3), MeanPoolingBackbone(),
    GRUBackbone(gru_units=7)], ids=lambda layer: type(layer).__name__)
def test_layer_config_round_trip(layer):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


# ------------------------------------------------------------------------------------------- models
def test_registry_and_flag_validation():
    assert set(BASELINES) <= set(MODELS)
    for name in BASELINES:  # every config file parses and its flags are accepted by its model
        with flagsaver.flagsaver():
            common.FLAGS.unparse_flags()
            common.FLAGS(common.with_config_files(["prog", f"--model={name}"]))
            common.check_hparams(name, common.hparams_from_flags())
    refused = [("lr", {"dnn_units": [8]}), ("fm", {"dnn_units": [8]}), ("youtubenet", {"backbone": "din"}),
               ("gru4rec", {"att_units": [8]}), ("bst", {"gru_units": 8}), ("din", {"simtier_eps": 0.2}),
               ("deepfm", {"simtier_dim": 2})]
    for name, hp in refused:
        with pytest.raises(flags.ValidationError, match=f"--model={name} does not take flag.*--{next(iter(hp))}"):
            common.check_hparams(name, hp)
    for name, hp in [("gru4rec", {"gru_units": 8}), ("simtier", {"simtier_eps": 0.2, "backbone": "bst"}),
                     ("bst", {"backbone_heads": 4, "dropout": 0.1}), ("lr", {"emb_l2": 1e-6})]:
        common.check_hparams(name, hp)
    # the command line as run.train sees it: config file first, then the explicit (refused) flag
    with flagsaver.flagsaver():
        common.FLAGS.unparse_flags()
        common.FLAGS(common.with_config_files(["prog", "--model=lr", "--dnn_units=8"]))
        with pytest.raises(flags.ValidationError, match="--dnn_units"):
            common.check_hparams("lr", common.hparams_from_flags())


def test_lr_refuses_embedding_width(world):
    schema, _, _ = world
    with pytest.raises(flags.ValidationError, match="--model=lr does not take flag.*--emb_dim"):
        common.check_hparams("lr", {"emb_dim": 8})
    assert "emb_dim" not in accepted_hparams(MODELS["lr"]) and "emb_dim" in accepted_hparams(MODELS["fm"])
    with pytest.raises(ValueError, match="lr: .*emb_dim=1.*got emb_dim=8"):
        MODELS["lr"](schema, emb_dim=8)
    assert build_model("lr", schema).emb_dim == 1


def fit_few(model, data, steps=2, run_eagerly=False):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", run_eagerly=run_eagerly)
    hist = model.fit(data.tf_dataset("train", 64, shuffle=True, seed=0, repeat=True), steps_per_epoch=steps,
                     epochs=1, verbose=0)
    return hist.history["loss"]


def batch_of(data, n=48):
    feats, _ = next(iter(data.tf_dataset("test", n)))
    return {k: v.numpy() for k, v in feats.items()}


@pytest.mark.slow
def test_two_replica_mirrored_fit(small_dataset, mirrored):
    """Graph-mode fit under the trainer's 2-replica CPU MirroredStrategy (variables mirrored, batch split, sparse
    embedding gradients all-reduced): GRU4Rec, whose masked GRU runs a while loop per replica. All eight baselines
    were checked this way once (report of issue #7); one keeps the suite fast."""
    data = Dataset(small_dataset)
    with mirrored.scope():
        model = build_model("gru4rec", data.schema, data.tables, **small_hparams("gru4rec"))
        loss = fit_few(model, data)
    assert mirrored.num_replicas_in_sync == 2 and np.isfinite(loss[-1])
    assert np.all(np.isfinite(model(batch_of(data), training=False).numpy()))


def test_simtier_model_counts_only_valid_positions_with_vectors(world):
    schema, splits, tables = world
    model = build_model("simtier", schema, tables, **small_hparams("simtier"))
    x = inputs_of(schema, splits["train"], 64)
    x["item_id"][:3] = 0  # targets without any vector: empty histograms
    feats = model.features(x)
    for m in model.modalities:
        tv, hv, valid = model.simtier_inputs(feats)[m]
        got = model.simtier[m].counts(tv, hv, valid).numpy()
        present = tables[m].present
        for i in range(64):
            n = int(x["hist_len"][i])
            items = x["hist_item_id"][i, :n]
            expected = int(present[x["item_id"][i]] > 0) * int((present[items] > 0).sum())
            assert got[i].sum() == expected, (m, i)
        assert np.all(got[:3] == 0)
    valid_items = np.concatenate([x["hist_item_id"][i, :n] for i, n in enumerate(x["hist_len"])])
    assert (tables["image"].present[valid_items] == 0).any()  # the batch does hold vector-less history items


def test_bst_model_is_din_with_bst_backbone(world):
    schema, splits, tables = world
    kw = dict(emb_dim=4, dnn_units=[8])
    bst = build_model("bst", schema, **kw)
    din = build_model("din", schema, backbone="bst", **kw)
    assert [w.shape for w in bst.get_weights()] == [w.shape for w in din.get_weights()]
    din.set_weights(bst.get_weights())
    x = inputs_of(schema, splits["test"], 16)
    np.testing.assert_allclose(din(x).numpy(), bst(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("plugin,backbone", [("din", "gru4rec"), ("diff_msin", "youtubenet")])
def test_new_backbones_plug_into_plugin_models(world, plugin, backbone):
    schema, splits, tables = world
    model = build_model(plugin, schema, tables, backbone=backbone, emb_dim=4, dnn_units=[8], att_units=[4],
                        expert_units=8, num_heads=2, diffusion_steps=2)
    assert model.backbone.name == f"backbone_{backbone}"
    x = inputs_of(schema, splits["test"], 16)
    assert np.all(np.isfinite(model(x, training=False).numpy()))
