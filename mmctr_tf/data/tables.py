"""Frozen item-vector tables, one per modality (SPEC §1).

Row i holds the vector of item id i; row 0 is padding. Items without a vector for a modality have a zero row and
`present[i] = False` (the missing flag), never random noise.

On disk, under `<dataset>/tables/`:
  `<modality>.values.npy`   float32 [V, d], float16 [V, d] or int8 [V, d]
  `<modality>.scale.npy`    float32 [V] (int8 only): row i = values[i] * scale[i]
  `<modality>.present.npy`  bool [V]
The manifest's `tables` entry records dim, rows, dtype and the number of present rows; `load_table` checks all of
them, and NaN/Inf, against the files, and names the file and the field on any mismatch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional

import numpy as np

from mmctr_tf.data.schema import SchemaError

DTYPES = ("float32", "float16", "int8")


@dataclasses.dataclass
class VectorTable:
    values: np.ndarray  # [V, d] float32 | float16 | int8
    present: np.ndarray  # [V] bool
    scale: Optional[np.ndarray] = None  # [V] float32, int8 only

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.values.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored table (values + scale + present), as held in memory and in the `.npy` payloads."""
        return int(self.values.nbytes + self.present.nbytes + (self.scale.nbytes if self.scale is not None else 0))

    def dequantize(self) -> np.ndarray:
        """float32 [V, d] view of the table."""
        if self.values.dtype == np.int8:
            return self.values.astype(np.float32) * self.scale[:, None]
        return self.values.astype(np.float32)


def quantize(vectors: np.ndarray, present: Optional[np.ndarray] = None, dtype: str = "float32",
             block: int = 65536) -> VectorTable:
    """Builds a table from float vectors [V, d] (row 0 must be padding).

    int8 uses symmetric per-row scaling: scale = max|v| / 127, q = round(v / scale). Work is done in blocks of
    `block` rows, so quantizing a large table (e.g. 2M x 128) needs little memory beyond its input and output.
    """
    if dtype not in DTYPES:
        raise SchemaError(f"vector table: unknown dtype '{dtype}' (choose one of {', '.join(DTYPES)})")
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise SchemaError(f"vector table: expected a [rows, dim] array, got shape {vectors.shape}")
    V, d = vectors.shape
    given = present is not None
    present = np.asarray(present, dtype=bool).copy() if given else np.zeros(V, bool)
    out = np.empty((V, d), np.int8 if dtype == "int8" else np.dtype(dtype))
    scale = np.ones(V, np.float32) if dtype == "int8" else None
    for s in range(0, V, block):
        blk = np.asarray(vectors[s:s + block], dtype=np.float32)
        finite = np.isfinite(blk)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise SchemaError(f"vector table: non-finite value at row {s + bad[0]}, column {bad[1]}")
        if not given:
            present[s:s + block] = np.any(blk != 0, axis=1)
        if s == 0:
            present[0] = False
        blk = np.where(present[s:s + block, None], blk, np.float32(0))
        if dtype == "int8":
            amax = np.max(np.abs(blk), axis=1)
            sc = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            out[s:s + block] = np.clip(np.rint(blk / sc[:, None]), -127, 127).astype(np.int8)
            scale[s:s + block] = sc
        else:
            out[s:s + block] = blk
    present[:1] = False
    return VectorTable(out, present, scale)


def _paths(table_dir: str, modality: str) -> Dict[str, str]:
    return {k: os.path.join(table_dir, f"{modality}.{k}.npy") for k in ("values", "scale", "present")}


def save_table(table_dir: str, modality: str, table: VectorTable) -> dict:
    """Writes the table files (each atomically) and returns the manifest entry describing them."""
    os.makedirs(table_dir, exist_ok=True)
    paths = _paths(table_dir, modality)
    parts = {"values": table.values, "present": table.present}
    if table.scale is not None:
        parts["scale"] = table.scale
    for key, arr in parts.items():
        tmp = paths[key] + ".tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, paths[key])
    return {
        "dim": table.dim,
        "rows": table.rows,
        "dtype": table.dtype,
        "present": int(table.present.sum()),
        "files": sorted(os.path.basename(paths[k]) for k in parts),
    }


def load_table(table_dir: str, modality: str, entry: dict, mmap: bool = False) -> VectorTable:
    """Loads one modality's table and validates it against its manifest entry (shape, dtype, rows, finiteness)."""
    paths = _paths(table_dir, modality)
    mode = "r" if mmap else None

    def _load(key):
        path = paths[key]
        if not os.path.exists(path):
            raise SchemaError(f"{path}: missing file for table '{modality}' (field '{key}')")
        try:
            return np.load(path, mmap_mode=mode, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise SchemaError(f"{path}: cannot read table '{modality}' field '{key}': {e}") from None

    values = _load("values")
    present = _load("present")
    scale = _load("scale") if entry.get("dtype") == "int8" else None
    vpath = paths["values"]
    if values.ndim != 2:
        raise SchemaError(f"{vpath}: table '{modality}' values must be 2-D, got shape {values.shape}")
    if str(values.dtype) != entry.get("dtype"):
        raise SchemaError(f"{vpath}: table '{modality}' field 'dtype' is {values.dtype}, "
                          f"manifest says {entry.get('dtype')}")
    if values.shape[1] != entry.get("dim"):
        raise SchemaError(f"{vpath}: table '{modality}' field 'dim' is {values.shape[1]}, "
                          f"manifest says {entry.get('dim')}")
    if values.shape[0] != entry.get("rows"):
        raise SchemaError(f"{vpath}: table '{modality}' field 'rows' is {values.shape[0]}, "
                          f"manifest says {entry.get('rows')}")
    if present.shape != (values.shape[0],) or present.dtype != np.bool_:
        raise SchemaError(f"{paths['present']}: table '{modality}' field 'present' must be bool [{values.shape[0]}], "
                          f"got {present.dtype} {present.shape}")
    if scale is not None and (scale.shape != (values.shape[0],) or not np.all(np.isfinite(scale))):
        raise SchemaError(f"{paths['scale']}: table '{modality}' field 'scale' must be finite float "
                          f"[{values.shape[0]}]")
    if values.dtype != np.int8:
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            raise SchemaError(f"{vpath}: table '{modality}' has NaN/Inf in row {row} (item id {row})")
    return VectorTable(values, present, scale)


def load_tables(data_dir: str, manifest: dict, mmap: bool = False) -> Dict[str, VectorTable]:
    """All tables of a dataset, checked against the schema's modalities and item vocabulary."""
    schema = manifest["schema_obj"]
    entries = manifest.get("tables", {})
    tables = {}
    for modality, dim in schema.modalities.items():
        if modality not in entries:
            raise SchemaError(f"{os.path.join(data_dir, 'manifest.json')}: schema lists modality '{modality}' "
                              f"but field 'tables.{modality}' is missing")
        entry = entries[modality]
        table = load_table(os.path.join(data_dir, "tables"), modality, entry, mmap=mmap)
        if table.dim != dim:
            raise SchemaError(f"{data_dir}: table '{modality}' has dim {table.dim}, schema says {dim}")
        if table.rows != schema.vocab["item_id"]:
            raise SchemaError(f"{data_dir}: table '{modality}' has {table.rows} rows, item vocab is "
                              f"{schema.vocab['item_id']}")
        tables[modality] = table
    return tables
