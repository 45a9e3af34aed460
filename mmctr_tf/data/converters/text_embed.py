"""Text vectors for a converted dataset: embed item titles with a LOCAL sentence-embedding model.

Optional dependency: `sentence_transformers`. The model is loaded from a local folder, or by name from the
Hugging Face cache only: HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set before the import, and nothing is
downloaded. Without the package (or the model) the error says so and what to do instead (compute the vectors
elsewhere and pass them to `run.make_data --vectors=text=FILE.npy@ITEMS.txt`).

`embed_dataset` reads `item_text.tsv` (written by the converters from titles / item texts), encodes the texts,
and adds (or replaces) the modality's table in the dataset: items without a text get the missing flag. Table
files are staged in a temp folder, moved into `tables/`, and the manifest (schema modalities, tables, stats) is
rewritten last, atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Optional

import numpy as np

from mmctr_tf.data import tables as tables_lib
from mmctr_tf.data.converters import vectors as vectors_lib
from mmctr_tf.data.converters.output import load_item_texts
from mmctr_tf.data.schema import SchemaError, read_manifest, write_manifest

NOT_INSTALLED = (
    "text vectors need the optional package `sentence-transformers`, which is not installed. Install it "
    "(pip install sentence-transformers) and put a model in a local folder (or the Hugging Face cache) — this "
    "command never downloads anything (HF_HUB_OFFLINE=1). Alternatively compute the vectors elsewhere and pass "
    "them to the converter: python -m run.make_data ... --vectors=text=<vectors.npy>@<item_list.txt> "
    "(row r of the .npy = raw item id on line r of the list).")


class TextEmbedError(SchemaError):
    pass


def load_encoder(model: Optional[str], device: Optional[str] = None):
    """A SentenceTransformer from a local path or the local cache only; clear errors otherwise."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise TextEmbedError(NOT_INSTALLED) from None
    if not model:
        raise TextEmbedError("--model is required: a local folder with a sentence-transformers model, or the name "
                             "of a model already in the Hugging Face cache (nothing is downloaded)")
    try:
        if os.path.isdir(model):
            return SentenceTransformer(model, device=device)
        try:
            return SentenceTransformer(model, device=device, local_files_only=True)
        except TypeError:  # older sentence-transformers without local_files_only
            return SentenceTransformer(model, device=device)
    except Exception as e:  # noqa: BLE001 - report any loader failure with the offline hint
        raise TextEmbedError(f"cannot load the sentence-embedding model '{model}' offline ({type(e).__name__}: "
                             f"{str(e)[:300]}). Give --model=<local folder>, or a model name that is in the "
                             f"local Hugging Face cache; nothing is downloaded.") from None


def encode_texts(encoder, texts, batch_size: int = 128, normalize: bool = False, log=print,
                 chunk: int = 16384) -> np.ndarray:
    out = []
    for s in range(0, len(texts), chunk):
        part = texts[s:s + chunk]
        v = encoder.encode(part, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
                           normalize_embeddings=normalize)
        v = np.asarray(v, dtype=np.float32)
        if v.ndim != 2 or v.shape[0] != len(part):
            raise TextEmbedError(f"encoder returned shape {v.shape} for {len(part)} texts")
        out.append(v)
        if len(texts) > chunk:
            log(f"[embed_text] {min(s + chunk, len(texts))}/{len(texts)} texts")
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


def embed_dataset(data_dir: str, encoder, modality: str = "text", batch_size: int = 128, pca_dim: int = 0,
                  table_dtype: Optional[str] = None, normalize: bool = False, model_name: str = "",
                  log=print) -> dict:
    """Adds a text-vector table (modality `modality`) to a converted dataset; returns the new manifest."""
    t0 = time.time()
    if not modality.isidentifier():
        raise TextEmbedError(f"modality name '{modality}' must be an identifier")
    manifest = read_manifest(data_dir)
    schema = manifest["schema_obj"]
    V = schema.vocab["item_id"]
    texts = load_item_texts(data_dir)
    ids = sorted(i for i in texts if 0 < i < V)
    if not ids:
        raise TextEmbedError(f"{data_dir}: no item has a text to embed")
    log(f"[embed_text] encoding {len(ids)} item texts of {V - 1} items")
    vecs = encode_texts(encoder, [texts[i] for i in ids], batch_size=batch_size, normalize=normalize, log=log)
    table = np.zeros((V, vecs.shape[1]), np.float32)
    filled = np.zeros(V, bool)
    table[ids] = vecs
    filled[ids] = True
    if table_dtype is None:
        dtypes = {e.get("dtype") for e in manifest.get("tables", {}).values()}
        table_dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    staging = tempfile.mkdtemp(prefix=".embed-", dir=data_dir)
    try:
        info = {"source": f"sentence-embedding model {model_name}".strip(), "format": "text-embedding",
                "normalized": bool(normalize), "texts": len(ids)}
        vt, info = vectors_lib.finalize_table(modality, table, filled, info, pca_dim, table_dtype,
                                              tmp_dir=staging, log=log)
        entry = {**tables_lib.save_table(os.path.join(staging, "tables"), modality, vt), **info}
        table_dir = os.path.join(data_dir, "tables")
        os.makedirs(table_dir, exist_ok=True)
        for stale in ("values", "scale", "present"):
            p = os.path.join(table_dir, f"{modality}.{stale}.npy")
            if os.path.exists(p) and f"{modality}.{stale}.npy" not in entry["files"]:
                os.remove(p)
        for fname in os.listdir(os.path.join(staging, "tables")):
            os.replace(os.path.join(staging, "tables", fname), os.path.join(table_dir, fname))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sd = manifest["schema"]
    sd.setdefault("modalities", {})[modality] = vt.dim
    manifest.setdefault("tables", {})[modality] = entry
    stats = manifest.setdefault("stats", {})
    n_items = V - 1
    stats.setdefault("coverage", {})[modality] = float(vt.present.sum() / n_items) if n_items else 0.0
    stats.setdefault("items_with_vector", {})[modality] = int(vt.present.sum())
    manifest.setdefault("embeddings", {})[modality] = {"model": model_name, "seconds": round(time.time() - t0, 2)}
    write_manifest(data_dir, manifest)
    log(f"[embed_text] table '{modality}': {int(vt.present.sum())}/{n_items} items, dim {vt.dim}, {vt.dtype}")
    return read_manifest(data_dir)
