"""Serving with quantised frozen tables (SPEC §1; dmae.md "Online Deployment": quantising the multimodal tables cut
memory by 40% with a minor AUC change), measured: `python -m run.quantize --run_dirs=...`.

The frozen vector tables never train, so their storage is a serving choice: `with_table_storage` rebuilds a trained
model with its tables stored float32, float16 or int8 (symmetric per-row scale, `mmctr_tf.data.tables.quantize`)
and every other weight copied unchanged. `storage_rows` evaluates each run with each storage on a split (exact
AUC / Logloss) and exports it once per model and storage as a TF Serving SavedModel (verified against the Keras
model) to measure its size on disk.
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Sequence

import numpy as np

STORAGES = ("float32", "float16", "int8")


def with_table_storage(model, storage: str):
    """A copy of the trained `model` whose frozen tables are stored as `storage`; all other weights are equal."""
    from mmctr_tf.models import build_model

    config = model.get_config()
    hparams = {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype", "schema")}
    new = build_model(model.name, model.schema, **{**hparams, "table_storage": storage})
    skip = [{id(w) for t in m.tables.values() for w in t.weights} for m in (model, new)]
    old_w = [w for w in model.weights if id(w) not in skip[0]]
    new_w = [w for w in new.weights if id(w) not in skip[1]]
    if [tuple(w.shape) for w in old_w] != [tuple(w.shape) for w in new_w]:
        raise ValueError(f"{model.name}: weights of the rebuilt model do not line up with the trained one")
    for src, dst in zip(old_w, new_w):
        dst.assign(src.numpy())
    new.set_tables({m: t.get_table() for m, t in model.tables.items()})
    return new


def saved_model_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def storage_rows(run_dirs: Sequence[str], split: str = "test", storages: Sequence[str] = STORAGES,
                 log=print) -> List[Dict]:
    """One row per (run, storage): model, run_dir, storage, AUC, Logloss, the tables' bytes in the model, and the
    SavedModel's bytes on disk (exported for the first run of each model)."""
    from mmctr_tf.data.datasets import Dataset
    from mmctr_tf.evaluation.evaluate import evaluate_split
    from mmctr_tf.export.saved_model import export_model
    from mmctr_tf.training.trainer import load_run

    rows, sizes = [], {}
    for run_dir in run_dirs:
        trained, record = load_run(run_dir)
        if not trained.tables:
            raise ValueError(f"{run_dir}: model '{trained.name}' has no frozen vector tables to quantise")
        data = Dataset(record["data_path"])
        feats, _ = next(iter(data.tf_dataset(split, 256)))
        batch = {k: v.numpy() for k, v in feats.items()}
        for storage in storages:
            model = with_table_storage(trained, storage)
            metrics = evaluate_split(model, data, split, click_buckets=None)  # AUC and Logloss only
            key = (trained.name, storage)
            if key not in sizes:
                with tempfile.TemporaryDirectory() as tmp:
                    sizes[key] = saved_model_bytes(export_model(model, tmp, verify_batch=batch, log=lambda *a: None))
            table_bytes = sum(t.get_table().nbytes for t in model.tables.values())
            rows.append({"model": trained.name, "run_dir": run_dir, "storage": storage, "auc": metrics["auc"],
                         "logloss": metrics["logloss"], "table_bytes": table_bytes, "saved_model_bytes": sizes[key]})
            log(f"[quantize] {run_dir} {storage}: AUC {metrics['auc']:.4f} logloss {metrics['logloss']:.4f}")
    return rows


def markdown_table(rows: Sequence[Dict], split: str = "test") -> str:
    """Mean ± std over each model's runs; differences to float32 are paired by run."""
    def pm(v):
        return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"

    out = [f"| model | tables | runs | {split} AUC | Logloss | AUC - float32 | Logloss - float32 | tables MB | "
           "SavedModel MB | SavedModel vs float32 |", "|" + "---|" * 10]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = {r["run_dir"]: r for r in mine if r["storage"] == "float32"}
        for storage in dict.fromkeys(r["storage"] for r in mine):
            rs = [r for r in mine if r["storage"] == storage]
            d_auc = [r["auc"] - base[r["run_dir"]]["auc"] for r in rs if r["run_dir"] in base]
            d_ll = [r["logloss"] - base[r["run_dir"]]["logloss"] for r in rs if r["run_dir"] in base]
            size = rs[0]["saved_model_bytes"]
            base_size = next((r["saved_model_bytes"] for r in base.values()), None)
            out.append(f"| {model} | {storage} | {len(rs)} | {pm([r['auc'] for r in rs])} | "
                       f"{pm([r['logloss'] for r in rs])} | {pm(d_auc) if d_auc else '-'} | "
                       f"{pm(d_ll) if d_ll else '-'} | {rs[0]['table_bytes'] / 1e6:.2f} | {size / 1e6:.2f} | "
                       f"{f'{size / base_size - 1:+.1%}' if base_size else '-'} |")
    return "\n".join(out)
