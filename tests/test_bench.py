"""run.bench's vocabulary option: the dataset's ids spread over larger tables (`spread_vocabulary`)."""

import numpy as np
import pytest

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.training.bench import spread_vocabulary
from run.bench import _batches, _vocab


def _pairs(old, new):
    """{old id: set of new ids} over every position of two aligned id arrays."""
    out = {}
    for a, b in zip(np.ravel(old), np.ravel(new)):
        out.setdefault(int(a), set()).add(int(b))
    return out


def test_spread_vocabulary_moves_ids_and_table_rows_and_keeps_the_rest(small_dataset):
    data = Dataset(small_dataset)
    schema, tables, remap = spread_vocabulary(data, 5000, 3000, seed=1)
    assert schema.vocab == {**data.schema.vocab, "user_id": 5001, "item_id": 3001}
    feats, label = next(iter(data.tf_dataset("train", 512)))
    new, new_label = remap(feats, label)
    np.testing.assert_array_equal(new_label, label)
    for name in ("cate_id", "hist_cate_id", "hist_len"):
        np.testing.assert_array_equal(new[name], feats[name])
    items = _pairs(np.concatenate([np.ravel(feats["item_id"]), np.ravel(feats["hist_item_id"])]),
                   np.concatenate([np.ravel(new["item_id"]), np.ravel(new["hist_item_id"])]))
    for ids in (_pairs(feats["user_id"], new["user_id"]), items):
        assert all(len(v) == 1 for v in ids.values())  # a function of the old id
        images = [next(iter(v)) for k, v in ids.items() if k != 0]
        assert len(set(images)) == len(images) and 0 not in images  # injective, never padding
    assert items[0] == {0}  # history padding stays padding
    assert np.max(new["user_id"]) < 5001 and np.max(new["hist_item_id"]) < 3001
    assert np.max(new["user_id"]) > data.schema.vocab["user_id"]  # spread beyond the dataset's own range (seeded)
    for m, t in tables.items():
        old = data.tables[m]
        assert t.rows == 3001 and t.dim == old.dim and t.dtype == old.dtype
        for k, v in items.items():
            (n,) = v
            np.testing.assert_array_equal(t.values[n], old.values[k])
            assert t.present[n] == old.present[k]
        assert t.present.sum() == old.present.sum()  # every other row is absent
    with pytest.raises(ValueError, match="at least as many"):
        spread_vocabulary(data, 10, 3000)


def test_vocab_flag_values():
    assert _vocab("1000000x200000") == (1_000_000, 200_000) and _vocab("data") is None
    with pytest.raises(ValueError, match="USERSxITEMS"):
        _vocab("1000000:200000")


def test_latency_batches_flag_values():
    """An empty --latency_batches (the README's scaling command) measures training only; was refused."""
    assert _batches([]) and _batches(["1", "256"])
    assert not _batches(["1", "0"]) and not _batches(["x"])
