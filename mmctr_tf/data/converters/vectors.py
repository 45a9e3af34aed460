"""User-supplied frozen item vectors -> item-indexed tables (row = item id, row 0 = padding), with optional PCA.

Sources (one per modality):
  * `.npy` [N, d] float array whose row r belongs to raw item `items[r]`. The item list comes from a text file
    (one raw id per line) or a `.npy` array of raw ids, or — for the generic converter — from the rows of the
    items file (its `row` column when present, else line order).
  * McAuley's binary image features (`image_features_<Category>.b`): records of a 10-byte ASCII asin followed
    by 4096 little-endian float32, streamed block by block; a truncated last record is reported, not fatal.

Items of the vocabulary without a (finite, non-zero) vector get `present = False` and a zero row: the missing
flag of SPEC §1, never random noise. Vectors of items outside the vocabulary are ignored (and counted).

PCA (`pca_dim > 0`): fitted on the present rows only — mean and covariance accumulated in float64 blocks, then
numpy SVD of the covariance (the right singular vectors of the centred data); each component's sign is fixed so
that its largest-magnitude loading is positive (deterministic output). Present rows are projected as
(v - mean) @ W; missing rows stay zero. `<modality>.pca.npz` (mean, components) is saved next to the table so
vectors of new items can be projected the same way at serving time.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmctr_tf.data import tables as tables_lib
from mmctr_tf.data.schema import SchemaError

MCAULEY_ASIN_BYTES = 10
MCAULEY_DIM = 4096


@dataclasses.dataclass
class VectorSource:
    modality: str
    path: str
    kind: str = "npy"  # "npy" | "mcauley"
    items: Optional[Sequence[str]] = None  # raw ids aligned with the .npy rows (list of str or byte array)
    items_file: Optional[str] = None  # where `items` comes from (for messages / the manifest)

    def __post_init__(self):
        if self.kind not in ("npy", "mcauley"):
            raise SchemaError(f"vectors: unknown source kind '{self.kind}' for {self.path}")


def parse_vector_specs(specs: Sequence[str]) -> List[VectorSource]:
    """`name=path.npy[@items]` or `name=path.b` (McAuley binary) -> sources; items optional for .npy here."""
    out = []
    seen = set()
    for spec in specs or ():
        spec = spec.strip()
        if not spec:
            continue
        if "=" not in spec:
            raise SchemaError(f"--vectors: '{spec}' is not of the form modality=path.npy[@item_list] or "
                              f"modality=path.b")
        name, rest = spec.split("=", 1)
        name = name.strip()
        if not name.isidentifier():
            raise SchemaError(f"--vectors: modality name '{name}' must be an identifier (e.g. text, image)")
        if name in seen:
            raise SchemaError(f"--vectors: modality '{name}' given twice")
        seen.add(name)
        path, items_file = (rest.rsplit("@", 1) + [None])[:2] if "@" in rest else (rest, None)
        if not os.path.exists(path):
            raise SchemaError(f"--vectors: {path}: no such file (modality '{name}')")
        out.append(VectorSource(name, path, "mcauley") if path.endswith(".b") else npy_source(name, path, items_file))
    return out


def npy_source(name: str, path: str, items_file: Optional[str] = None) -> VectorSource:
    """A `.npy` vector source with its item list: `items_file` if given, else `<path minus .npy>.items.txt` /
    `.items.npy` beside it when present (`items` stays None otherwise: the caller aligns the rows)."""
    src = VectorSource(name, path, "npy", items_file=items_file)
    if items_file is None and path.endswith(".npy"):
        for cand in (path[:-4] + ".items.txt", path[:-4] + ".items.npy"):
            if os.path.exists(cand):
                src.items_file = cand
    if src.items_file:
        src.items = load_item_list(src.items_file)
    return src


NPY_MAGIC = b"\x93NUMPY"


def require_npy(path: str, what: str) -> None:
    """SchemaError unless `path` starts with numpy's .npy magic bytes (numpy's own error for any other file is about
    pickled data, even for a text or CSV file)."""
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise SchemaError(f"{path}: not a .npy file (it does not start with numpy's .npy header); {what} must be "
                          f"saved with numpy.save")


def load_item_list(path: str) -> List[str]:
    """Raw item ids, one per row: a text file (one id per line; first tab/comma field) or a `.npy` of ids."""
    if not os.path.exists(path):
        raise SchemaError(f"{path}: item list not found")
    if path.endswith(".npy"):
        require_npy(path, "an item list")
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise SchemaError(f"{path}: item list must be a .npy of strings or integers ({e})") from None
        if arr.ndim != 1:
            raise SchemaError(f"{path}: item list must be 1-D, got shape {arr.shape}")
        return [x.decode() if isinstance(x, bytes) else str(x) for x in arr.tolist()]
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(line.rstrip("\r\n").split("\t")[0].split(",")[0].strip())
    while out and not out[-1]:
        out.pop()
    return out


def iter_mcauley(path: str, block_records: int = 2048, errors=None):
    """Yields (asins list[str], vectors float32 [n, 4096]) blocks from McAuley's binary image-feature file."""
    rec = MCAULEY_ASIN_BYTES + 4 * MCAULEY_DIM
    dt = np.dtype([("asin", f"S{MCAULEY_ASIN_BYTES}"), ("v", "<f4", (MCAULEY_DIM,))])
    nrec = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(rec * block_records)
            if not buf:
                break
            whole = len(buf) // rec
            if whole:
                arr = np.frombuffer(buf[: whole * rec], dtype=dt)
                asins = [a.decode("ascii", "replace").strip().strip("\x00") for a in arr["asin"]]
                yield asins, arr["v"]
                nrec += whole
            if len(buf) % rec:
                if errors is not None:
                    errors.add(nrec + 1, f"truncated record ({len(buf) % rec} of {rec} bytes) at end of file")
                break
    if errors is not None:
        errors.lines = nrec


def _fill(table: np.ndarray, filled: np.ndarray, ids: np.ndarray, vecs: np.ndarray) -> Tuple[int, int]:
    """Writes rows for ids > 0; returns (written, duplicates)."""
    m = ids > 0
    ids, vecs = ids[m], vecs[m]
    dup = int(filled[ids].sum())
    table[ids] = vecs
    filled[ids] = True
    return int(m.sum()), dup


class _IdLookup:
    """raw item id -> item id (1..V-1, 0 = not in the vocabulary) by binary search over a sorted byte array."""

    def __init__(self, item_raw):
        from mmctr_tf.data.converters.raw_ids import to_bytes_array

        raw = item_raw if isinstance(item_raw, np.ndarray) and item_raw.dtype.kind == "S" else to_bytes_array(item_raw)
        self.order = np.argsort(raw, kind="stable")
        self.sorted = raw[self.order]

    def __call__(self, ids) -> np.ndarray:
        from mmctr_tf.data.converters.raw_ids import to_bytes_array

        q = ids if isinstance(ids, np.ndarray) and ids.dtype.kind == "S" else to_bytes_array(ids)
        if not len(self.sorted) or not len(q):
            return np.zeros(len(q), np.int64)
        pos = np.minimum(np.searchsorted(self.sorted, q), len(self.sorted) - 1)
        return np.where(self.sorted[pos] == q, self.order[pos] + 1, 0).astype(np.int64)


def read_source(src: VectorSource, item_raw: Sequence[str], tmp_dir: Optional[str] = None, log=print):
    """Reads one source into a float32 [V, d] array aligned with the vocabulary (row k = item id k).

    `item_raw[k]` is the raw id of item id k + 1 (a list of str or a byte array)."""
    raw_to_id = _IdLookup(item_raw)
    V = len(item_raw) + 1
    info = {"source": os.path.abspath(src.path), "format": src.kind}
    if src.kind == "npy":
        require_npy(src.path, f"vectors for modality '{src.modality}'")
        try:
            data = np.load(src.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise SchemaError(f"{src.path}: cannot read vectors for modality '{src.modality}': {e}") from None
        if data.ndim != 2 or data.dtype.kind not in "iuf":  # complex values would lose their imaginary part
            raise SchemaError(f"{src.path}: vectors for modality '{src.modality}' must be a real-valued (integer or "
                              f"float) [items, dim] array, got {data.dtype} {data.shape}")
        if src.items is None:
            raise SchemaError(f"{src.path}: no item list aligned with its rows (give modality=path.npy@items.txt, "
                              f"or put {src.path[:-4]}.items.txt beside it)")
        if len(src.items) != data.shape[0]:
            raise SchemaError(f"{src.path}: {data.shape[0]} vector rows but the item list "
                              f"{src.items_file or '(items file)'} has {len(src.items)} entries")
        d = int(data.shape[1])
        table = np.zeros((V, d), np.float32)
        filled = np.zeros(V, bool)
        ids = raw_to_id(src.items)
        written = dup = 0
        for s in range(0, data.shape[0], 65536):
            w, dp = _fill(table, filled, ids[s:s + 65536], np.asarray(data[s:s + 65536], np.float32))
            written, dup = written + w, dup + dp
        info.update(rows_in_file=int(data.shape[0]), unmatched=int((ids == 0).sum()), duplicates=dup)
        if src.items_file:
            info["items_file"] = os.path.abspath(src.items_file)
        return table, filled, info, None
    # McAuley binary: 4096-d, big; buffer in a memmap inside the temp output dir when large.
    d = MCAULEY_DIM
    from mmctr_tf.data.converters.reading import LineErrors

    errors = LineErrors(src.path)
    if tmp_dir is not None and V * d * 4 > (1 << 30):
        buf_path = os.path.join(tmp_dir, f".{src.modality}.buffer.npy")
        table = np.lib.format.open_memmap(buf_path, mode="w+", dtype=np.float32, shape=(V, d))
    else:
        table = np.zeros((V, d), np.float32)
    filled = np.zeros(V, bool)
    unmatched = dup = 0
    for asins, vecs in iter_mcauley(src.path, errors=errors):
        ids = raw_to_id(asins)
        unmatched += int((ids == 0).sum())
        _, dp = _fill(table, filled, ids, vecs)
        dup += dp
    info.update(rows_in_file=errors.lines, unmatched=unmatched, duplicates=dup, malformed=errors.count)
    if errors.count:
        log(f"[vectors] {src.path}: {'; '.join(errors.examples)}")
    return table, filled, info, errors


def pca_fit(table: np.ndarray, present: np.ndarray, dim: int, block: int = 65536):
    """(mean [d], components [d, dim], explained variance ratio) fitted on the present rows."""
    idx = np.flatnonzero(present)
    n, d = len(idx), table.shape[1]
    if n < 2:
        raise SchemaError(f"PCA: need >= 2 items with a vector, got {n}")
    mean = np.zeros(d, np.float64)
    for s in range(0, n, block):
        mean += np.asarray(table[idx[s:s + block]], np.float64).sum(0)
    mean /= n
    cov = np.zeros((d, d), np.float64)
    for s in range(0, n, block):
        x = np.asarray(table[idx[s:s + block]], np.float64) - mean
        cov += x.T @ x
    cov /= max(n - 1, 1)
    u, svals, _ = np.linalg.svd(cov, hermitian=True)
    comps = u[:, :dim]
    flip = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(comps.shape[1])])
    flip[flip == 0] = 1.0
    comps = comps * flip
    total = float(svals.sum())
    ratio = float(svals[:dim].sum() / total) if total > 0 else 0.0
    return mean, comps, ratio


def pca_project(table: np.ndarray, present: np.ndarray, mean: np.ndarray, comps: np.ndarray,
                block: int = 65536) -> np.ndarray:
    out = np.zeros((table.shape[0], comps.shape[1]), np.float32)
    idx = np.flatnonzero(present)
    for s in range(0, len(idx), block):
        rows = idx[s:s + block]
        out[rows] = ((np.asarray(table[rows], np.float64) - mean) @ comps).astype(np.float32)
    return out


def finalize_table(modality: str, table: np.ndarray, filled: np.ndarray, info: dict, pca_dim: int,
                   dtype: str, tmp_dir: Optional[str] = None, log=print):
    """Missing flags (no vector, non-finite or all-zero rows), optional PCA, quantisation -> (VectorTable, info)."""
    finite = np.ones(table.shape[0], bool)
    nonzero = np.zeros(table.shape[0], bool)
    for s in range(0, table.shape[0], 65536):
        blk = np.asarray(table[s:s + 65536])
        finite[s:s + 65536] = np.isfinite(blk).all(1)
        nonzero[s:s + 65536] = np.any(blk != 0, axis=1)
    present = filled & finite & nonzero
    present[0] = False
    info = dict(info)
    info["nonfinite_rows"] = int((filled & ~finite).sum())
    info["zero_rows"] = int((filled & finite & ~nonzero).sum())
    if info["nonfinite_rows"] or info["zero_rows"]:
        log(f"[vectors] {modality}: {info['nonfinite_rows']} non-finite and {info['zero_rows']} all-zero vectors "
            f"marked missing")
    # zero every row that is not present (also non-finite ones) before PCA / quantisation
    missing = np.flatnonzero(~present)
    for s in range(0, len(missing), 65536):
        table[missing[s:s + 65536]] = 0.0
    if pca_dim and pca_dim > 0:
        d = table.shape[1]
        if pca_dim >= d:
            log(f"[vectors] {modality}: --pca_dim={pca_dim} >= dim {d}; PCA skipped")
        else:
            mean, comps, ratio = pca_fit(table, present, pca_dim)
            table = pca_project(table, present, mean, comps)
            info["pca"] = {"dim_in": int(d), "dim": int(pca_dim), "fit_rows": int(present.sum()),
                           "explained_variance_ratio": round(ratio, 6), "file": f"{modality}.pca.npz"}
            if tmp_dir is not None:
                os.makedirs(os.path.join(tmp_dir, "tables"), exist_ok=True)
                np.savez(os.path.join(tmp_dir, "tables", f"{modality}.pca.npz"), mean=mean.astype(np.float32),
                         components=comps.astype(np.float32))
    table = np.asarray(table)
    return tables_lib.quantize(table, present, dtype), info


def build_tables(sources: Sequence[VectorSource], item_raw: Sequence[str], write, tmp_dir: Optional[str] = None,
                 log=print) -> Tuple[Dict[str, tables_lib.VectorTable], Dict[str, dict]]:
    """All modality tables for a vocabulary (`item_raw[k]` = raw id of item id k+1)."""
    tables, infos = {}, {}
    for src in sources:
        if src.modality in tables:
            raise SchemaError(f"vectors: modality '{src.modality}' has two sources")
        table, filled, info, _ = read_source(src, item_raw, tmp_dir=tmp_dir, log=log)
        vt, info = finalize_table(src.modality, table, filled, info, write.pca_dim, write.table_dtype,
                                  tmp_dir=tmp_dir, log=log)
        if isinstance(table, np.memmap):
            path = table.filename
            del table
            try:
                os.remove(path)
            except OSError:
                pass
        tables[src.modality] = vt
        infos[src.modality] = info
        log(f"[vectors] {src.modality}: {int(vt.present.sum())}/{len(item_raw)} items with a vector, dim {vt.dim}, "
            f"{vt.dtype}" + (f" (PCA {info['pca']['dim_in']} -> {vt.dim}, explained variance "
                             f"{info['pca']['explained_variance_ratio']:.3f})" if "pca" in info else ""))
    return tables, infos
