"""Exported SavedModels of the multimodal models under unusual but legal requests, through both signatures.

Each model is exported once (module-scoped, untrained: `build_model` + tables with absent rows, embeddings drawn
with a larger spread so scores depend visibly on the ids). Every case checks both `serving_default` (named tensors)
and `serving_tf_example` (serialized tf.Example) and, where the model normalises a request, that the score equals
the one for the explicitly normalised request, and that it differs from a request that should score differently
(so an equality cannot hold because the model ignores its inputs). Malformed requests are in tests/test_fuzz.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from mmctr_tf.data import synthetic
from mmctr_tf.data.tables import quantize
from mmctr_tf.export import saved_model as sm
from mmctr_tf.models import build_model

pytestmark = pytest.mark.xdist_group("serving")  # one worker exports each model once

L = 6
HP = {"emb_dim": 4, "dnn_units": [8], "att_units": [4]}
MODELS = {
    "mm_concat": {},
    "dmae": {"mieu_dim": 4, "num_buckets": 4, "l": 3, "n": 3, "window": 3},
    "diff_msin": {"expert_units": 8, "num_heads": 2, "diffusion_steps": 3},
}
# items without a vector (present flag 0): in one modality each, and in both
ABSENT = {"text": [3, 4, 7], "image": [5, 6, 7]}


@pytest.fixture(scope="module")
def world():
    cfg = synthetic.SyntheticConfig(num_users=60, num_items=80, impressions_per_user=4, dim=8, seq_len=L,
                                    max_hist=12, seed=11)
    schema, splits, vectors, present, _ = synthetic.generate(cfg)
    tables = {}
    for m in vectors:
        p = present[m].copy()
        p[ABSENT[m]] = False
        tables[m] = quantize(vectors[m], p)
    rows = {k: splits["test"][k][:8] for k in schema.model_inputs}
    return schema, tables, rows


@pytest.fixture(scope="module", params=sorted(MODELS))
def served(request, world, tmp_path_factory):
    schema, tables, rows = world
    model = build_model(request.param, schema, tables, **HP, **MODELS[request.param])
    rng = np.random.default_rng(0)
    for layer in model.embeddings.values():
        layer.embeddings.assign(rng.normal(0.0, 0.5, layer.embeddings.shape).astype(np.float32))
    path = sm.export_model(model, str(tmp_path_factory.mktemp(request.param)), verify_batch=rows,
                           log=lambda *a: None)
    return model, tf.saved_model.load(path), schema


def _named(loaded, req):
    return loaded.signatures["serving_default"](
        **{k: tf.constant(np.asarray(v, np.int64)) for k, v in req.items()})["probability"].numpy()


def _serialize(req, schema):
    """Every request row as a tf.Example holding the full history rows (not cut to hist_len), like the tensors."""
    out = []
    for i in range(len(req["user_id"])):
        feats = {n: tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(req[n][i]).reshape(-1).tolist()))
                 for n in schema.model_inputs}
        out.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return out


def _examples(loaded, serialized):
    return loaded.signatures["serving_tf_example"](
        examples=tf.constant(serialized, dtype=tf.string))["probability"].numpy()


def score(loaded, req, schema):
    """Scores of a request through both signatures; they must agree and be probabilities."""
    a = _named(loaded, req)
    b = _examples(loaded, _serialize(req, schema))
    assert a.shape == (len(req["user_id"]),) and a.dtype == np.float32
    assert np.all(np.isfinite(a)) and np.all((a >= 0) & (a <= 1))
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
    return a


def differs(a, b, tol=1e-4):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) > tol


def random_request(schema, n, rng, width=L, full=False):
    """n random requests with histories of random length (every slot a behaviour with `full`)."""
    req = {"user_id": rng.integers(1, schema.vocab["user_id"], n)}
    for f in schema.item_features:
        req[f] = rng.integers(1, schema.vocab[f], n)
    req["hist_len"] = np.full(n, width) if full else rng.integers(0, width + 1, n)
    pad = np.arange(width)[None, :] >= req["hist_len"][:, None]
    for f in schema.hist_features:
        h = rng.integers(1, schema.vocab_of(f), (n, width))
        h[pad] = 0
        req[f] = h
    return req


def copy(req):
    return {k: np.array(v) for k, v in req.items()}


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 4096])
def test_batch_sizes_match_the_keras_model(served, n):
    model, loaded, schema = served
    req = random_request(schema, n, np.random.default_rng(n))
    got = score(loaded, req, schema)
    head = {k: v[:64] for k, v in req.items()}
    np.testing.assert_allclose(got[:64], np.asarray(model(head, training=False)), atol=1e-5, rtol=0)
    if n > 1:
        assert np.std(got) > 1e-3  # scores depend on the request


@pytest.mark.slow
def test_empty_histories(served):
    _, loaded, schema = served
    rng = np.random.default_rng(1)
    req = random_request(schema, 4, rng, full=True)
    empty = copy(req)
    empty["hist_len"][:] = 0
    for f in schema.hist_features:
        empty[f][:] = 0
    base = score(loaded, empty, schema)
    assert differs(base, score(loaded, req, schema))
    garbage = copy(req)  # ids left in slots >= hist_len = 0 are padding and must not count
    garbage["hist_len"][:] = 0
    np.testing.assert_allclose(score(loaded, garbage, schema), base, atol=1e-6)
    zero_width = copy(empty)
    for f in schema.hist_features:
        zero_width[f] = np.zeros((4, 0), np.int64)
    np.testing.assert_allclose(score(loaded, zero_width, schema), base, atol=1e-6)
    # tf.Example without any history feature nor hist_len
    bare = [tf.train.Example(features=tf.train.Features(feature={
        n: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(req[n][i])]))
        for n in ["user_id"] + schema.item_features})).SerializeToString() for i in range(4)]
    np.testing.assert_allclose(_examples(loaded, bare), base, atol=1e-6)


@pytest.mark.slow
def test_longer_sequences_keep_the_most_recent(served):
    _, loaded, schema = served
    rng = np.random.default_rng(2)
    extra = 5
    long = random_request(schema, 6, rng, width=L + extra)
    long["hist_len"][:] = L + extra
    for f in schema.hist_features:
        long[f] = rng.integers(1, schema.vocab_of(f), (6, L + extra))
    recent, oldest = copy(long), copy(long)
    for f in schema.hist_features:
        recent[f] = long[f][:, -L:]
        oldest[f] = long[f][:, :L]
    recent["hist_len"][:] = L
    oldest["hist_len"][:] = L
    got = score(loaded, long, schema)
    np.testing.assert_allclose(got, score(loaded, recent, schema), atol=1e-6)
    assert differs(got, score(loaded, oldest, schema))
    # a wide request whose histories are short: the padding beyond hist_len is dropped, not kept as "recent"
    short = random_request(schema, 6, rng)
    wide = copy(short)
    for f in schema.hist_features:
        wide[f] = np.pad(short[f], [(0, 0), (0, 2 * L)])
    np.testing.assert_allclose(score(loaded, wide, schema), score(loaded, short, schema), atol=1e-6)


@pytest.mark.slow
def test_out_of_vocabulary_and_negative_ids_are_row_0(served):
    _, loaded, schema = served
    rng = np.random.default_rng(3)
    req = random_request(schema, 8, rng, full=True)
    bad, zero = copy(req), copy(req)
    big = {"user_id": schema.vocab["user_id"], "item_id": -1, "cate_id": 2 ** 62}
    for f, v in big.items():
        bad[f][::2] = v
        zero[f][::2] = 0
    for f in schema.hist_features:
        bad[f][:, 1] = schema.vocab_of(f) + 3
        bad[f][:, 3] = -7
        zero[f][:, [1, 3]] = 0
    got = score(loaded, bad, schema)
    np.testing.assert_allclose(got, score(loaded, zero, schema), atol=1e-6)
    assert differs(got, score(loaded, req, schema))


@pytest.mark.slow
def test_hist_len_beyond_the_width_and_negative(served):
    _, loaded, schema = served
    rng = np.random.default_rng(4)
    req = random_request(schema, 6, rng, full=True)
    over = copy(req)
    over["hist_len"][:] = [L + 1, 100, 2 ** 40, 2 ** 63 - 1, L + 3, 10 * L]
    np.testing.assert_allclose(score(loaded, over, schema), score(loaded, req, schema), atol=1e-6)
    # fewer values than hist_len: the slots past the values are behaviours with unknown ids (OOV row 0), the same
    # as the explicitly zero-padded request with that hist_len
    narrow = {k: v for k, v in req.items()}
    narrow.update({f: req[f][:, :2] for f in schema.hist_features})
    narrow["hist_len"] = np.full(6, L + 3)
    padded = copy(req)
    for f in schema.hist_features:
        padded[f][:, 2:] = 0
    got = score(loaded, narrow, schema)
    np.testing.assert_allclose(got, score(loaded, padded, schema), atol=1e-6)
    negative, empty = copy(req), copy(req)
    negative["hist_len"][:] = [-1, -5, -L, -(2 ** 40), -(2 ** 63), 0]
    empty["hist_len"][:] = 0
    np.testing.assert_allclose(score(loaded, negative, schema), score(loaded, empty, schema), atol=1e-6)
    assert differs(score(loaded, empty, schema), score(loaded, req, schema))


@pytest.mark.slow
def test_items_without_vectors(served, world):
    model, loaded, schema = served
    _, tables, _ = world
    for m, ids in ABSENT.items():
        assert not tables[m].present[ids].any()
    rng = np.random.default_rng(5)
    req = random_request(schema, 9, rng)
    absent = sorted(set(ABSENT["text"]) | set(ABSENT["image"]))
    req["item_id"][:5] = absent  # target without a text vector, an image vector, or both
    req["hist_len"][3:] = [0, 2, L, L, L, 3]
    req["hist_item_id"][4:] = 0
    req["hist_item_id"][4, :2] = [7, 7]  # history of an item without any vector
    req["hist_item_id"][5:8] = rng.choice(absent, (3, L))  # histories made only of items without a vector
    req["hist_item_id"][8, :3] = [7, 1, 3]
    got = score(loaded, req, schema)
    np.testing.assert_allclose(got, np.asarray(model(req, training=False)), atol=1e-5, rtol=0)
    with_vectors = copy(req)
    with_vectors["item_id"][:5] = np.flatnonzero(tables["text"].present & tables["image"].present)[:5]
    assert differs(got[:5], score(loaded, with_vectors, schema)[:5])


@pytest.mark.slow
def test_inconsistent_named_requests_are_refused_and_serving_goes_on(served):
    _, loaded, schema = served
    req = random_request(schema, 3, np.random.default_rng(6))
    expected = score(loaded, req, schema)
    short_batch = copy(req)
    short_batch["cate_id"] = req["cate_id"][:2]
    with pytest.raises(tf.errors.InvalidArgumentError, match="input cate_id has a different batch size"):
        _named(loaded, short_batch)
    narrow = copy(req)
    narrow["hist_cate_id"] = req["hist_cate_id"][:, :-1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_cate_id and hist_item_id have different widths"):
        _named(loaded, narrow)
    np.testing.assert_array_equal(score(loaded, req, schema), expected)
