"""Serving with quantised frozen tables (mmctr_tf/evaluation/quantize.py, run/quantize.py): a trained run's weights
with float32 / float16 / int8 tables, checked against numpy and the run's own predictions."""

import numpy as np
import pytest

from mmctr_tf.data.datasets import Dataset
from mmctr_tf.evaluation import metrics as M
from mmctr_tf.evaluation.evaluate import predict_split
from mmctr_tf.evaluation.quantize import markdown_table, storage_rows, with_table_storage
from mmctr_tf.training.trainer import TrainConfig, load_run, train

SMALL = {"emb_dim": 4, "dnn_units": [16], "att_units": [8]}


@pytest.mark.slow
def test_same_weights_with_each_table_storage(small_dataset, tmp_path):
    run_dir = str(tmp_path / "mm")
    train(TrainConfig(model="mm_concat", dataset=small_dataset, run_dir=run_dir, epochs=1, steps_per_epoch=2,
                      batch_size=256, verbose=0), SMALL, log=lambda *a: None)
    model, _ = load_run(run_dir)
    data = Dataset(small_dataset)
    ref = predict_split(model, data, "valid")
    rows = storage_rows([run_dir], "valid", log=lambda *a: None)
    assert [r["storage"] for r in rows] == ["float32", "float16", "int8"]
    V, d = data.tables["text"].values.shape
    per_row = {"float32": 4 * d + 1, "float16": 2 * d + 1, "int8": d + 4 + 1}  # values (+ int8 scale) + present
    for row in rows:
        q = with_table_storage(model, row["storage"])
        tables = {id(w) for m in (model, q) for t in m.tables.values() for w in t.weights}
        others = [[w for w in m.weights if id(w) not in tables] for m in (model, q)]
        for a, b in zip(*others):
            np.testing.assert_array_equal(a.numpy(), b.numpy())  # every other weight is the trained one
        for m, table in data.tables.items():
            v, got = table.dequantize(), q.tables[m].get_table()
            assert got.dtype == row["storage"]
            if row["storage"] == "int8":  # symmetric per-row scale s = max|v| / 127: |v - q s| <= s / 2
                assert np.all(np.abs(got.dequantize() - v) <= np.abs(v).max(1, keepdims=True) / 254 + 1e-7)
            else:
                np.testing.assert_array_equal(got.dequantize(), v.astype(row["storage"]).astype(np.float32))
        p = predict_split(q, data, "valid")["prob"]
        assert row["auc"] == pytest.approx(M.auc(ref["label"], p), abs=1e-12)
        assert row["logloss"] == pytest.approx(M.logloss(ref["label"], p), abs=1e-12)
        if row["storage"] == "float32":
            np.testing.assert_array_equal(p, ref["prob"])
        assert row["table_bytes"] == len(data.tables) * V * per_row[row["storage"]]
        assert row["saved_model_bytes"] > row["table_bytes"]
    assert rows[1]["saved_model_bytes"] < rows[0]["saved_model_bytes"]
    table = markdown_table(rows, "valid")
    assert table.count("\n") == 4 and "| mm_concat | int8 | 1 |" in table
