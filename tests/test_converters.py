"""Real-dataset converters (mmctr_tf/data/converters): fixture files written here, plus the shared real data.

Every expected count is computed independently from the fixture records (plain Python), never from the
converter's own intermediate arrays.
"""

from __future__ import annotations

import collections
import csv
import glob
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import lock_holder

from mmctr_tf.data import converters, synthetic
from mmctr_tf.data.converters import build, generic, text_embed
from mmctr_tf.data.converters.amazon import parse_record
from mmctr_tf.data.converters.reading import ConversionError
from mmctr_tf.data.datasets import Dataset, ensure_dataset
from mmctr_tf.data.schema import SchemaError, read_manifest, write_manifest
from mmctr_tf.data.summary import print_summary
from mmctr_tf.locks import LockHeld

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
SCIENTIFIC = os.path.join(SHARED, "amazon-scientific")
S3REC = os.path.join(SHARED, "amazon-s3rec")
SEQ = 50


def quiet(_msg):
    pass


def read_split(path, split):
    """All examples of a split as numpy columns (order as stored)."""
    ds = Dataset(path)
    cols = collections.defaultdict(list)
    for feats, label in ds.tf_dataset(split, 4096):
        for k, v in feats.items():
            cols[k].append(v.numpy())
        cols["label"].append(label.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def id_maps(path):
    return {f: converters.load_id_map(path, f) for f in ("user_id", "item_id", "cate_id")}


def expected_din(events, min_b=5, max_b=50, seq_len=SEQ):
    """Independent DIN protocol on [(user, item, t)] in file order -> per split list of (user, target, history)."""
    by_user = collections.defaultdict(list)
    for idx, (u, i, t) in enumerate(events):
        by_user[u].append((t, idx, i))
    out = {"train": [], "valid": [], "test": []}
    full_items, kept_items, kept_users = {}, set(), []
    for u, evs in by_user.items():
        if len(evs) < min_b:
            continue
        kept_users.append(u)
        seq = [i for _, _, i in sorted(evs)]
        full_items[u] = set(seq)
        seq = seq[-max_b:] if max_b else seq
        kept_items.update(seq)
        n = len(seq)
        for k in range(1, n):
            split = "test" if k == n - 1 else "valid" if k == n - 2 else "train"
            out[split].append((u, seq[k], tuple(seq[max(0, k - seq_len):k])))
    return out, full_items, kept_items, kept_users


def check_din_examples(path, exp, full_items, item_cate=None):
    maps = id_maps(path)
    users, items, cates = maps["user_id"], maps["item_id"], maps["cate_id"]
    V = len(items)
    for split in ("train", "valid", "test"):
        c = read_split(path, split)
        pos = c["label"] == 1
        assert pos.sum() == (~pos).sum() == len(exp[split])
        got = []
        for r in np.flatnonzero(pos):
            hl = int(c["hist_len"][r])
            h = c["hist_item_id"][r]
            assert np.all(h[hl:] == 0) and np.all(h[:hl] > 0)
            got.append((users[c["user_id"][r]], items[c["item_id"][r]], tuple(items[x] for x in h[:hl])))
            if item_cate is not None:
                assert cates[c["cate_id"][r]] == item_cate.get(items[c["item_id"][r]])
                assert [cates[x] for x in c["hist_cate_id"][r][:hl]] == [item_cate.get(items[x]) for x in h[:hl]]
        assert sorted(got) == sorted(exp[split])
        # negatives: same history as a positive of the user, an item the user never interacted with
        def keys(rows):
            return collections.Counter((int(c["user_id"][r]), tuple(c["hist_item_id"][r])) for r in rows)

        pos_keys, neg_keys = keys(np.flatnonzero(pos)), keys(np.flatnonzero(~pos))
        assert pos_keys == neg_keys
        for r in np.flatnonzero(~pos):
            neg = int(c["item_id"][r])
            assert 0 < neg < V
            assert items[neg] not in full_items[users[c["user_id"][r]]]
            if item_cate is not None:
                assert cates[c["cate_id"][r]] == item_cate.get(items[neg])


# --------------------------------------------------------------------------------------------------- Amazon
def asin(k):
    return f"B{k:09d}"


def make_amazon(raw, stem="Electronics", gz=True, seed=0):
    """5-core style reviews (strict JSON) + meta (Python literals) + McAuley image features, with bad lines."""
    rng = np.random.default_rng(seed)
    os.makedirs(raw, exist_ok=True)
    lengths = [3, 4, 5, 5, 6, 7, 8, 9, 10, 12, 15, 20, 5, 6, 61, 7, 4, 11, 5, 9]
    events, lines = [], []
    for u, n in enumerate(lengths):
        user = f"A{u:05d}USER"
        for _ in range(n):
            item = asin(int(rng.integers(0, 90)))
            t = int(1_300_000_000 + 86400 * rng.integers(0, 40))  # day granularity: ties happen
            events.append((user, item, t))
            lines.append(json.dumps({"reviewerID": user, "asin": item, "reviewerName": "x, \"y\"",
                                     "helpful": [0, 0], "reviewText": "ok", "overall": 5.0,
                                     "summary": "s", "unixReviewTime": t, "reviewTime": "01 1, 2011"}))
    # shuffle file order, then add malformed lines
    order = rng.permutation(len(lines))
    lines = [lines[i] for i in order]
    events = [events[i] for i in order]
    bad = ["this is not json", '{"reviewerID": "A1", "asin": ', '{"reviewerID": "A2", "asin": "B1"}',
           "[1, 2, 3]", "__import__('os').system('touch " + os.path.join(raw, "PWNED") + "')",
           "{'reviewerID': 'A3', 'asin': 'B000000001', 'unixReviewTime': 'soon'}", ""]
    for j, b in enumerate(bad):
        lines.insert(3 + 7 * j, b)
    opener = gzip.open if gz else open
    rev = os.path.join(raw, f"reviews_{stem}_5.json" + (".gz" if gz else ""))
    with opener(rev, "wt") as f:
        f.write("\n".join(lines) + "\n")
    # meta: Python-literal lines (as in the 2014 dump), one strict-JSON line, a few without a usable category
    item_cate, meta_lines = {}, []
    for k in range(90):
        if k % 11 == 5:
            continue  # no metadata at all
        obj = {"asin": asin(k), "title": f"Item {k} 'quoted'", "price": 9.99, "imUrl": "http://x/y.jpg",
               **({"brand": f"Brand{k % 4}"} if k % 2 == 0 else {}),
               "salesRank": {"Electronics": k}, "categories": [["Electronics", f"Sub {k % 3}", f"Leaf {k % 7}"],
                                                                ["Other", "x"]]}
        if k % 13 == 4:
            obj["categories"] = [[]]
        else:
            item_cate[asin(k)] = f"Leaf {k % 7}"
        meta_lines.append(json.dumps(obj) if k == 7 else repr(obj))
    # malformed lines of reviewed items (lines of items without reviews are skipped unparsed)
    meta_lines.insert(10, "{'asin': '%s', 'title': broken" % events[0][1])
    meta_lines.insert(20, "{'asin': '%s', 'title': os.system('ls')}" % events[1][1])
    meta_lines.insert(30, "{'asin': 'B000000099', 'title': broken, but not a reviewed item")
    meta = os.path.join(raw, f"meta_{stem}.json" + (".gz" if gz else ""))
    with opener(meta, "wt") as f:
        f.write("\n".join(meta_lines) + "\n")
    # McAuley binary image features: 10-byte asin + 4096 float32; a few items, one unknown asin, a truncated tail
    img = {}
    with open(os.path.join(raw, f"image_features_{stem}.b"), "wb") as f:
        for k in list(range(0, 90, 3)) + [500]:
            v = rng.normal(size=4096).astype("<f4")
            img[asin(k)] = v
            f.write(asin(k).encode("ascii"))
            f.write(v.tobytes())
        f.write(b"B0000000XX" + b"\x00" * 100)
    return {"events": events, "item_cate": item_cate, "image": img, "malformed_reviews": 6,
            "malformed_meta": 2}


def test_parse_record_formats_and_safety(tmp_path):
    assert parse_record('{"asin": "B1", "x": [1, 2]}') == {"asin": "B1", "x": [1, 2]}
    assert parse_record("{'asin': 'B1', 'categories': [['A', 'B']], 'p': 1.5}")["categories"] == [["A", "B"]]
    for bad in ("[1, 2]", "nope", "{'a': __import__('os')}", "{'a': open('x')}", '{"a": '):
        with pytest.raises(ValueError):
            parse_record(bad)


@pytest.fixture(scope="module")
def amazon_dataset(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("amazon_raw"))
    fx = make_amazon(raw)
    out = os.path.join(str(tmp_path_factory.mktemp("amazon_out")), "electro")
    manifest = converters.convert("electro", raw, out, log=quiet)
    return raw, out, manifest, fx


def test_amazon_protocol_and_stats(amazon_dataset):
    raw, out, manifest, fx = amazon_dataset
    assert not os.path.exists(os.path.join(raw, "PWNED"))
    exp, full_items, kept_items, kept_users = expected_din(fx["events"])
    st = manifest["stats"]
    cates = {fx["item_cate"][i] for i in kept_items if i in fx["item_cate"]}
    assert st["users"] == len(kept_users) == 17
    assert st["items"] == len(kept_items)
    assert st["categories"] == len(cates)
    assert st["items_without_category"] == sum(i not in fx["item_cate"] for i in kept_items)
    n_examples = 2 * sum(len(v) for v in exp.values())
    assert st["examples"] == n_examples and st["positive_rate"] == 0.5
    assert st["events_beyond_max_behaviors"] == 61 - 50
    assert st["users_dropped_short"] == 3
    for split in ("train", "valid", "test"):
        assert manifest["splits"][split]["examples"] == 2 * len(exp[split])
        assert manifest["splits"][split]["positive_rate"] == 0.5
    assert manifest["splits"]["test"]["users"] == len(kept_users)
    assert st["malformed_lines"] == {"reviews_Electronics_5.json.gz": fx["malformed_reviews"],
                                     "meta_Electronics.json.gz": fx["malformed_meta"]}
    # image features: McAuley binary, coverage = items of the vocabulary that have a record
    with_img = sum(i in fx["image"] for i in kept_items)
    assert st["coverage"]["image"] == pytest.approx(with_img / len(kept_items))
    assert manifest["tables"]["image"]["malformed"] == 1 and manifest["tables"]["image"]["unmatched"] >= 1
    schema = manifest["schema"]
    assert schema["vocab"] == {"user_id": 18, "item_id": len(kept_items) + 1, "cate_id": len(cates) + 1}
    assert schema["modalities"] == {"image": 4096}
    # ids: deterministic sorted raw order, maps saved
    items = converters.load_id_map(out, "item_id")
    assert items[1:] == sorted(kept_items)
    check_din_examples(out, exp, full_items, fx["item_cate"])


def test_amazon_vector_table_alignment_and_missing_flag(amazon_dataset):
    _, out, _, fx = amazon_dataset
    ds = Dataset(out)
    t = ds.tables["image"]
    items = converters.load_id_map(out, "item_id")
    for k in range(1, len(items)):
        if items[k] in fx["image"]:
            assert t.present[k]
            np.testing.assert_array_equal(t.values[k], fx["image"][items[k]])
        else:
            assert not t.present[k] and not t.values[k].any()
    assert not t.present[0]


def test_round_trip_tf_dataset_shapes(amazon_dataset):
    _, out, manifest, _ = amazon_dataset
    ds = Dataset(out)
    feats, label = next(iter(ds.tf_dataset("train", 64)))
    n = min(64, manifest["splits"]["train"]["examples"])
    assert label.shape == (n,)
    for k in ("user_id", "item_id", "cate_id", "hist_len"):
        assert feats[k].shape == (n,)
    for k in ("hist_item_id", "hist_cate_id"):
        assert feats[k].shape == (n, SEQ)
    assert sorted(feats) == sorted(ds.schema.model_inputs)
    assert set(label.numpy().tolist()) <= {0.0, 1.0}


def test_amazon_deterministic_and_seeded(tmp_path, amazon_dataset):
    raw, out, _, _ = amazon_dataset
    converters.convert("electro", raw, str(tmp_path / "again"), log=quiet)
    a, b = read_split(out, "train"), read_split(str(tmp_path / "again"), "train")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    converters.convert("electro", raw, str(tmp_path / "seed1"), overrides={"seed": 1}, image_features=False,
                       log=quiet)
    c = read_split(str(tmp_path / "seed1"), "train")

    def rows(d, positive):
        m = (d["label"] == 1) == positive
        return sorted(zip(d["user_id"][m], d["item_id"][m], map(tuple, d["hist_item_id"][m])))

    assert rows(a, True) == rows(c, True)  # the seed changes only the sampled negatives
    assert rows(a, False) != rows(c, False)


def test_shards_mix_labels(amazon_dataset):
    _, out, _, _ = amazon_dataset
    ds = Dataset(out)
    for f in ds.files("train"):
        y = np.concatenate([lab.numpy() for _, lab in ds.tf_dataset("train", 4096, files=[f])])
        assert 0.3 < y.mean() < 0.7, (f, y.mean())


def test_amazon_plain_json_first_level_brand_popularity(tmp_path):
    raw = str(tmp_path / "raw")
    fx = make_amazon(raw, stem="Books", gz=False)
    out = str(tmp_path / "books")
    m = converters.convert("books", raw, out, category_level="first", image_features=False, with_brand=True,
                           overrides={"negatives": "popularity"}, log=quiet)
    assert m["stats"]["categories"] == 1  # first level = "Electronics" for every fixture item
    assert m["schema"]["modalities"] == {}
    assert m["source"] == "amazon2014:Books"
    _, full_items, kept_items, _ = expected_din(fx["events"])
    brands = {f"Brand{k % 4}" for k in range(90) if k % 2 == 0 and k % 11 != 5 and asin(k) in kept_items}
    assert m["stats"]["brands"] == len(brands) and m["schema"]["vocab"]["brand_id"] == len(brands) + 1
    feats, _ = next(iter(Dataset(out).tf_dataset("train", 32)))
    assert feats["hist_brand_id"].shape == (32, SEQ) and feats["brand_id"].shape == (32,)
    c = read_split(out, "train")
    items, users = converters.load_id_map(out, "item_id"), converters.load_id_map(out, "user_id")
    for r in np.flatnonzero(c["label"] == 0):
        assert items[c["item_id"][r]] not in full_items[users[c["user_id"][r]]]


def test_amazon_2018_field_names(tmp_path):
    raw = str(tmp_path / "raw")
    os.makedirs(raw)
    with gzip.open(os.path.join(raw, "Arts_Crafts_and_Sewing_5.json.gz"), "wt") as f:
        for u in range(6):
            for j in range(6):
                f.write(json.dumps({"overall": 5.0, "verified": True, "reviewerID": f"U{u}", "asin": f"A{(u + j) % 9}",
                                    "unixReviewTime": 1000 + j, "style": {"Color:": " Red"}}) + "\n")
    with gzip.open(os.path.join(raw, "meta_Arts_Crafts_and_Sewing.json.gz"), "wt") as f:
        for k in range(9):
            f.write(json.dumps({"asin": f"A{k}", "title": f"T{k}", "brand": "B",
                                "category": ["Arts, Crafts & Sewing", f"Sub{k % 2}", f"Leaf{k % 3}"]}) + "\n")
    m = converters.convert("arts", raw, str(tmp_path / "arts"), log=quiet)
    assert m["stats"]["users"] == 6 and m["stats"]["items"] == 9 and m["stats"]["categories"] == 3
    assert m["stats"]["examples"] == 6 * 5 * 2


# --------------------------------------------------------------------------------------------------- MovieLens
def make_movielens(raw, dat=False, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(raw, exist_ok=True)
    rows = []
    for u in range(1, 13):
        n = 3 if u == 5 else int(rng.integers(5, 30))
        for _ in range(n):
            rows.append((str(u), str(int(rng.integers(1, 40))), float(rng.integers(1, 11)) / 2.0,
                         int(1_000_000 + rng.integers(0, 50))))
    genres = ["Adventure|Animation", "Comedy", "Drama|Romance", "(no genres listed)", "Action|Sci-Fi|IMAX"]
    if dat:
        with open(os.path.join(raw, "ratings.dat"), "w") as f:
            for r in rows:
                f.write(f"{r[0]}::{r[1]}::{r[2]:g}::{r[3]}\n")
            f.write("garbage line\n")
        with open(os.path.join(raw, "movies.dat"), "w", encoding="latin-1") as f:
            for m in range(1, 40):
                f.write(f"{m}::Movie {m}, The (199{m % 10})::{genres[m % 5]}\n")
        malformed = 1
    else:
        with open(os.path.join(raw, "ratings.csv"), "w") as f:
            f.write("userId,movieId,rating,timestamp\n")
            for j, r in enumerate(rows):
                f.write(f"{r[0]},{r[1]},{r[2]},{r[3]}\n")
                if j == 10:
                    f.write("1,2,notanumber,3\n")
                if j == 20:
                    f.write("1,2\n")
        with open(os.path.join(raw, "movies.csv"), "w") as f:
            w = csv.writer(f)
            w.writerow(["movieId", "title", "genres"])
            for m in range(1, 40):
                w.writerow([m, f"Movie {m}, The (199{m % 10})", genres[m % 5]])
        malformed = 2
    return rows, {str(m): genres[m % 5].split("|")[0] for m in range(1, 40)}, malformed


@pytest.mark.parametrize("dat", [False, True])
def test_movielens(tmp_path, dat):
    raw = str(tmp_path / "ml" / ("ml-1m" if dat else "ml-20m"))  # files in a sub-folder of --raw_dir
    rows, cate, malformed = make_movielens(raw, dat=dat)
    out = str(tmp_path / "movielens")
    m = converters.convert("movielens", str(tmp_path / "ml"), out, log=quiet)
    by_user = collections.defaultdict(list)
    for idx, (u, i, r, t) in enumerate(rows):
        by_user[u].append((t, idx, i, 1 if r > 3 else 0))
    exp = {"train": [], "valid": [], "test": []}
    for u, evs in by_user.items():
        if len(evs) < 5:
            continue
        seq = sorted(evs)
        n = len(seq)
        n_test = max(1, int(np.floor(0.1 * n + 0.5)))
        n_valid = max(1, int(np.floor(0.1 * n + 0.5)))
        for k, (_, _, i, y) in enumerate(seq):
            hist = tuple(x[2] for x in seq[:k] if x[3] == 1)[-SEQ:]
            split = "test" if k >= n - n_test else "valid" if k >= n - n_test - n_valid else "train"
            exp[split].append((u, i, hist, y))
    st = m["stats"]
    assert st["users"] == 11 and st["users_dropped_short"] == 1
    assert st["examples"] == sum(len(v) for v in exp.values())
    assert st["positive_rate"] == pytest.approx(np.mean([e[3] for v in exp.values() for e in v]))
    assert st["malformed_lines"][("ratings.dat" if dat else "ratings.csv")] == malformed
    kept_items = {e[1] for v in exp.values() for e in v}
    assert st["categories"] == len({cate[i] for i in kept_items})
    maps = id_maps(out)
    for split in exp:
        c = read_split(out, split)
        got = [(maps["user_id"][c["user_id"][r]], maps["item_id"][c["item_id"][r]],
                tuple(maps["item_id"][x] for x in c["hist_item_id"][r][:c["hist_len"][r]]), int(c["label"][r]))
               for r in range(len(c["label"]))]
        assert sorted(got) == sorted(exp[split])
        assert all(maps["cate_id"][c["cate_id"][r]] == cate[maps["item_id"][c["item_id"][r]]]
                   for r in range(len(c["label"])))
    assert (np.asarray(read_split(out, "train")["hist_len"]) == 0).any()  # cold start rows are legal


# --------------------------------------------------------------------------------------------------- generic
def make_generic(raw, prefix="", with_row=True, nan_item=None, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(raw, exist_ok=True)
    events = []
    with open(os.path.join(raw, f"{prefix}interactions.csv"), "w") as f:
        f.write("user_id,item_id,seq_pos\n")
        for u in range(15):
            n = int(rng.integers(4, 14))
            for p in rng.permutation(n):  # file order differs from seq_pos order
                it = f"item{int(rng.integers(0, 30))}"
                events.append((f"u{u}", it, int(p)))
                f.write(f"u{u},{it},{int(p)}\n")
        f.write("u1,,3\nu2,item1\nu3,item2,later\n")
    n_items = 32  # two items never interacted with
    rows = rng.permutation(n_items)
    texts, cats = {}, {}
    with open(os.path.join(raw, f"{prefix}items.csv"), "w") as f:
        w = csv.writer(f)
        w.writerow(["row", "item_id", "attribute_ids", "text"] if with_row else ["item_id", "attribute_ids", "text"])
        for k in range(n_items):
            item = f"item{k}"
            attrs = "" if k == 3 else f"{k % 5 + 10} {k % 3} 99"
            text = "" if k == 4 else f"Title {k}, with comma. Cat path. Brand."
            if attrs:
                cats[item] = str(k % 5 + 10)
            if text:
                texts[item] = " ".join(text.split())
            w.writerow(([int(rows[k])] if with_row else []) + [item, attrs, text])
        f.write("bad,row\n")
    vec_rows = n_items
    text_vec = rng.normal(size=(vec_rows, 6)).astype(np.float32)
    image_vec = rng.normal(size=(vec_rows, 4)).astype(np.float32)
    r_of = {f"item{k}": (int(rows[k]) if with_row else k) for k in range(n_items)}
    image_vec[r_of["item5"]] = 0.0  # all-zero row -> missing
    if nan_item:
        text_vec[r_of[nan_item]] = np.nan
    np.save(os.path.join(raw, f"{prefix}text_vectors.npy"), text_vec)
    np.save(os.path.join(raw, f"{prefix}image_vectors.npy"), image_vec)
    return {"events": events, "cats": cats, "texts": texts, "rows": r_of, "text": text_vec, "image": image_vec}


def test_generic_csv_with_vectors(tmp_path):
    raw = str(tmp_path / "raw")
    fx = make_generic(raw, nan_item="item6")
    out = str(tmp_path / "mine")
    m = converters.convert("mine", raw, out, log=quiet)
    exp, full_items, kept_items, kept_users = expected_din([(u, i, t) for u, i, t in fx["events"]])
    st = m["stats"]
    assert st["users"] == len(kept_users) and st["items"] == len(kept_items)
    assert st["categories"] == len({fx["cats"][i] for i in kept_items if i in fx["cats"]})
    assert st["malformed_lines"] == {"interactions.csv": 3, "items.csv": 1}
    assert st["examples"] == 2 * sum(len(v) for v in exp.values())
    check_din_examples(out, exp, full_items, fx["cats"])
    ds = Dataset(out)
    items = converters.load_id_map(out, "item_id")
    assert sorted(ds.tables) == ["image", "text"]
    for name in ("text", "image"):
        t = ds.tables[name]
        exp_present = [k for k in range(1, len(items))
                       if np.isfinite(fx[name][fx["rows"][items[k]]]).all() and fx[name][fx["rows"][items[k]]].any()]
        assert st["items_with_vector"][name] == len(exp_present)
        assert st["coverage"][name] == pytest.approx(len(exp_present) / len(kept_items))
        for k in range(1, len(items)):
            if k in exp_present:
                np.testing.assert_array_equal(t.values[k], fx[name][fx["rows"][items[k]]])
            else:
                assert not t.present[k] and not t.values[k].any()
    assert ("item6" in kept_items) == (st["items_with_vector"]["text"] == len(kept_items) - 1)
    texts = converters.load_item_texts(out)
    assert {items[k]: v for k, v in texts.items()} == {i: fx["texts"][i] for i in kept_items if i in fx["texts"]}


def test_generic_pca_and_int8(tmp_path):
    raw = str(tmp_path / "raw")
    fx = make_generic(raw, with_row=False)
    out = str(tmp_path / "pca")
    m = converters.convert("x", raw, out, write=converters.WriteConfig(num_shards=2, compression="",
                                                                         table_dtype="float32", pca_dim=3),
                           log=quiet)
    assert m["schema"]["modalities"] == {"image": 3, "text": 3}
    assert m["compression"] == "" and len(m["splits"]["train"]["files"]) == 2
    ds = Dataset(out)
    items = converters.load_id_map(out, "item_id")
    t = ds.tables["text"]
    X = np.stack([fx["text"][fx["rows"][items[k]]] for k in range(1, len(items))]).astype(np.float64)
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    ref = Xc @ vt[:3].T
    got = t.values[1:]
    for j in range(3):  # components are unique up to sign
        s = np.sign(ref[:, j] @ got[:, j])
        np.testing.assert_allclose(got[:, j], s * ref[:, j], rtol=1e-4, atol=1e-4)
    assert m["tables"]["text"]["pca"]["dim_in"] == 6
    img = ds.tables["image"]
    k5 = items.index("item5") if "item5" in items else None
    if k5:
        assert not img.present[k5] and not img.values[k5].any()
    q = converters.convert("x", raw, str(tmp_path / "q"), write=converters.WriteConfig(table_dtype="int8"), log=quiet)
    assert q["tables"]["text"]["dtype"] == "int8"
    tq = Dataset(str(tmp_path / "q")).tables["text"]
    assert np.abs(tq.dequantize()[1:] - np.stack([fx["text"][fx["rows"][items[k]]]
                                                 for k in range(1, len(items))])).max() < 0.05


def test_explicit_vectors_with_item_list(tmp_path):
    raw = str(tmp_path / "raw")
    make_generic(raw)
    os.remove(os.path.join(raw, "text_vectors.npy"))
    os.remove(os.path.join(raw, "image_vectors.npy"))
    ids = np.array([f"item{k}" for k in range(0, 30, 2)])
    vec = np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3) + 1
    np.save(str(tmp_path / "v.npy"), vec)
    np.save(str(tmp_path / "v.ids.npy"), ids)
    with open(tmp_path / "w.items.txt", "w") as f:
        f.write("\n".join(ids.tolist()) + "\n")
    np.save(str(tmp_path / "w.npy"), vec * 2)
    m = converters.convert("y", raw, str(tmp_path / "y"), log=quiet,
                           vector_specs=[f"clip={tmp_path / 'v.npy'}@{tmp_path / 'v.ids.npy'}",
                                         f"other={tmp_path / 'w.npy'}"])
    ds = Dataset(str(tmp_path / "y"))
    items = converters.load_id_map(str(tmp_path / "y"), "item_id")
    for name, mult in (("clip", 1), ("other", 2)):
        t = ds.tables[name]
        for k in range(1, len(items)):
            if items[k] in ids:
                np.testing.assert_array_equal(t.values[k], mult * vec[list(ids).index(items[k])])
            else:
                assert not t.present[k]
    assert m["stats"]["coverage"]["clip"] == pytest.approx(
        sum(i in ids for i in items[1:]) / (len(items) - 1))
    with pytest.raises(SchemaError, match="item list"):
        np.save(str(tmp_path / "bad.npy"), vec[:-1])
        converters.convert("z", raw, str(tmp_path / "z"), log=quiet,
                           vector_specs=[f"clip={tmp_path / 'bad.npy'}@{tmp_path / 'v.ids.npy'}"])
    assert not os.path.exists(tmp_path / "z")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".z.")]


def test_parquet_needs_pyarrow_or_works(tmp_path):
    raw = str(tmp_path / "raw")
    make_generic(raw)
    try:
        import pyarrow  # noqa: F401
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        open(os.path.join(raw, "log.parquet"), "wb").write(b"PAR1")
        with pytest.raises(generic.ParquetUnavailable, match="pyarrow"):
            converters.convert("p", raw, str(tmp_path / "p"), log=quiet,
                               generic_options=generic.GenericOptions(interactions=os.path.join(raw, "log.parquet")))
        assert not os.path.exists(tmp_path / "p")
        return
    table = pacsv.read_csv(os.path.join(raw, "interactions.csv"), parse_options=pacsv.ParseOptions(
        invalid_row_handler=lambda row: "skip"))
    pq.write_table(table, os.path.join(raw, "log.parquet"))
    m = converters.convert("p", raw, str(tmp_path / "p"), log=quiet,
                           generic_options=generic.GenericOptions(interactions=os.path.join(raw, "log.parquet")))
    assert m["stats"]["examples"] > 0


# --------------------------------------------------------------------------------------------------- failures
def test_missing_raw_files_cli_message_and_exit_code(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "tf" / "electro"
    r = subprocess.run([sys.executable, "-m", "run.make_data", "--dataset=electro",
                        f"--raw_dir={tmp_path / 'nothing'}", f"--out_dir={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "reviews_Electronics_5.json.gz" in r.stderr and "meta_Electronics.json.gz" in r.stderr
    assert f"python -m run.make_data --dataset=electro --raw_dir={tmp_path / 'nothing'}" in r.stderr
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "tf")
    with pytest.raises(SchemaError, match="reviews_Books_5.json.gz"):
        ensure_dataset("books", str(tmp_path / "tf"))
    with pytest.raises(converters.RawFilesMissing, match="ratings.csv"):
        converters.convert("movielens", str(tmp_path / "nothing"), str(tmp_path / "ml"), log=quiet)
    with pytest.raises(converters.RawFilesMissing, match="interactions.csv"):
        converters.convert("whatever", str(tmp_path / "nothing"), str(tmp_path / "w"), log=quiet)
    assert sorted(os.listdir(tmp_path)) == []


def test_no_partial_output_after_failure(tmp_path, monkeypatch):
    raw = str(tmp_path / "raw")
    make_generic(raw)
    out = str(tmp_path / "data" / "g")
    good = converters.convert("g", raw, out, log=quiet)
    before = sorted(os.listdir(out))
    calls = {"n": 0}
    real = build._chunk_examples

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "_chunk_examples", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        converters.convert("g", raw, out, overrides={"chunk_events": 10, "seed": 5}, log=quiet)
    assert calls["n"] == 2
    assert sorted(os.listdir(out)) == before  # the older complete dataset is untouched
    assert read_manifest(out)["stats"]["examples"] == good["stats"]["examples"]
    assert os.listdir(tmp_path / "data") == ["g"]  # no temp dir left behind
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        converters.convert("g", raw, str(tmp_path / "data" / "new"), overrides={"chunk_events": 10}, log=quiet)
    assert os.listdir(tmp_path / "data") == ["g"]


def test_text_embedding(tmp_path, monkeypatch):
    raw = str(tmp_path / "raw")
    fx = make_generic(raw)
    os.remove(os.path.join(raw, "text_vectors.npy"))
    out = str(tmp_path / "e")
    converters.convert("e", raw, out, log=quiet)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(text_embed.TextEmbedError, match="not installed"):
        text_embed.load_encoder("/no/such/model")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"

    class FakeEncoder:
        def encode(self, texts, batch_size=32, **kwargs):
            return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], np.float32)

    m = text_embed.embed_dataset(out, FakeEncoder(), modality="text", log=quiet)
    assert m["schema"]["modalities"] == {"image": 4, "text": 3}
    ds = Dataset(out)
    t = ds.tables["text"]
    items = converters.load_id_map(out, "item_id")
    for k in range(1, len(items)):
        txt = fx["texts"].get(items[k])
        if txt:
            np.testing.assert_array_equal(t.values[k], [len(txt), sum(map(ord, txt)) % 97, 1.0])
        else:
            assert not t.present[k] and not t.values[k].any()
    assert m["stats"]["items_with_vector"]["text"] == sum(bool(fx["texts"].get(i)) for i in items[1:])
    feats, _ = next(iter(ds.tf_dataset("valid", 16)))
    assert feats["hist_item_id"].shape == (16, SEQ)


def test_cli_prints_stats(tmp_path):
    raw = str(tmp_path / "raw")
    fx = make_generic(raw, prefix="Shop.")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "shop"
    r = subprocess.run([sys.executable, "-m", "run.make_data", "--dataset=shop", f"--raw_dir={raw}",
                        f"--out_dir={out}", "--num_shards=2", "--seq_len=8", "--table_dtype=float16"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    exp, _, kept_items, kept_users = expected_din(fx["events"], seq_len=8)
    n = 2 * sum(len(v) for v in exp.values())
    assert f"stats: users {len(kept_users)}, items {len(kept_items)}" in r.stdout
    assert f"examples {n} (positives {n // 2}, positive rate 0.5000)" in r.stdout
    assert "vector coverage: image" in r.stdout and "interactions.csv: " in r.stdout
    m = read_manifest(str(out))
    assert m["schema"]["seq_len"] == 8 and m["tables"]["text"]["dtype"] == "float16"
    c = read_split(str(out), "train")
    assert c["hist_item_id"].shape[1] == 8 and c["hist_len"].max() <= 8


# ------------------------------------------------------------------------------------ hostile use (issue #15)
def _listing(root):
    """Every path under root with the bytes of each file: what 'nothing touched' compares."""
    out = {}
    for d, _, files in os.walk(root):
        out[os.path.relpath(d, root)] = None
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
    return out


def test_conversion_never_replaces_a_directory_that_is_not_this_dataset(tmp_path):
    """Issue #15.1: --out_dir naming a folder with other files, or another dataset, is refused before anything is
    read or written (the converters and the synthetic generator alike; run.make_data exits 2 with one line). A
    dataset of the same name, an empty folder and a new path are written."""
    raw = str(tmp_path / "raw")
    make_generic(raw)
    work = tmp_path / "work"
    (work / "code").mkdir(parents=True)
    (work / "code" / "notes.txt").write_text("keep me")
    converters.convert("other", raw, str(work / "other"), log=quiet)
    before = _listing(work)
    for target, name, words in [(work, "mine", "exists and is not a converted dataset (no manifest.json; it holds "
                                 "code, other)"),
                                (work / "other", "mine", "holds dataset 'other' (source generic:interactions.csv), "
                                 "not 'mine'")]:
        with pytest.raises(converters.OutputDirRefused, match=re.escape(f"{target}: {words}")):
            converters.convert(name, raw, str(target), log=quiet)
        assert _listing(work) == before
    with pytest.raises(converters.OutputDirRefused, match=re.escape(f"{work / 'other'}: holds dataset 'other' "
                                                                    f"(source generic:interactions.csv), not 'other' "
                                                                    f"from synthetic")):
        synthetic.build(str(work / "other"), synthetic.SyntheticConfig(num_users=20, num_items=30), log=quiet)
    assert _listing(work) == before
    r = subprocess.run([sys.executable, "-m", "run.make_data", "--dataset=mine", f"--raw_dir={raw}",
                        f"--out_dir={work / 'code'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == (f"make_data: {work / 'code'}: exists and is not a converted dataset (no "
                                              f"manifest.json; it holds notes.txt); a conversion replaces its output "
                                              f"directory as a whole, so it writes only into a new or empty "
                                              f"directory or over a dataset of the same name: choose another "
                                              f"--out_dir\n"), r.stderr
    assert _listing(work) == before
    (work / "empty").mkdir()
    for name, target in (("other", work / "other"), ("mine", work / "empty"), ("mine", work / "new" / "mine")):
        assert converters.convert(name, raw, str(target), log=quiet)["name"] == name
        assert read_manifest(str(target))["name"] == name
    assert (work / "code" / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(work)) == ["code", "empty", "new", "other"]  # no lock, staging or spill left behind


def test_second_conversion_into_one_output_is_refused_and_a_dead_holders_lock_taken_over(tmp_path, monkeypatch):
    """Issue #15.2: while one conversion holds the output (its lock names its pid), a second one is refused before
    it reads anything (run.make_data: exit 2, naming the pid); once the holder is dead its stale lock is taken
    over, and the conversion holds it until its output is in place."""
    raw = str(tmp_path / "raw")
    make_generic(raw)
    out = tmp_path / "data" / "g"
    lock = os.path.join(tmp_path, "data", ".g.lock")
    with lock_holder(out) as holder:
        with pytest.raises(LockHeld, match=re.escape(f"{out} is in use by a test holder (pid {holder.pid} on ")):
            converters.convert("g", raw, str(out), log=quiet)
        r = subprocess.run([sys.executable, "-m", "run.make_data", "--dataset=g", f"--raw_dir={raw}",
                            f"--out_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith(f"make_data: {out} is in use by a test holder (pid "
                                                         f"{holder.pid} on "), r.stderr
        assert r.stderr.endswith(f"wait for it to finish (lock {lock})\n") and r.stderr.count("\n") == 1
        assert os.listdir(tmp_path / "data") == [".g.lock"]
    seen = []
    monkeypatch.setattr(build, "_PARTITION_DONE_HOOK", lambda p: seen.append(json.load(open(lock))["pid"]))
    logs = []
    m = converters.convert("g", raw, str(out), overrides={"seed": 1}, log=logs.append,
                           write=converters.WriteConfig(partition_events=40, num_shards=2))
    assert any(f"took over the lock of a test holder (pid {holder.pid}" in line for line in logs), logs
    assert len(seen) > 1 and set(seen) == {os.getpid()}
    assert sorted(os.listdir(tmp_path / "data")) == ["g"] and read_manifest(str(out))["stats"] == m["stats"]


def test_hostile_raw_files_get_clear_messages(tmp_path):
    """Issue #15.9: a UTF-8 byte-order mark before the header is read as such; non-numeric times, a file that is
    not .npy, complex vectors and NUL bytes in ids are refused or counted with the reason."""
    raw = tmp_path / "raw"
    fx = make_generic(str(raw))
    text = (raw / "interactions.csv").read_text()
    (raw / "interactions.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8"
    exp, _, _, kept_users = expected_din(fx["events"])
    assert converters.convert("bom", str(raw), str(tmp_path / "bom"), log=quiet)["stats"]["users"] == len(kept_users)

    lines = text.splitlines()
    (raw / "interactions.csv").write_text("\n".join([lines[0]] + [re.sub(r",(\d+)$", r",t\1", x)
                                                                  for x in lines[1:]]) + "\n")
    first = lines[1].rsplit(",", 1)[1]
    with pytest.raises(converters.ConversionError, match=re.escape(
            f"dataset 'times': the raw files hold no valid interaction (interactions.csv: {len(lines) - 1} malformed "
            f"line(s), e.g. line 2: time value 't{first}' is not numeric, line 3: ")):
        converters.convert("times", str(raw), str(tmp_path / "times"), log=quiet)

    (raw / "interactions.csv").write_text(text.replace("u3,", "u\x003,", 2))
    vectors = np.load(raw / "text_vectors.npy")
    for content, words in ((b"row,text\n0,1.0\n", "not a .npy file (it does not start with numpy's .npy header); "
                            "vectors for modality 'text' must be saved with numpy.save"),
                           (vectors.astype(np.complex64), "vectors for modality 'text' must be a real-valued (integer "
                            "or float) [items, dim] array, got complex64 (32, 6)")):
        with open(raw / "text_vectors.npy", "wb") as f:
            f.write(content) if isinstance(content, bytes) else np.save(f, content)
        with pytest.raises(SchemaError, match=re.escape(f"{raw / 'text_vectors.npy'}: {words}")):
            converters.convert("nul", str(raw), str(tmp_path / "nul"), log=quiet)
    np.save(raw / "text_vectors.npy", vectors)
    m = converters.convert("nul", str(raw), str(tmp_path / "nul"), log=quiet)
    nul_lines = [n + 1 for n, x in enumerate(text.replace("u3,", "u\x003,", 2).splitlines()) if "\x00" in x]
    assert m["stats"]["malformed_lines"]["interactions.csv"] == 3 + 2 and len(nul_lines) == 2
    assert f"line {nul_lines[0]}: user or item id contains a NUL byte" in json.dumps(m["stats"])
    assert "\x00" not in (tmp_path / "nul" / "user_map.tsv").read_text()


def _signal_state(pid: int) -> str:
    """SigPnd/ShdPnd/SigBlk/SigIgn/SigCgt of every thread of process `pid` (Linux /proc). The Ctrl-C test below hung
    in three full suite runs with its child asleep in the partition hook, the SIGINT neither handled nor raised; these
    lines say whether it was ignored, blocked or pending, and in which thread."""
    lines = []
    for task in sorted(glob.glob(f"/proc/{pid}/task/*")):
        try:
            with open(os.path.join(task, "status")) as f:
                st = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
        except OSError:
            continue
        lines.append(f"{os.path.basename(task)} {st.get('Name', '?').strip()}: " + " ".join(
            f"{k}={st.get(k, '?').strip()}" for k in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")))
    return "\n".join(lines)


def test_ctrl_c_during_conversion_says_what_was_kept(tmp_path):
    """Issue #15.12: Ctrl-C (SIGINT) while a restartable conversion writes its partitions: exit code 130 and one
    line naming what was kept and how to resume, no traceback; the same command then resumes."""
    raw = str(tmp_path / "raw")
    make_generic(raw)
    out = tmp_path / "g"
    argv = ["run.make_data", "--dataset=g", f"--raw_dir={raw}", f"--out_dir={out}", "--partition_events=40"]
    # The child starts from Python's own SIGINT handling whatever this pytest worker passes on (a handler, a blocked
    # mask), and prints what it inherited: see _signal_state for why.
    code = ("import faulthandler, runpy, signal, sys, time; from mmctr_tf.data.converters import build; "
            "print('inherited SIGINT handler', signal.getsignal(signal.SIGINT), 'blocked', "
            "sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), flush=True); "
            "signal.signal(signal.SIGINT, signal.default_int_handler); "
            "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
            "faulthandler.register(signal.SIGUSR1); "
            "build._PARTITION_DONE_HOOK = lambda p: (print('partition', p, flush=True), time.sleep(60)); "
            f"sys.argv = {argv!r}; runpy.run_module('run.make_data', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    try:
        while not seen or seen[-1] != "partition 0":
            seen.append(proc.stdout.readline().strip())
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # seen in three full suite runs, never alone: say where and why it hung
            state = _signal_state(proc.pid)
            proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack to stderr
            time.sleep(2)
            proc.kill()
            mask = sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))
            pytest.fail(f"no exit 60 s after SIGINT. Its first lines: {seen[:3]}; this worker's SIGINT handler "
                        f"{signal.getsignal(signal.SIGINT)}, blocked {mask}; the child's signal masks per thread "
                        f"(hex, bit 1 = SIGINT):\n{state}\nits stacks:\n"
                        f"{proc.communicate()[1][-6000:]}")
    finally:
        proc.kill()
    partial = tmp_path / ".g.partial"
    assert proc.returncode == 130 and stderr == (f"make_data: interrupted; 1 finished partition(s) kept in {partial}; "
                                                 f"run the same command again to resume (--noresume starts over)\n")
    assert sorted(os.listdir(tmp_path)) == [".g.partial", "raw"]
    logs = []  # the same conversion as run.make_data's defaults with --partition_events=40
    converters.convert("g", raw, str(out), overrides={"seed": 0}, log=logs.append,
                       write=converters.WriteConfig(num_shards=4, compression="GZIP", partition_events=40, resume=True))
    assert any("resuming: 1 of " in line for line in logs), logs
    assert sorted(os.listdir(tmp_path)) == ["g", "raw"]


def test_manifest_vocabulary_is_checked_against_the_written_ids(tmp_path):
    """Issue #15.10 (conversion side): each split records the largest id written per field, and a manifest whose
    vocabulary does not cover them is not written (nor read, see test_fuzz)."""
    raw = str(tmp_path / "raw")
    make_generic(raw)
    out = str(tmp_path / "g")
    m = converters.convert("g", raw, out, log=quiet)
    cols = read_split(out, "train")
    assert m["splits"]["train"]["max_id"] == {k: int(v.max()) for k, v in cols.items() if k.endswith("_id")}
    top = m["splits"]["train"]["max_id"]["item_id"]
    m["schema"]["vocab"]["item_id"] = top  # ids 0..top-1
    with pytest.raises(SchemaError, match=re.escape(f"{out}/manifest.json: split 'train' holds item_id ids up to "
                                                    f"{top}, but the vocabulary of 'item_id' has {top} rows")):
        write_manifest(out, m)


# --------------------------------------------------------------------------------------------------- shared data
needs_scientific = pytest.mark.skipif(
    not os.path.exists(os.path.join(SCIENTIFIC, "interactions.csv")),
    reason=f"shared real data not present at {SCIENTIFIC} (amazon-scientific)")
needs_s3rec = pytest.mark.skipif(
    not os.path.exists(os.path.join(S3REC, "Beauty.interactions.csv")),
    reason=f"shared real data not present at {S3REC} (amazon-s3rec)")


@needs_scientific
def test_shared_scientific(tmp_path):
    out = str(tmp_path / "scientific")
    m = converters.convert("scientific", SCIENTIFIC, out, log=quiet)
    with open(os.path.join(SCIENTIFIC, "interactions.csv")) as f:
        events = [(r["user_id"], r["item_id"], int(r["seq_pos"])) for r in csv.DictReader(f)]
    with open(os.path.join(SCIENTIFIC, "items.csv")) as f:
        item_rows = list(csv.DictReader(f))
    per_user = collections.Counter(u for u, _, _ in events)
    kept = {u for u, n in per_user.items() if n >= 5}
    n_train = sum(min(n, 50) - 3 for u, n in per_user.items() if u in kept)
    st = m["stats"]
    assert st["users"] == len(kept)
    assert m["splits"]["train"]["examples"] == 2 * n_train
    assert m["splits"]["valid"]["examples"] == m["splits"]["test"]["examples"] == 2 * len(kept)
    rx = re.compile(r"Industrial & Scientific ([^.]+)\.")
    used = {i for u, i, _ in events if u in kept}
    cats = {rx.findall(r["text"])[-1].strip() for r in item_rows if r["item_id"] in used and rx.findall(r["text"])}
    assert "/>" not in cats
    assert st["items"] == len(used) and st["categories"] == len(cats)
    assert m["schema"]["modalities"] == {"image": 512, "text": 512}
    assert st["coverage"] == {"image": 1.0, "text": 1.0}
    ds = Dataset(out)
    items = converters.load_id_map(out, "item_id")
    row_of = {r["item_id"]: int(r["row"]) for r in item_rows}
    tv = np.load(os.path.join(SCIENTIFIC, "text_vectors.npy"), mmap_mode="r")
    iv = np.load(os.path.join(SCIENTIFIC, "image_vectors.npy"), mmap_mode="r")
    for k in (1, 2, len(items) // 2, len(items) - 1):
        np.testing.assert_array_equal(ds.tables["text"].values[k], tv[row_of[items[k]]])
        np.testing.assert_array_equal(ds.tables["image"].values[k], iv[row_of[items[k]]])
    feats, label = next(iter(ds.tf_dataset("train", 64, shuffle=True, seed=0)))
    assert feats["hist_item_id"].shape == (64, SEQ) and label.shape == (64,)
    # the test target of each user is their last event (by seq_pos); its history the events before it
    last = {}
    for u, i, p in events:
        if u in kept and (u not in last or p > last[u][0]):
            last[u] = (p, i)
    c = read_split(out, "test")
    users = converters.load_id_map(out, "user_id")
    pos = c["label"] == 1
    assert {(users[u], items[i]) for u, i in zip(c["user_id"][pos], c["item_id"][pos])} == \
        {(u, v[1]) for u, v in last.items()}


@needs_s3rec
def test_shared_s3rec_subset(tmp_path):
    # The first 1500 users of Beauty (full set: `--dataset=beauty`, ~30 s, see docs/datasets.md).
    src = os.path.join(S3REC, "Beauty.interactions.csv")
    sub = str(tmp_path / "Beauty.interactions.csv")
    with open(src) as f, open(sub, "w") as g:
        rows = list(csv.DictReader(f))
        users = sorted({r["user_id"] for r in rows}, key=int)[:1500]
        keep = set(users)
        g.write("user_id,item_id,seq_pos\n")
        events = []
        for r in rows:
            if r["user_id"] in keep:
                g.write(f"{r['user_id']},{r['item_id']},{r['seq_pos']}\n")
                events.append((r["user_id"], r["item_id"], int(r["seq_pos"])))
    with open(os.path.join(S3REC, "Beauty.items.csv")) as f:
        first_attr = {r["item_id"]: r["attribute_ids"].split()[0] for r in csv.DictReader(f)
                      if r["attribute_ids"].split()}
    out = str(tmp_path / "beauty")
    m = converters.convert("beauty", S3REC, out, log=quiet,
                           generic_options=generic.GenericOptions(interactions=sub))
    exp, full_items, kept_items, kept_users = expected_din(events)
    st = m["stats"]
    assert st["users"] == len(kept_users) and st["items"] == len(kept_items)
    assert st["categories"] == len({first_attr[i] for i in kept_items if i in first_attr})
    assert m["schema"]["modalities"] == {} and st["coverage"] == {}
    for split in exp:
        assert m["splits"][split]["examples"] == 2 * len(exp[split])
    maps = id_maps(out)
    assert maps["item_id"][1:] == sorted(kept_items, key=int)  # numeric raw ids keep their order
    c = read_split(out, "test")
    assert all(maps["cate_id"][ce] == first_attr[maps["item_id"][it]] for it, ce in zip(c["item_id"], c["cate_id"]))


def _labelled_log(raw, column, values_of):
    """A log of 6 users x 8 impressions with a label column: values_of(u, k) is the value of impression k."""
    os.makedirs(raw, exist_ok=True)
    rows = []
    with open(os.path.join(raw, "interactions.csv"), "w") as f:
        f.write(f"user_id,item_id,ts,{column}\n")
        for u in range(6):
            for k in range(8):
                item = f"i{(3 * u + k) % 11}"
                v = values_of(u, k)
                rows.append((f"u{u}", item, k, v))
                f.write(f"u{u},{item},{k},{v}\n")
    return rows


def test_generic_log_with_labels_keeps_real_non_clicks(tmp_path):
    raw = str(tmp_path / "raw")
    rows = _labelled_log(raw, "rating", lambda u, k: (u + k) % 5 + 1)  # 1-5 ratings
    msgs = []
    with pytest.raises(ConversionError, match="--label_threshold"):  # ratings are not 0/1: a threshold is needed
        converters.convert("lab", raw, str(tmp_path / "lab"), log=msgs.append)
    assert not os.path.exists(tmp_path / "lab")
    opts = generic.GenericOptions(label_threshold=3)
    m = converters.convert("lab", raw, str(tmp_path / "lab"), generic_options=opts, log=msgs.append)
    clicks = sum(v > 3 for *_, v in rows)
    assert f"{clicks} clicks, {len(rows) - clicks} non-clicks" in "\n".join(msgs)
    assert m["protocol"]["split"] == "fraction" and m["protocol"]["negatives"] == "none"
    got = {s: read_split(str(tmp_path / "lab"), s) for s in ("train", "valid", "test")}
    users, items = converters.load_id_map(str(tmp_path / "lab"), "user_id"), id_maps(str(tmp_path / "lab"))["item_id"]
    label_of = {(u, i, t): float(v > 3) for u, i, t, v in rows}
    n = 0
    for s, cols in got.items():
        for k in range(len(cols["label"])):
            u, i = users[cols["user_id"][k]], items[cols["item_id"][k]]
            # each example's label is its row's (no sampled negative); its history holds only earlier clicks
            labels = [lab for (uu, ii, _), lab in label_of.items() if uu == u and ii == i]
            assert cols["label"][k] in labels
            hist = [items[h] for h in cols["hist_item_id"][k][:cols["hist_len"][k]]]
            assert all(any(label_of.get((u, h, t)) == 1.0 for t in range(8)) for h in hist)
            n += 1
    assert n == len(rows)  # every impression is one example, none sampled
    # 0/1 labels need no threshold
    raw01 = str(tmp_path / "raw01")
    rows01 = _labelled_log(raw01, "click", lambda u, k: int((u * k) % 3 == 0))
    m01 = converters.convert("lab01", raw01, str(tmp_path / "lab01"), log=quiet)
    assert m01["stats"]["positives"] == sum(v for *_, v in rows01)
    # a log without a category column: 0 categories in the summary's header and its stats line alike (the category
    # vocabulary still has 2 rows, the minimum of a schema)
    assert m01["stats"]["categories"] == 0 and m01["schema"]["vocab"]["cate_id"] == 2
    lines = []
    print_summary(m01, str(tmp_path / "lab01"), log=lines.append)
    counts = re.findall(r"categories (\d+)", "\n".join(lines))
    assert counts == ["0", "0"], lines


def test_generic_auto_vectors_use_an_item_list_beside_them_and_cut_events_are_warned(tmp_path):
    raw = str(tmp_path / "raw")
    fx = make_generic(raw)
    ids = [f"item{k}" for k in range(0, 30, 3)]  # rows of the vector file follow this list, not items.csv
    vec = np.arange(len(ids) * 5, dtype=np.float32).reshape(-1, 5) + 1
    np.save(os.path.join(raw, "text_vectors.npy"), vec)
    with open(os.path.join(raw, "text_vectors.items.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    msgs = []
    out = str(tmp_path / "auto")
    m = converters.convert("auto", raw, out, overrides={"max_behaviors": 6}, log=msgs.append)
    items = converters.load_id_map(out, "item_id")
    t = Dataset(out).tables["text"]
    for k in range(1, len(items)):
        if items[k] in ids:
            np.testing.assert_array_equal(t.values[k], vec[ids.index(items[k])])
        else:
            assert not t.present[k]
    assert m["tables"]["image"]["dim"] == fx["image"].shape[1]  # no list beside it: items.csv rows, as before
    per_user = collections.Counter(u for u, _, _ in fx["events"])
    cut = sum(max(0, c - 6) for c in per_user.values() if c >= 5)
    assert cut > 0 and m["stats"]["events_beyond_max_behaviors"] == cut
    assert any("warning: only the 6 most recent events" in x and f"{cut} of" in x and "--max_behaviors=0" in x
               for x in msgs)
