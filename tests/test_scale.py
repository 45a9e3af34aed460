"""Scale machinery (issue #8): the numpy tf.Example encoder, array-based id maps, partitioned + restartable
conversion, chunked synthetic generation, the int8 table budget. Small sizes only; the measured large runs are
in the README."""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from mmctr_tf.data import converters, synthetic
from mmctr_tf.data import tables as T
from mmctr_tf.data.converters import build, events, generic, output, raw_ids, reading
from mmctr_tf.data.datasets import Dataset
from mmctr_tf.data.schema import Schema, read_manifest
from mmctr_tf.data.tfrecord import encode_examples


def quiet(_msg):
    pass


# ------------------------------------------------------------------------------------------------ encoder
def test_encoder_bytes_parse_like_proto_built_examples():
    L = 6
    schema = Schema(seq_len=L, vocab={"user_id": 2 ** 40, "item_id": 3_000_000, "cate_id": 50},
                    optional=("request_id", "ts"))
    rng = np.random.default_rng(0)
    n = 300
    hl = rng.integers(0, L + 1, n)
    hl[:20] = 0  # empty histories
    hist = rng.integers(1, 3_000_000, (n, L)) * (np.arange(L)[None] < hl[:, None])
    cols = {"user_id": rng.integers(0, 2 ** 40, n), "item_id": rng.integers(0, 3_000_000, n),
            "cate_id": rng.integers(0, 50, n), "hist_item_id": hist,
            "hist_cate_id": np.where(hist > 0, hist % 49 + 1, 0), "hist_len": hl,
            "label": rng.integers(0, 2, n).astype(np.float32),
            "request_id": rng.integers(-2 ** 62, 2 ** 62, n), "ts": rng.integers(0, 2 ** 33, n)}
    # varint edges: 0, 127/128 (1 -> 2 bytes), int64 extremes (negative = 10 bytes)
    cols["user_id"][:4] = [0, 127, 128, 2 ** 40 - 1]
    cols["ts"][:3] = [-1, 2 ** 63 - 1, -2 ** 63]
    buf, off = encode_examples(cols, schema)
    records = [buf[off[i]:off[i + 1]] for i in range(n)]
    for i in range(n):
        ref = tf.train.Example()
        for k, v in cols.items():
            if k == "label":
                ref.features.feature[k].float_list.value.append(float(v[i]))
            else:
                ref.features.feature[k].int64_list.value.extend(np.atleast_1d(v[i]).tolist())
        assert tf.train.Example.FromString(records[i]) == ref, i
    parsed = tf.io.parse_example(tf.constant(records), schema.feature_spec())
    for k, v in cols.items():
        np.testing.assert_array_equal(parsed[k].numpy(), v, err_msg=k)


# ------------------------------------------------------------------------------------------------ id maps
def test_id_order_of_byte_arrays_equals_sort_raw_ids():
    rng = np.random.default_rng(1)
    ints = [str(int(x)) for x in rng.integers(-50, 10 ** 12, 200)] + ["007", "7", "+7", "-0", "0"]
    mixed = ints[:50] + ["a", "B", "ä", "é1", "x y", "10a", "z"]
    for raw in (ints, mixed, ["1" * 25, "2", "10"]):  # the last: integers beyond int64 (Python fallback)
        arr = raw_ids.to_bytes_array(raw)
        got = [raw[k] for k in raw_ids.id_order(arr)]
        assert got == raw_ids.sort_raw_ids(raw)


def test_event_log_chunks_spill_and_map_to_sorted_vocab(tmp_path, monkeypatch):
    monkeypatch.setattr(events.EventLog, "CHUNK_ROWS", 7)
    rng = np.random.default_rng(2)
    rows = [(f"u{int(rng.integers(0, 30))}", str(int(rng.integers(0, 500))), float(k)) for k in range(100)]
    with events.EventLog(spill_near=str(tmp_path / "out")) as ev:
        for r in rows:
            assert ev.add(*r)
        assert not ev.add("x" * (reading.MAX_ID_CHARS + 1), "1", 0.0)  # too long: rejected, not stored
        assert len(ev) == 100 and ev.num_chunks == 15
        spill = [p for p in os.listdir(tmp_path) if p.startswith(".out.events-")]
        assert len(spill) == 1 and len(os.listdir(tmp_path / spill[0])) == 15  # every chunk on disk
        users, items = ev.users.sorted(), ev.items.sorted()
        assert users.tolist() == sorted({r[0].encode() for r in rows})
        assert items.tolist() == sorted({r[1].encode() for r in rows})
        assert "u3" in ev.users and "nobody" not in ev.users
        u, i, t, _ = ev.arrays()
        assert [users[k].decode() for k in u] == [r[0] for r in rows]
        assert [items[k].decode() for k in i] == [r[1] for r in rows]
        np.testing.assert_array_equal(t, [r[2] for r in rows])
    assert not os.listdir(tmp_path)  # spill directory removed on close


# ------------------------------------------------------------------------------------------------ conversion
def write_log(path, n_users=40, seed=0, extra_rows=()):
    """Numeric user ids (numeric order differs from string order), string items, tied timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for _ in range(int(rng.integers(2, 16))):
            rows.append((str(u * 7 + 3), f"it{int(rng.integers(0, 60))}", int(rng.integers(0, 6))))
    rows = [rows[k] for k in rng.permutation(len(rows))] + list(extra_rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        w.writerows(rows)
    return rows


def expected_din(rows, min_b=5, max_b=10, seq_len=8):
    by_user = collections.defaultdict(list)
    for idx, (u, i, t) in enumerate(rows):
        by_user[u].append((t, idx, i))
    out, full = {"train": [], "valid": [], "test": []}, {}
    for u, evs in by_user.items():
        if len(evs) < min_b:
            continue
        seq = [i for _, _, i in sorted(evs)]
        full[u] = set(seq)
        seq = seq[-max_b:]
        for k in range(1, len(seq)):
            split = "test" if k == len(seq) - 1 else "valid" if k == len(seq) - 2 else "train"
            out[split].append((u, seq[k], tuple(seq[max(0, k - seq_len):k])))
    return out, full


def records(path):
    """Every shard's parsed records in stored order, keyed by file name, + the id maps."""
    m = read_manifest(path)
    spec = m["schema_obj"].feature_spec()
    out = {}
    for split in ("train", "valid", "test"):
        for fn in m["splits"][split]["files"]:
            rows = list(tf.data.TFRecordDataset(os.path.join(path, fn), compression_type=m["compression"] or ""))
            p = tf.io.parse_example(tf.stack(rows), spec) if rows else {}
            out[fn] = {k: v.numpy() for k, v in p.items()}
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".tsv"):
            out[fn] = open(os.path.join(path, fn)).read()
    return m, out


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], str):
            assert a[k] == b[k], k
        else:
            assert sorted(a[k]) == sorted(b[k]), k
            for f in a[k]:
                np.testing.assert_array_equal(a[k][f], b[k][f], err_msg=f"{k}:{f}")


PROTO = {"seq_len": 8, "max_behaviors": 10, "chunk_events": 40}


def test_partitioned_streaming_conversion_follows_din_protocol(tmp_path, monkeypatch):
    monkeypatch.setattr(events.EventLog, "CHUNK_ROWS", 50)  # several chunks, spilled to disk
    raw = tmp_path / "log.csv"
    rows = write_log(raw)
    out = str(tmp_path / "d")
    opts = generic.GenericOptions(interactions=str(raw))
    write = converters.WriteConfig(num_shards=2, compression="", partition_events=60)
    m = converters.convert("d", None, out, overrides=PROTO, write=write, generic_options=opts, log=quiet)
    P = -(-len(rows) // 60)
    assert m["stats"]["partitions"] == P > 2
    assert m["splits"]["train"]["files"] == [f"train-{k:05d}-of-{P:05d}.tfrecord" for k in range(P)]
    assert sorted(os.listdir(tmp_path)) == ["d", "log.csv"]  # no spill / staging dir left
    exp, full = expected_din(rows)
    users = converters.load_id_map(out, "user_id")
    items = converters.load_id_map(out, "item_id")
    assert users[1:] == sorted(full, key=int)  # numeric raw ids in numeric order
    ds = Dataset(out)
    for split in exp:
        c = collections.defaultdict(list)
        for feats, label in ds.tf_dataset(split, 512):
            for k, v in feats.items():
                c[k].append(v.numpy())
            c["label"].append(label.numpy())
        c = {k: np.concatenate(v) for k, v in c.items()}
        pos = c["label"] == 1
        got = sorted((users[c["user_id"][r]], items[c["item_id"][r]],
                      tuple(items[x] for x in c["hist_item_id"][r][:c["hist_len"][r]])) for r in np.flatnonzero(pos))
        assert got == sorted(exp[split])
        assert (~pos).sum() == pos.sum() == m["splits"][split]["examples"] // 2
        for r in np.flatnonzero(~pos):  # negatives: an item the user never interacted with
            assert items[c["item_id"][r]] not in full[users[c["user_id"][r]]]
        assert m["splits"][split]["users"] == len({e[0] for e in exp[split]})
        per_file = [sum(1 for _ in tf.data.TFRecordDataset(f)) for f in ds.files(split)]  # partitions' shards
        assert m["splits"][split]["file_examples"] == per_file and sum(per_file) == m["splits"][split]["examples"]


def test_interrupted_conversion_resumes_to_the_uninterrupted_output(tmp_path, monkeypatch):
    raw = tmp_path / "log.csv"
    write_log(raw, seed=3)
    opts = generic.GenericOptions(interactions=str(raw))
    write = converters.WriteConfig(num_shards=2, compression="GZIP", partition_events=50, resume=True)
    kw = dict(overrides=PROTO, generic_options=opts, log=quiet)
    ref = str(tmp_path / "ref")
    m_ref = converters.convert("d", None, ref, write=converters.WriteConfig(
        num_shards=2, compression="GZIP", partition_events=50), **kw)
    P = m_ref["stats"]["partitions"]
    assert P >= 4

    def stop_after(k):
        def hook(p):
            if p == k - 1:
                raise RuntimeError("killed (simulated)")
        return hook

    out = str(tmp_path / "out")
    monkeypatch.setattr(build, "_PARTITION_DONE_HOOK", stop_after(2))
    with pytest.raises(RuntimeError, match="simulated"):
        converters.convert("d", None, out, write=write, **kw)
    partial = output.partial_dir(out)
    assert not os.path.exists(out)
    assert sorted(f for f in os.listdir(os.path.join(partial, ".progress")) if f.startswith("part-")) == \
        ["part-00000.json", "part-00001.json"]
    done_files = [f for f in os.listdir(partial) if ".tfrecord" in f and not f.endswith(".tmp")]
    assert len(done_files) == 2 * 3  # two partitions x one shard x three splits, complete

    monkeypatch.setattr(build, "_PARTITION_DONE_HOOK", None)
    m = converters.convert("d", None, out, write=write, **kw)
    assert m["stats"]["partitions_reused"] == 2
    assert not os.path.exists(partial)
    _, a = records(ref)
    _, b = records(out)
    assert_same(a, b)
    for key in ("splits", "schema"):
        assert m[key] == m_ref[key]

    # a partial conversion of a log that changed since is not reused
    monkeypatch.setattr(build, "_PARTITION_DONE_HOOK", stop_after(1))
    with pytest.raises(RuntimeError):
        converters.convert("d", None, str(tmp_path / "again"), write=write, **kw)
    monkeypatch.setattr(build, "_PARTITION_DONE_HOOK", None)
    write_log(raw, seed=3, extra_rows=[("3", "it999", 9)])
    m2 = converters.convert("d", None, str(tmp_path / "again"), write=write, **kw)
    assert m2["stats"]["partitions_reused"] == 0 and m2["stats"]["events_read"] == m["stats"]["events_read"] + 1


# ------------------------------------------------------------------------------------------------ tables
def test_int8_tables_2m_items_x128_x2_modalities_fit_600mb(tmp_path):
    rng = np.random.default_rng(4)
    rows, dim = 1001, 128
    v = rng.normal(size=(rows, dim)).astype(np.float32)
    v[0] = 0
    t = T.quantize(v, rng.random(rows) > 0.05, "int8")
    assert (t.values.dtype, t.scale.dtype, t.present.dtype) == (np.int8, np.float32, np.bool_)
    per_row = t.nbytes / rows
    assert per_row == dim * 1 + 4 + 1  # int8 values + float32 scale + bool present flag
    entry = T.save_table(str(tmp_path), "text", t)
    on_disk = sum(os.path.getsize(tmp_path / f) for f in entry["files"])
    assert 0 < on_disk - t.nbytes <= 3 * 128  # .npy headers only
    total = 2 * (2_000_000 + 1) * per_row  # two modalities, 2M items + padding row
    assert total < 600e6, total
    blocked = T.quantize(v, t.present, "int8", block=100)  # block-wise quantization = whole-table quantization
    np.testing.assert_array_equal(blocked.values, t.values)
    np.testing.assert_array_equal(blocked.scale, t.scale)


# ------------------------------------------------------------------------------------------------ synthetic
def test_script_without_main_guard_fails_at_once_naming_the_guard(tmp_path):
    """A script that calls synthetic.build with worker processes but without the `if __name__ == "__main__":` guard:
    each spawned worker runs the script again and dies. It used to hang the parent for good; now it fails within
    seconds, names the guard, and leaves neither the dataset nor a temporary directory behind."""
    script = tmp_path / "noguard.py"
    script.write_text("from mmctr_tf.data import synthetic\n"
                      "cfg = synthetic.SyntheticConfig(num_users=600, num_items=100, impressions_per_user=4, dim=4, "
                      "seq_len=4, chunk_users=200, workers=2, seed=1)\n"
                      f"synthetic.build({str(tmp_path / 'out')!r}, cfg, log=lambda *a: None)\n")
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "WorkerStartError" in r.stderr, r.stderr[-2000:]
    assert 'if __name__ == "__main__":' in r.stderr.splitlines()[-1]
    assert sorted(os.listdir(tmp_path)) == ["noguard.py"]


def test_chunked_synthetic_generator(tmp_path):
    cfg = synthetic.config_for("synthetic_scale", num_users=1500, num_items=400, chunk_users=500, num_shards=2,
                               dim=8, seq_len=10, impressions_per_user=10)
    _, _, _, _, chunks = synthetic.generate_chunks(cfg)
    seen = []
    for block in chunks:
        u = np.unique(np.concatenate([block[s]["user_id"] for s in block]))
        seen.append((u.min(), u.max(), len(u)))
    assert seen == [(1, 500, 500), (501, 1000, 500), (1001, 1500, 500)]
    out = str(tmp_path / "scale")
    m = synthetic.build(out, cfg, log=quiet)
    assert [m["splits"][s]["examples"] for s in ("train", "valid", "test")] == [1500 * 8, 1500, 1500]
    for e in m["splits"].values():
        assert e["users"] == 1500 and 0.5 < e["bayes_auc"] < 1 and 0 < e["positive_rate"] < 0.5
    feats, label = next(iter(Dataset(out).tf_dataset("train", 64)))
    assert feats["hist_item_id"].shape == (64, 10) and label.shape == (64,)
    again = synthetic.build(str(tmp_path / "again"), dataclasses.replace(cfg, workers=2), log=quiet)
    assert again["splits"] == m["splits"]  # deterministic, whether chunks are made in this process or in two others
    for f in sorted(os.listdir(out)):
        if f.endswith(".gz"):
            assert open(os.path.join(out, f), "rb").read() == open(tmp_path / "again" / f, "rb").read(), f
