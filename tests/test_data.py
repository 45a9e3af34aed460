"""Data contract: schema, TFRecord round trip, OOV/padding, vector tables, synthetic generator, bad input."""

import json
import os

import numpy as np
import pytest

from mmctr_tf.data import synthetic
from mmctr_tf.data import tables as T
from mmctr_tf.data.datasets import Dataset, ensure_dataset
from mmctr_tf.data.schema import Schema, SchemaError, read_manifest
from mmctr_tf.data.tfrecord import GZIP_LEVEL, ShardedWriter, find_bad_shard, make_dataset, masked_crc32c, pad_sequences
from mmctr_tf.evaluation.metrics import auc


def _schema(L=5):
    return Schema(seq_len=L, vocab={"user_id": 10, "item_id": 20, "cate_id": 4}, modalities={"text": 3})


def _columns(n, L, rng):
    hist_len = rng.integers(0, L + 1, n)
    hist = pad_sequences([rng.integers(1, 20, k).tolist() for k in hist_len], L)
    return {"user_id": rng.integers(1, 10, n), "item_id": rng.integers(1, 20, n), "cate_id": rng.integers(1, 4, n),
            "hist_item_id": hist, "hist_cate_id": np.where(hist > 0, hist % 3 + 1, 0), "hist_len": hist_len,
            "label": rng.integers(0, 2, n).astype(np.float32)}


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_round_trip_equals_input(tmp_path, compression):
    schema, rng = _schema(), np.random.default_rng(0)
    cols = _columns(103, schema.seq_len, rng)
    with ShardedWriter(str(tmp_path), "train", schema, num_shards=3, compression=compression) as w:
        w.write(cols)
    assert w.count == 103 and not w.oov
    assert all(os.path.exists(p) and not os.path.exists(p + ".tmp") for p in w.paths)
    ds = make_dataset(w.paths, schema, 16, compression=compression)
    got = {k: [] for k in cols}
    for feats, label in ds:
        for k, v in feats.items():
            got[k].append(v.numpy())
        got["label"].append(label.numpy())
    got = {k: np.concatenate(v) for k, v in got.items()}
    # shards are dealt round-robin: sort both sides by a unique row key to compare
    def key(c):
        return np.lexsort([c["hist_item_id"][:, i] for i in range(schema.seq_len)] + [c["item_id"], c["user_id"]])

    a, b = key(cols), key(got)
    for k in cols:
        np.testing.assert_array_equal(np.asarray(cols[k])[a], got[k][b], err_msg=k)


def _crc32c_bitwise(data: bytes) -> int:
    """CRC-32C one bit at a time (RFC 3720 B.4), independent of the writer's table-driven form."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_masked_crc32c_matches_bitwise_crc():
    assert _crc32c_bitwise(b"123456789") == 0xE3069283  # the standard check value
    rng = np.random.default_rng(5)
    lengths = np.array([0, 1, 7, 8, 9, 15, 16, 17, 31, 40])
    rows = rng.integers(0, 256, (len(lengths), 40)).astype(np.uint8)
    got = masked_crc32c(rows, lengths)
    for row, n, c in zip(rows, lengths, got):
        crc = _crc32c_bitwise(row[:n].tobytes())
        assert int(c) == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_writer_files_equal_tensorflow_writer_bytes(tmp_path, monkeypatch, compression):
    """The numpy framing + zlib writer gives byte for byte the files of tf.io.TFRecordWriter at the writer's GZIP
    level (same records, same round-robin over shards), across encoder blocks and write calls."""
    import tensorflow as tf

    from mmctr_tf.data.tfrecord import encode_examples

    monkeypatch.setattr(ShardedWriter, "ENCODE_ROWS", 7)
    schema, rng = Schema(seq_len=5, vocab={"user_id": 10, "item_id": 2 ** 20, "cate_id": 4}), np.random.default_rng(6)
    blocks = [_columns(n, schema.seq_len, rng) for n in (20, 1, 9)]
    for cols in blocks:  # ids of 1 to 3 varint bytes: records of different lengths
        cols["item_id"] = rng.integers(1, 2 ** 20, len(cols["label"])) >> rng.integers(0, 20, len(cols["label"]))
    with ShardedWriter(str(tmp_path), "train", schema, num_shards=3, compression=compression, first_shard=2,
                       total_shards=6) as w:
        for cols in blocks:
            w.write(cols)
    records = []
    for cols in blocks:
        buf, off = encode_examples(cols, schema)
        records += [buf[a:b] for a, b in zip(off[:-1], off[1:])]
    assert [os.path.basename(p) for p in w.paths] == [f"train-0000{k}-of-00006.tfrecord" + (".gz" if compression
                                                                                           else "") for k in (2, 3, 4)]
    for k, path in enumerate(w.paths):
        ref = str(tmp_path / f"ref{k}")
        options = tf.io.TFRecordOptions(compression_type=compression or "", compression_level=GZIP_LEVEL)
        with tf.io.TFRecordWriter(ref, options) as tw:
            for rec in records[k::3]:
                tw.write(rec)
        assert open(path, "rb").read() == open(ref, "rb").read(), path


def test_writer_abort_leaves_no_file(tmp_path):
    schema, rng = _schema(), np.random.default_rng(7)
    with pytest.raises(RuntimeError):
        with ShardedWriter(str(tmp_path), "train", schema, num_shards=2) as w:
            w.write(_columns(10, schema.seq_len, rng))
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []


def test_reader_deterministic_with_seed(tmp_path):
    schema, rng = _schema(), np.random.default_rng(1)
    with ShardedWriter(str(tmp_path), "train", schema, num_shards=4, compression=None) as w:
        w.write(_columns(500, schema.seq_len, rng))
    def order():
        return np.concatenate([f["user_id"].numpy() * 100 + f["item_id"].numpy()
                               for f, _ in make_dataset(w.paths, schema, 64, shuffle=True, seed=3)])

    first, second = order(), order()
    np.testing.assert_array_equal(first, second)


def test_oov_ids_map_to_zero_and_are_counted(tmp_path):
    schema, rng = _schema(), np.random.default_rng(2)
    cols = _columns(10, schema.seq_len, rng)
    cols["item_id"][:3] = [20, 99, -1]  # vocab is 20: valid ids are 1..19
    cols["hist_item_id"][0, 0] = 500
    cols["hist_len"][0] = max(cols["hist_len"][0], 1)
    with ShardedWriter(str(tmp_path), "train", schema, num_shards=1, compression=None) as w:
        w.write(cols)
    assert w.oov == {"item_id": 3, "hist_item_id": 1}
    feats, _ = next(iter(make_dataset(w.paths, schema, 10)))
    assert list(feats["item_id"].numpy()[:3]) == [0, 0, 0]
    assert feats["hist_item_id"].numpy()[0, 0] == 0


def test_pad_sequences_keeps_most_recent_right_padded():
    out = pad_sequences([[1, 2, 3, 4, 5, 6], [7], []], 4)
    np.testing.assert_array_equal(out, [[3, 4, 5, 6], [7, 0, 0, 0], [0, 0, 0, 0]])


def test_int8_table_cosine_error_below_001():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(1001, 128)).astype(np.float32)
    v[0] = 0
    t = T.quantize(v, dtype="int8")
    d = t.dequantize()
    cos = np.sum(v[1:] * d[1:], 1) / (np.linalg.norm(v[1:], axis=1) * np.linalg.norm(d[1:], axis=1))
    assert t.values.dtype == np.int8 and np.max(1 - cos) < 0.01
    h = T.quantize(v, dtype="float16").dequantize()
    assert np.max(np.abs(h - v)) < 1e-2


def test_table_missing_rows_flagged_not_noise():
    v = np.ones((5, 4), np.float32)
    v[3] = 0  # item 3 has no vector
    t = T.quantize(v)
    assert list(t.present) == [False, True, True, False, True]
    assert np.all(t.values[3] == 0)


def test_table_validation_names_file_and_field(tmp_path):
    v = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    entry = T.save_table(str(tmp_path), "text", T.quantize(v, dtype="int8"))
    assert T.load_table(str(tmp_path), "text", entry).dim == 4
    with pytest.raises(SchemaError, match=r"text\.values\.npy.*'dim'"):
        T.load_table(str(tmp_path), "text", {**entry, "dim": 5})
    with pytest.raises(SchemaError, match=r"'rows'"):
        T.load_table(str(tmp_path), "text", {**entry, "rows": 7})
    with pytest.raises(SchemaError, match=r"'dtype'"):
        T.load_table(str(tmp_path), "text", {**entry, "dtype": "float32"})
    os.remove(tmp_path / "text.scale.npy")
    with pytest.raises(SchemaError, match=r"text\.scale\.npy.*missing"):
        T.load_table(str(tmp_path), "text", entry)
    bad = v.copy()
    bad[2, 1] = np.nan
    with pytest.raises(SchemaError, match="non-finite"):
        T.quantize(bad)
    entry = T.save_table(str(tmp_path), "image", T.quantize(v))
    np.save(tmp_path / "image.values.npy", bad)  # NaN written behind the manifest's back
    with pytest.raises(SchemaError, match=r"image\.values\.npy.*NaN.*row 2"):
        T.load_table(str(tmp_path), "image", entry)


def test_synthetic_deterministic_and_bayes_auc_in_range():
    cfg = synthetic.SyntheticConfig(num_users=300, num_items=200, impressions_per_user=10, seed=5)
    s1, sp1, v1, _, _ = synthetic.generate(cfg)
    s2, sp2, v2, _, _ = synthetic.generate(cfg)
    for split in sp1:
        for k in sp1[split]:
            np.testing.assert_array_equal(sp1[split][k], sp2[split][k])
    np.testing.assert_array_equal(v1["text"], v2["text"])
    other = synthetic.generate(synthetic.SyntheticConfig(num_users=300, num_items=200, impressions_per_user=10,
                                                         seed=6))[1]
    assert not np.array_equal(other["train"]["item_id"], sp1["train"]["item_id"])
    for split in sp1.values():
        bayes = auc(split["label"], split["p_true"])
        assert 0.5 < bayes < 1.0
        assert split["hist_len"].max() <= cfg.seq_len
        # right padding: nothing after hist_len
        L = cfg.seq_len
        pad = np.arange(L)[None, :] >= split["hist_len"][:, None]
        assert np.all(split["hist_item_id"][pad] == 0) and np.all(split["hist_item_id"][~pad] > 0)


def test_interest_story_click_probability_matches_a_direct_computation():
    """p_true of the `interest` story recomputed row by row from the examples and the world (latent vectors,
    popularity, categories, user bias), with loops instead of the generator's batched gathers."""
    cfg = synthetic.SyntheticConfig(num_users=80, num_items=120, num_cates=6, impressions_per_user=6, seq_len=8,
                                    window=5, max_hist=14, dim=8, latent_dim=4, seed=2)
    _, splits, _, _, w = synthetic.generate(cfg)
    pop = w["pop"][1:]
    shown = pop ** 0.6 / np.sum(pop ** 0.6)
    mean = np.sum(shown * np.log(pop))
    sd = np.sqrt(np.sum(shown * (np.log(pop) - mean) ** 2))
    checked = 0
    for split in splits.values():
        for r in range(len(split["label"])):
            n, t = int(split["hist_len"][r]), int(split["item_id"][r])
            recent = [int(h) for h in split["hist_item_id"][r, :n][::-1][:cfg.window]]  # latest first
            weights = [cfg.recency ** a for a in range(len(recent))]
            s, f = {}, 0.0
            for m in ("text", "image"):
                z = w[f"{m}_latent"]
                s[m] = sum(wa * float(z[t] @ z[h]) for wa, h in zip(weights, recent)) / sum(weights) if recent else 0.0
            if recent:
                f = sum(wa * (w["item_cate"][h] == w["item_cate"][t]) for wa, h in zip(weights, recent)) / sum(weights)
            logit = (cfg.b0 + w["user_bias"][split["user_id"][r] - 1] + cfg.b_pop * (np.log(w["pop"][t]) - mean) / sd
                     + cfg.b_cate * f + cfg.b_text * s["text"] + cfg.b_image * s["image"]
                     + cfg.b_synergy * max(s["text"], 0) * max(s["image"], 0))
            assert split["p_true"][r] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
            checked += n > 0
    assert checked > 300


def test_interest_story_vectors_are_noisy_but_informative():
    cfg = synthetic.SyntheticConfig(num_users=10, num_items=2000, seed=1)
    _, _, vectors, present, w = synthetic.generate(cfg)
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, cfg.num_items + 1, (2, 5000))
    ok = present["image"][a] & present["image"][b] & (a != b)
    for m in ("text", "image"):
        v = vectors[m] / np.linalg.norm(vectors[m], axis=1, keepdims=True).clip(1e-12)
        latent = np.sum(w[f"{m}_latent"][a] * w[f"{m}_latent"][b], 1)[ok]
        observed = np.sum(v[a] * v[b], 1)[ok]
        r = np.corrcoef(latent, observed)[0, 1]
        assert 0.8 < r < 0.99, (m, r)  # informative, not exact
        # the attenuation of the story's docstring: cos(v, v') ~ cos(z, z') / (1 + noise^2)
        slope = np.polyfit(latent, observed, 1)[0]
        assert slope == pytest.approx(1 / (1 + cfg.vector_noise ** 2), rel=0.1), (m, slope)


def test_attribute_story_is_the_earlier_generator():
    """The capability tests' worlds (story="attribute") are the data the generator gave before the interest story,
    recorded with the earlier synthetic.py (commit 9bf919b): a digest of every discrete column (ids, histories,
    labels, presence flags), and per float column (p_true, vectors) its absolute sum and its projection on fixed
    normal draws. Floats are compared to 1e-6 of their absolute sum, not bit for bit: numpy's BLAS picks its
    kernels by CPU, and a digest of the float bytes recorded on one machine failed on an AMD EPYC one, where the
    earlier synthetic.py gives the same values as this one."""
    import hashlib

    cfg = synthetic.SyntheticConfig(story="attribute", num_users=150, num_items=200, seq_len=12, max_hist=16,
                                    impressions_per_user=6, seed=3)
    _, splits, vectors, present, _ = synthetic.generate(cfg)
    cols = {f"{s}/{k}": v for s, split in splits.items() for k, v in split.items()}
    cols.update({f"vectors/{m}": v for m, v in vectors.items()})
    cols.update({f"present/{m}": v for m, v in present.items()})
    h = hashlib.sha256()
    for k in sorted(cols):
        v = np.ascontiguousarray(cols[k])
        if k in ATTRIBUTE_FLOATS:
            x = v.astype(np.float64).ravel()
            abs_sum, projection = ATTRIBUTE_FLOATS[k]
            assert np.abs(x).sum() == pytest.approx(abs_sum, rel=1e-6), k
            assert abs(x @ np.random.default_rng(0).standard_normal(x.size) - projection) <= 1e-6 * abs_sum, k
        else:
            h.update(k.encode() + v.tobytes())
    assert set(ATTRIBUTE_FLOATS) <= set(cols)
    assert h.hexdigest() == ATTRIBUTE_DIGEST


ATTRIBUTE_DIGEST = "d95fe94bc4ecf962a506da6008e60a651f365c20497f840a82a6628df07ceb62"
ATTRIBUTE_FLOATS = {  # (sum |x|, x . N(0, 1) draws of default_rng(0))
    "train/p_true": (106.66861027121797, -3.7213012246215063), "test/p_true": (20.094654595424856, 2.845838051706864),
    "valid/p_true": (0.0, 0.0), "vectors/text": (6692.156933460923, 81.71061821122626),
    "vectors/image": (6248.681517138619, 0.15424376524094896)}


def test_choice_draws_what_numpy_choice_draws():
    """`synthetic._choice` (the attribute story's sampler, a guide-table search) against numpy's `Generator.choice`
    with the same p: the same items and the same generator state after; p Zipf-like with zeros at both ends of a
    run."""
    p = np.concatenate([[0.0], np.arange(1, 5001) ** -1.1, np.zeros(3), [0.5]])
    p /= p.sum()
    for shape in (7, (64, 33)):
        ours, numpys = np.random.default_rng(11), np.random.default_rng(11)
        np.testing.assert_array_equal(synthetic._choice(ours, synthetic._SearchRight(synthetic._cdf(p)), shape),
                                      numpys.choice(len(p), size=shape, p=p))
        assert ours.random() == numpys.random()


def test_guided_search_is_searchsorted_right():
    """`synthetic._SearchRight` against `np.searchsorted(cum, x, "right")`: random queries, the entries themselves and
    their float neighbours, 0, and queries at and past the last entry (an unnormalised cum with plateaus: items of
    weight 0 at the start, inside and at the end)."""
    rng = np.random.default_rng(5)
    w = np.concatenate([[0.0, 0.0], rng.pareto(1.0, 3000), np.zeros(4), rng.random(500) * 1e-6, [0.0]])
    cum = np.cumsum(w)
    x = np.concatenate([rng.random(100_000) * cum[-1], cum, np.nextafter(cum, 0), np.nextafter(cum, np.inf),
                        [0.0, cum[-1], cum[-1] * 2]])
    for per_entry in (1, 4):
        np.testing.assert_array_equal(synthetic._SearchRight(cum, per_entry)(x), np.searchsorted(cum, x, "right"))


def test_synthetic_industrial_has_requests_days_and_real_negatives():
    cfg = synthetic.SyntheticConfig(num_users=200, num_items=200, impressions_per_user=12, variant="industrial")
    schema, splits, _, _, _ = synthetic.generate(cfg)
    assert schema.optional == ("request_id", "ts")
    day = {k: np.unique(v["ts"] // 86400) for k, v in splits.items()}
    assert list(day["test"]) == [cfg.num_days - 1] and list(day["valid"]) == [cfg.num_days - 2]
    assert day["train"].max() < cfg.num_days - 2
    rid, counts = np.unique(splits["train"]["request_id"], return_counts=True)
    assert counts.max() == cfg.items_per_request
    assert 0 < splits["train"]["label"].mean() < 0.5


def test_built_dataset_manifest_and_pipeline(small_dataset):
    m = read_manifest(small_dataset)
    schema = m["schema_obj"]
    assert set(m["splits"]) == {"train", "valid", "test"}
    for split, e in m["splits"].items():
        assert 0.5 < e["bayes_auc"] < 1 and e["examples"] > 0
    data = Dataset(small_dataset)
    assert set(data.tables) == {"text", "image"} and data.tables["text"].rows == schema.vocab["item_id"]
    feats, label = next(iter(data.tf_dataset("train", 32, shuffle=True, seed=0)))
    assert feats["hist_item_id"].shape == (32, schema.seq_len) and label.shape == (32,)
    assert set(feats) == set(schema.model_inputs)


def test_first_use_generation_prints_the_dataset_summary(tmp_path, monkeypatch):
    """ensure_dataset generating `synthetic` on first use logs make_data's summary: examples per split as counted in
    the written shards and the Bayes AUC of the true probabilities (recomputed from the generator's columns)."""
    import tensorflow as tf

    tiny = dict(num_users=200, num_items=80, impressions_per_user=10, dim=8, seq_len=6, max_hist=10, num_shards=1)
    config_for = synthetic.config_for
    monkeypatch.setattr(synthetic, "config_for", lambda name, **kw: config_for(name, **{**tiny, **kw}))
    lines = []
    path = ensure_dataset("synthetic", str(tmp_path), log=lines.append)
    _, splits, _, _, _ = synthetic.generate(synthetic.config_for("synthetic"))
    data = Dataset(path)
    header = next(i for i, line in enumerate(lines) if "bayes AUC" in line)
    for i, split in enumerate(("train", "valid", "test")):
        name, examples, _, _, bayes = lines[header + 1 + i].split()[:5]
        records = sum(1 for _ in tf.data.TFRecordDataset(data.files(split), compression_type="GZIP"))
        assert (name, int(examples)) == (split, records)
        assert float(bayes) == pytest.approx(auc(splits[split]["label"], splits[split]["p_true"]), abs=5e-5)
    lines.clear()
    assert ensure_dataset("synthetic", str(tmp_path), log=lines.append) == path and lines == []  # generated once


def test_corrupt_shard_error_names_file(tmp_path):
    schema, rng = _schema(), np.random.default_rng(3)
    with ShardedWriter(str(tmp_path), "train", schema, num_shards=2, compression="GZIP") as w:
        w.write(_columns(200, schema.seq_len, rng))
    assert find_bad_shard(w.paths, schema, "GZIP") is None
    raw = open(w.paths[1], "rb").read()
    with open(w.paths[1], "wb") as f:
        f.write(raw[: len(raw) // 2])  # truncated shard
    msg = find_bad_shard(w.paths, schema, "GZIP")
    assert msg is not None and msg.startswith(w.paths[1])
    with pytest.raises(SchemaError, match="does not exist"):
        make_dataset([str(tmp_path / "nope.tfrecord")], schema, 8)


def test_wrong_schema_shard_is_reported(tmp_path):
    schema, rng = _schema(L=5), np.random.default_rng(4)
    with ShardedWriter(str(tmp_path), "train", schema, num_shards=1, compression=None) as w:
        w.write(_columns(20, 5, rng))
    longer = Schema(seq_len=7, vocab=schema.vocab)
    msg = find_bad_shard(w.paths, longer, None)
    assert msg is not None and w.paths[0] in msg and "hist_" in msg


def test_manifest_errors(tmp_path, small_dataset):
    with pytest.raises(SchemaError, match="no manifest"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": {"seq_len": 5, "vocab": {"user_id": 3}},
                                                        "splits": {}}))
    with pytest.raises(SchemaError, match="item_id"):
        read_manifest(str(tmp_path))
    with pytest.raises(SchemaError, match="run.make_data --dataset=electro"):
        ensure_dataset("electro", str(tmp_path))
