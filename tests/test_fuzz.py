"""Malformed input: the `serving_tf_example` signature, the named signature, the TFRecord reader and find_bad_shard.

Hand-written cases pin the decided behaviour; seeded fuzz loops (a few hundred cases) check that nothing crashes,
that every outcome is either a valid score or a clear error, and that a valid request (or a good shard) still works
afterwards. Decisions (see `parse_serving_examples`):
  * features the schema does not know are ignored (a client may send the training records, label and all);
  * missing features take their defaults: ids the OOV row 0, histories empty, hist_len 0;
  * a feature of the wrong type or with the wrong number of values, or history lists of one example with different
    lengths, fail with tf.errors.InvalidArgumentError naming the feature;
  * a string that is not a tf.Example fails in TF's ParseExample with its raw bytes in the message, which TF's
    Python binding raises as UnicodeDecodeError when they are not UTF-8 (TF limitation, documented); bytes damaged
    inside a known feature can also give TF's bare "Unsupported datatype." (an InvalidArgumentError).
Measured over the 300 seeded cases of `test_example_signature_fuzz`: 33 scored, 192 InvalidArgumentError (129 not a
tf.Example, 45 naming the feature, 15 history lengths, 3 "Unsupported datatype."), 75 UnicodeDecodeError.
"""

import json
import os
import re
import shutil
import zlib

import numpy as np
import pytest
import tensorflow as tf

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.data.schema import Schema, SchemaError
from mmctr_tf.data.tfrecord import ShardedWriter, find_bad_shard, make_dataset
from mmctr_tf.evaluation.evaluate import training_clicks
from mmctr_tf.export import saved_model as sm
from mmctr_tf.models import build_model

SCHEMA = Schema(seq_len=5, vocab={"user_id": 30, "item_id": 40, "cate_id": 6})
# Errors TF raises for a string that is not a serialized tf.Example (see module docstring).
NOT_AN_EXAMPLE = (tf.errors.InvalidArgumentError, UnicodeDecodeError)


def i64(*v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))


def f32(*v):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))


def raw(*v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(v)))


def example(**feats):
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


GOOD = dict(user_id=i64(3), item_id=i64(7), cate_id=i64(2), hist_item_id=i64(5, 9, 11), hist_cate_id=i64(1, 2, 2),
            hist_len=i64(3))


@pytest.fixture(scope="module")
def din(tmp_path_factory):
    model = build_model("din", SCHEMA, emb_dim=4, dnn_units=[8], att_units=[4])
    rng = np.random.default_rng(0)
    for layer in model.embeddings.values():
        layer.embeddings.assign(rng.normal(0.0, 0.5, layer.embeddings.shape).astype(np.float32))
    path = sm.export_model(model, str(tmp_path_factory.mktemp("din")), log=lambda *a: None)
    loaded = tf.saved_model.load(path)
    return loaded.signatures["serving_tf_example"], loaded.signatures["serving_default"]


def run_examples(sig, serialized):
    return sig(examples=tf.constant(serialized, dtype=tf.string))["probability"].numpy()


# ------------------------------------------------------------------------------------------- serving: hand-written
@pytest.mark.parametrize("feature,value", [
    ("item_id", f32(7.0)), ("user_id", raw(b"3")), ("hist_len", f32(3.0)), ("hist_item_id", f32(5.0, 9.0, 11.0)),
    ("hist_cate_id", raw(b"1", b"2", b"2")), ("item_id", i64(7, 8)), ("cate_id", i64()), ("hist_len", i64(1, 2)),
])
def test_wrong_type_or_size_names_the_feature(din, feature, value):
    sig, _ = din
    good = run_examples(sig, [example(**GOOD)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"Key: {feature}"):
        run_examples(sig, [example(**GOOD), example(**{**GOOD, feature: value})])
    np.testing.assert_array_equal(run_examples(sig, [example(**GOOD)]), good)  # still serving


def test_history_lists_of_different_lengths_are_refused(din):
    sig, _ = din
    for hist_cate in (i64(1, 2), i64(1, 2, 2, 4), None):  # shorter, longer, missing
        feats = {k: v for k, v in GOOD.items() if k != "hist_cate_id"}
        if hist_cate:
            feats["hist_cate_id"] = hist_cate
        with pytest.raises(tf.errors.InvalidArgumentError, match="hist_cate_id and hist_item_id must hold the same"):
            run_examples(sig, [example(**GOOD), example(**feats)])


def test_missing_features_take_defaults_and_unknown_ones_are_ignored(din):
    sig, _ = din
    good = run_examples(sig, [example(**GOOD)])
    extra = {**GOOD, "label": f32(1.0), "request_id": i64(123456789), "ts": raw(b"yesterday"), "foo": f32(0.5, 2.0)}
    np.testing.assert_array_equal(run_examples(sig, [example(**extra)]), good)
    no_item = {k: v for k, v in GOOD.items() if k != "item_id"}
    np.testing.assert_allclose(run_examples(sig, [example(**no_item)]),
                               run_examples(sig, [example(**{**GOOD, "item_id": i64(0)})]), atol=1e-7)
    no_history = {k: v for k, v in GOOD.items() if not k.startswith("hist_")}
    np.testing.assert_allclose(run_examples(sig, [example(**no_history)]),
                               run_examples(sig, [example(**{**GOOD, "hist_len": i64(0)})]), atol=1e-7)
    nothing = run_examples(sig, [example(), b""])  # an empty string is an empty (valid) tf.Example
    assert nothing.shape == (2,) and nothing[0] == nothing[1] and 0 < nothing[0] < 1
    assert run_examples(sig, []).shape == (0,)  # empty batch


def test_bytes_that_are_not_an_example(din):
    sig, _ = din
    good = example(**GOOD)
    expected = run_examples(sig, [good])
    cases = [good[: len(good) // 2], good[:-1], b"\x0a\x10short", b"\x0a\x05abc",
             b"not a tf.Example at all \xff\xfe", bytes(range(256))]
    for case in cases:
        with pytest.raises(NOT_AN_EXAMPLE):
            run_examples(sig, [good, case])
        np.testing.assert_array_equal(run_examples(sig, [good]), expected)


# ------------------------------------------------------------------------------------------- serving: fuzz
def _mutate(rng, good):
    """One malformed (or occasionally still valid) serialized request."""
    kind = int(rng.integers(7))
    if kind == 0:  # random bytes
        return rng.bytes(int(rng.integers(0, 120)))
    if kind == 1:  # truncation
        return good[: int(rng.integers(0, len(good)))]
    if kind == 2:  # flipped bytes
        b = bytearray(good)
        for j in rng.integers(0, len(b), int(rng.integers(1, 4))):
            b[j] ^= int(rng.integers(1, 256))
        return bytes(b)
    if kind == 3:  # inserted or deleted bytes
        j = int(rng.integers(0, len(good)))
        if rng.random() < 0.5:
            return good[:j] + rng.bytes(int(rng.integers(1, 6))) + good[j:]
        return good[:j] + good[j + 1:]
    if kind == 4:  # two messages back to back (protobuf merges them)
        return good + good[: int(rng.integers(0, len(good) + 1))]
    # random features: known or unknown names, any type, any number of values
    names = SCHEMA.model_inputs + ["label", "foo"]
    feats = {}
    for name in rng.choice(names, int(rng.integers(0, len(names) + 1)), replace=False):
        n = int(rng.integers(0, 4)) if kind == 5 else (1 if not name.startswith("hist_") or name == "hist_len" else 3)
        t = int(rng.integers(3)) if kind == 5 else 0
        if t == 0:
            vals = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64, endpoint=True) if rng.random() < 0.3 else \
                rng.integers(-3, 50, n)
            feats[str(name)] = i64(*[int(v) for v in vals])
        elif t == 1:
            feats[str(name)] = f32(*rng.normal(size=n).tolist())
        else:
            feats[str(name)] = raw(*[rng.bytes(3) for _ in range(n)])
    return example(**feats)


def test_example_signature_fuzz(din):
    sig, _ = din
    good = example(**GOOD)
    expected = run_examples(sig, [good])
    rng = np.random.default_rng(2024)
    outcomes = {"score": 0, "invalid": 0, "not_utf8": 0}
    for case in range(300):
        batch = [good, _mutate(rng, good)] if case % 3 else [_mutate(rng, good) for _ in range(3)]
        try:
            p = run_examples(sig, batch)
        except tf.errors.InvalidArgumentError:
            outcomes["invalid"] += 1
        except UnicodeDecodeError:
            outcomes["not_utf8"] += 1
        else:
            assert p.shape == (len(batch),) and np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1)), case
            outcomes["score"] += 1
            if case % 3:  # a malformed neighbour does not change a valid request's score
                np.testing.assert_allclose(p[0], expected[0], atol=1e-6)
    assert min(outcomes.values()) > 10, outcomes  # every kind of outcome was exercised
    np.testing.assert_array_equal(run_examples(sig, [good]), expected)


def test_named_signature_fuzz(din):
    """Any consistent shapes and any int64 values (ids, widths 0..3L, batch 0..5, hist_len) give probabilities."""
    _, named = din
    rng = np.random.default_rng(7)
    L = SCHEMA.seq_len
    for case in range(100):
        b, w = int(rng.integers(0, 6)), int(rng.integers(0, 3 * L + 1))
        lo, hi = (-2 ** 63, 2 ** 63 - 1) if case % 2 else (-5, 60)
        req = {n: rng.integers(lo, hi, b, dtype=np.int64, endpoint=True) for n in ["user_id", "item_id", "cate_id"]}
        req["hist_len"] = rng.integers(lo, hi, b, dtype=np.int64, endpoint=True)
        for n in SCHEMA.hist_features:
            req[n] = rng.integers(lo, hi, (b, w), dtype=np.int64, endpoint=True)
        p = named(**{k: tf.constant(v) for k, v in req.items()})["probability"].numpy()
        assert p.shape == (b,) and np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1)), case


# ------------------------------------------------------------------------------------------- reader
def _columns(n, rng):
    L = SCHEMA.seq_len
    return {"user_id": rng.integers(1, 30, n), "item_id": rng.integers(1, 40, n), "cate_id": rng.integers(1, 6, n),
            "hist_item_id": rng.integers(0, 40, (n, L)), "hist_cate_id": rng.integers(0, 6, (n, L)),
            "hist_len": rng.integers(0, L + 1, n), "label": rng.integers(0, 2, n)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("shards"))
    rng = np.random.default_rng(0)
    out = {}
    for comp in ("", "GZIP"):
        with ShardedWriter(d, f"good{comp}", SCHEMA, num_shards=1, compression=comp) as w:
            w.write(_columns(60, rng))
        out[comp] = w.paths[0]
    return d, out


def count(files, compression=None, **kw):
    return sum(int(label.shape[0]) for _, label in make_dataset(files, SCHEMA, 16, compression=compression, **kw))


def write_records(path, records):
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    return path


def _record(**overrides):
    full = {"user_id": i64(3), "item_id": i64(7), "cate_id": i64(2), "hist_item_id": i64(5, 9, 11, 0, 0),
            "hist_cate_id": i64(1, 2, 2, 0, 0), "hist_len": i64(3), "label": f32(1.0)}
    full.update(overrides)
    return example(**{k: v for k, v in full.items() if v is not None})


def gzip_cuts(gz: bytes):
    """(c1, c2): lengths at which to cut the GZIP file `gz` of a TFRecord shard so that the bytes the cut file
    decompresses to end between two records (c1) and inside a record (c2), found with Python's zlib."""
    full = zlib.decompress(gz, 31)
    ends, pos = set(), 0
    while pos < len(full):  # record frames: uint64 length, 4 bytes of CRC, the record, 4 bytes of CRC
        pos += 16 + int.from_bytes(full[pos:pos + 8], "little")
        ends.add(pos)
    cuts, d, n = {}, zlib.decompressobj(31), 0
    for c in range(1, len(gz) - 8):  # (the last 8 bytes are the stream's trailer)
        n += len(d.decompress(gz[c - 1:c]))  # what gz[:c] decompresses to, fed a byte at a time
        if c >= len(gz) // 4 and 0 < n < len(full):
            cuts.setdefault(n in ends, c)
            if len(cuts) == 2:
                break
    return cuts[True], cuts[False]


@pytest.mark.slow
def test_bad_shards_are_named_with_the_reason(shards, tmp_path):
    d, good = shards
    raw_bytes = open(good[""], "rb").read()
    gz_bytes = open(good["GZIP"], "rb").read()

    def put(name, data):
        p = str(tmp_path / name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    between, inside = gzip_cuts(gz_bytes)
    cases = [  # (file, compression, words find_bad_shard's message must contain, field the reader's error names)
        (put("cut.tfrecord", raw_bytes[: len(raw_bytes) // 2 + 7]), "", ["truncated", "cut off"], None),
        (put("cut_between.tfrecord.gz", gz_bytes[:between]), "GZIP", ["truncated", "before the end"], None),
        (put("cut_inside.tfrecord.gz", gz_bytes[:inside]), "GZIP", ["truncated"], None),
        (put("random.tfrecord", np.random.default_rng(1).bytes(3000)), "", ["corrupted record"], None),
        (write_records(str(tmp_path / "float_id.tfrecord"), [_record(), _record(item_id=f32(7.0))]), "",
         ["record 1", "Key: item_id", "float"], "item_id"),
        (write_records(str(tmp_path / "no_len.tfrecord"), [_record(hist_len=None)]), "", ["record 0", "hist_len"],
         "hist_len"),
        (write_records(str(tmp_path / "short.tfrecord"), [_record(hist_item_id=i64(1, 2))]), "",
         ["record 0", "hist_item_id"], "hist_item_id"),
        (write_records(str(tmp_path / "bytes.tfrecord"), [_record(), b"\x0a\xff\x01junk\xfe"]), "",
         ["record 1 is not a serialized tf.Example"], None),
        (good["GZIP"], "", ["GZIP-compressed but was read uncompressed"], None),
        (good[""], "GZIP", ["not GZIP-compressed but was read as GZIP"], None),
    ]
    for path, comp, words, field in cases:
        before = good["GZIP" if comp else ""]  # a good shard first: the message must name the bad one
        msg = find_bad_shard([before, path] if before != path else [path], SCHEMA, comp or None)
        assert msg is not None and msg.startswith(path + ": "), (path, msg)
        for w in words:
            assert w in msg, (path, msg)
        assert "{{function_node" not in msg and "[Op:" not in msg, msg
        if path.endswith(("cut.tfrecord", "cut_between.tfrecord.gz")):
            # TF's reader drops a cut-off last record silently, and a GZIP file cut where its decompressed bytes end
            # between two records reads as a shorter file; only the expected example count can tell
            assert count([path], comp or None) < 60
            with pytest.raises(tf.errors.OpError, match="expected to contain"):
                count([path], comp or None, num_examples=60)
            continue
        with pytest.raises((tf.errors.OpError, UnicodeDecodeError)) as err:
            count([path], comp or None)
        if field:
            assert f"{field}" in str(err.value)  # the reader's own error names the field
    assert count([good[""]]) == 60 and count([good["GZIP"]], "GZIP") == 60  # the process reads on


def test_empty_shards_are_legal(shards, tmp_path):
    _, good = shards
    empty = str(tmp_path / "empty.tfrecord")
    open(empty, "wb").close()
    with ShardedWriter(str(tmp_path), "none", SCHEMA, num_shards=2, compression="GZIP") as w:
        w.write(_columns(1, np.random.default_rng(0)))  # one of the two shards holds no record
    for files, comp in (([empty, good[""]], None), (w.paths + [good["GZIP"]], "GZIP"), ([empty], "GZIP")):
        assert find_bad_shard(files, SCHEMA, comp) is None
        assert count(files, comp) == (0 if files == [empty] else 60 + (comp == "GZIP"))


@pytest.mark.slow
def test_reader_fuzz(shards, tmp_path):
    """Randomly damaged shards: find_bad_shard names every shard the reader fails on, and only such shards (or
    truncated ones, which the reader may shorten silently)."""
    _, good = shards
    rng = np.random.default_rng(99)
    bad_named = 0
    for case in range(30):
        comp = "GZIP" if case % 2 else ""
        data = bytearray(open(good[comp], "rb").read())
        kind = int(rng.integers(4))
        if kind == 0:
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 1:
            for j in rng.integers(0, len(data), int(rng.integers(1, 4))):
                data[j] ^= int(rng.integers(1, 256))
        elif kind == 2:
            j = int(rng.integers(0, len(data)))
            data = data[:j] + bytearray(rng.bytes(int(rng.integers(1, 20)))) + data[j:]
        else:
            data = data + bytearray(rng.bytes(int(rng.integers(1, 40))))
        path = str(tmp_path / f"fuzz{case}.tfrecord{'.gz' if comp else ''}")
        with open(path, "wb") as f:
            f.write(bytes(data))
        msg = find_bad_shard([path], SCHEMA, comp or None)
        assert msg is None or msg.startswith(path + ": "), msg
        try:
            count([path], comp or None)
            read_ok = True
        except (tf.errors.OpError, UnicodeDecodeError):
            read_ok = False
        if not read_ok:
            assert msg is not None, (case, kind)
        if msg is not None:
            bad_named += 1
            assert not read_ok or "truncated" in msg, (case, kind, msg)
    assert bad_named > 15
    assert count([good[""]]) == 60


def test_dataset_split_with_a_damaged_shard(small_dataset, tmp_path):
    """Through `Dataset.tf_dataset` (manifest compression and example count): the split fails, find_bad_shard over
    the dataset's files names the shard, and the other splits still read."""
    root = str(tmp_path / "copy")
    shutil.copytree(small_dataset, root)
    data = Dataset(root)
    shard = data.files("valid")[0]
    raw_bytes = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(raw_bytes[: len(raw_bytes) * 2 // 3])
    with pytest.raises(tf.errors.OpError):
        for _ in data.tf_dataset("valid", 512):
            pass
    msg = find_bad_shard(data.files("train") + data.files("valid"), data.schema, data.compression)
    assert msg is not None and msg.startswith(shard + ": "), msg
    assert sum(int(y.shape[0]) for _, y in data.tf_dataset("test", 512)) == data.examples("test")


def test_a_shard_cut_between_records_fails_every_pipeline(small_dataset, tmp_path):
    """A GZIP train shard cut where its decompressed bytes end between two records reads as a shorter file, without
    an error from TF's reader: the repeated, shuffled training pipeline fails at the end of its first pass (it read
    fewer examples than the manifest says), so does the worker's part of a multi-worker read that holds the shard
    (records or whole files dealt to the workers), and find_bad_shard names the shard. Intact, each part reads
    exactly its share. The training clicks of the cold-start buckets are refused too."""
    root = str(tmp_path / "copy")
    shutil.copytree(small_dataset, root)
    data = Dataset(root)
    assert data.compression == "GZIP" and len(data.files("train")) == 2
    n = data.examples("train")
    per_file = [sum(1 for _ in tf.data.TFRecordDataset(f, compression_type="GZIP")) for f in data.files("train")]
    assert data.file_examples("train") == per_file and sum(per_file) == n  # the manifest's counts, per file
    parts = [sum(int(y.shape[0]) for _, y in data.tf_dataset("train", 512, shard=(3, k))) for k in range(3)]
    assert parts == [len(range(k, n, 3)) for k in range(3)]  # records dealt to 3 workers
    parts = [sum(int(y.shape[0]) for _, y in data.tf_dataset("train", 512, shard=(2, k))) for k in range(2)]
    assert parts == per_file  # whole files dealt to 2 workers
    shard = data.files("train")[1]
    gz = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(gz[:gzip_cuts(gz)[0]])
    batches = iter(data.tf_dataset("train", 512, shuffle=True, seed=0, repeat=True))
    with pytest.raises(tf.errors.FailedPreconditionError, match=f"expected to contain {n} elements"):
        for _ in range(3 * n // 512):  # three passes' worth
            next(batches)
    for part in ((3, 1), (2, 1)):
        with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
            for _ in data.tf_dataset("train", 512, shard=part):
                pass
    msg = find_bad_shard(data.files("train"), data.schema, data.compression)
    assert msg is not None and msg.startswith(shard + ": truncated: "), msg
    with pytest.raises(SchemaError, match=re.escape(f"cold-start buckets, is unreadable: {msg}")):
        training_clicks(data)  # (run.evaluate's cold-start buckets count the training clicks)


# ------------------------------------------------------------------------------------------- hostile use (issue #15)
def test_named_signature_names_a_feature_of_the_wrong_rank(din):
    """Issue #15.11: a [B, 1] id or hist_len, or a [B] or [B, 1, W] history, fails naming the feature and its expected
    shape (the signature declared [B] but did not enforce it: a [B, 1] user_id failed in a ConcatOp deep in DIN)."""
    _, named = din
    good = {"user_id": [3, 4], "item_id": [7, 8], "cate_id": [2, 2], "hist_item_id": [[5, 9, 11], [1, 0, 0]],
            "hist_cate_id": [[1, 2, 2], [3, 0, 0]], "hist_len": [3, 1]}

    def call(**req):
        return named(**{k: tf.constant(v, tf.int64) for k, v in req.items()})["probability"].numpy()

    expected = call(**good)
    for name, value, shape in [("user_id", [[3], [4]], "[2,1]"), ("item_id", [[7], [8]], "[2,1]"),
                               ("hist_len", [[3], [1]], "[2,1]"), ("hist_item_id", [5, 1], "[2]"),
                               ("hist_cate_id", [[[1, 2, 2]], [[3, 0, 0]]], "[2,1,3]")]:
        rank = "[?,?]" if name.startswith("hist_") and name != "hist_len" else "[?]"
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
                f"Shape of tensor {name} {shape} is not compatible with expected shape {rank}")):
            call(**{**good, name: value})
        np.testing.assert_array_equal(call(**good), expected)  # still serving


def test_ids_beyond_the_manifest_vocabulary_are_refused_at_read(small_dataset, tmp_path):
    """Issue #15.10 (read side): a manifest whose vocabulary is smaller than the ids in its shards. With the largest
    ids recorded (converters write them), opening the dataset fails naming split and field; without them (older
    manifests), reading fails, and find_bad_shard names the shard, the record and the id."""
    root = str(tmp_path / "copy")
    shutil.copytree(small_dataset, root)
    path = os.path.join(root, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    top = manifest["splits"]["valid"]["max_id"]["item_id"]
    assert top == max(int(feats["item_id"].numpy().max()) for feats, _ in Dataset(small_dataset).tf_dataset("valid",
                                                                                                               4096))
    manifest["schema"]["vocab"]["item_id"] = top  # ids 0..top-1: the largest valid id is now out of vocabulary
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(SchemaError, match=re.escape(path) + r": split '\w+' holds (hist_)?item_id ids up to \d+, but "
                       r"the vocabulary of 'item_id' has " + str(top) + " rows"):
        Dataset(root)
    for entry in manifest["splits"].values():
        del entry["max_id"]
    with open(path, "w") as f:
        json.dump(manifest, f)
    data = Dataset(root)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("reader: ") + "(hist_)?" + re.escape(
            f"item_id holds ids outside the vocabulary of the manifest (0..{top - 1})")):
        for _ in data.tf_dataset("valid", 512):
            pass
    msg = find_bad_shard(data.files("valid"), data.schema, data.compression)
    got = re.fullmatch("(" + "|".join(map(re.escape, data.files("valid"))) + r"): record \d+: (hist_)?item_id (\d+) "
                       + re.escape(f"is outside the manifest's vocabulary (0..{top - 1}): the manifest does not "
                                   f"describe this shard"), msg)
    assert got and int(got.group(3)) >= top, msg
