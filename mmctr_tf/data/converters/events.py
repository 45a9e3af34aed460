"""The event log and item attributes a converter reads raw files into: `EventLog` (chunked, spilled to disk),
`AttrTable` and `ItemInfo`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from mmctr_tf.data.converters.raw_ids import IdVocab, to_bytes_array
from mmctr_tf.data.converters.reading import id_problem


class EventLog:
    """Interactions as compact arrays, chunk by chunk: per chunk the distinct raw users / items (sorted byte arrays)
    with int32 indices into them, time (float64), optional label (int8). Chunks beyond the first are spilled to
    `.npz` files in a hidden directory beside `spill_near` (removed by `close()`; use as a context manager)."""

    CHUNK_ROWS = 500_000

    def __init__(self, with_labels: bool = False, spill_near: Optional[str] = None):
        self.with_labels = with_labels
        self._users = IdVocab()
        self._items = IdVocab()
        self._pu: List[str] = []
        self._pi: List[str] = []
        self._pt: List[float] = []
        self._py: List[int] = []
        self._chunks: List[Union[dict, str]] = []  # dict in memory, or the path of its .npz
        self._n = 0
        self._spill_near = spill_near
        self._spill_dir: Optional[str] = None

    def add(self, user: str, item: str, t: float, label: Optional[int] = None) -> bool:
        """Appends one event; False (nothing added) when an id is unusable (`reading.id_problem`: a malformed line)."""
        if id_problem(user, item):
            return False
        self._pu.append(user)
        self._pi.append(item)
        self._pt.append(t)
        if self.with_labels:
            self._py.append(1 if label else 0)
        if len(self._pu) >= self.CHUNK_ROWS:
            self._flush()
        return True

    def _flush(self) -> None:
        if not self._pu:
            return
        uu, ui = np.unique(to_bytes_array(self._pu), return_inverse=True)
        iu, ii = np.unique(to_bytes_array(self._pi), return_inverse=True)
        chunk = {"u_uniq": uu, "u_inv": ui.astype(np.int32), "i_uniq": iu, "i_inv": ii.astype(np.int32),
                 "t": np.array(self._pt, np.float64),
                 "y": np.array(self._py, np.int8) if self.with_labels else np.ones(len(self._pu), np.int8)}
        self._users.add(uu)
        self._items.add(iu)
        self._n += len(self._pu)
        self._pu, self._pi, self._pt, self._py = [], [], [], []
        self._chunks.append(chunk)
        if len(self._chunks) > 1 and self._spill_near is not None:
            for k, c in enumerate(self._chunks):
                if isinstance(c, dict):
                    self._chunks[k] = self._spill(k, c)

    def _spill(self, k: int, chunk: dict) -> str:
        if self._spill_dir is None:
            near = os.path.abspath(self._spill_near.rstrip("/") or self._spill_near)
            parent = os.path.dirname(near)
            os.makedirs(parent, exist_ok=True)
            self._spill_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(near)}.events-", dir=parent)
        path = os.path.join(self._spill_dir, f"chunk-{k:06d}.npz")
        np.savez(path, **chunk)
        return path

    @property
    def users(self) -> IdVocab:
        self._flush()
        return self._users

    @property
    def items(self) -> IdVocab:
        self._flush()
        return self._items

    def __len__(self):
        return self._n + len(self._pu)

    @property
    def num_chunks(self) -> int:
        self._flush()
        return len(self._chunks)

    def chunks(self) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]]:
        """(user temp index int64, item temp index int64, time, label int8, index of the first event) per chunk,
        temp indices being positions in `users.sorted()` / `items.sorted()`; events in file order."""
        self._flush()
        start = 0
        for c in self._chunks:
            if isinstance(c, str):
                with np.load(c) as z:
                    c = {k: z[k] for k in z.files}
            u = self._users.lookup(c["u_uniq"])[c["u_inv"]]
            i = self._items.lookup(c["i_uniq"])[c["i_inv"]]
            yield u, i, c["t"], c["y"], start
            start += len(u)

    def arrays(self):
        """All events as (user temp index, item temp index, time, label); for small logs and tests."""
        parts = list(self.chunks())
        if not parts:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int8))
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(4))

    def close(self) -> None:
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None
        self._chunks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AttrTable:
    """Item attribute (category, brand) by raw item id as two byte arrays: sorted unique keys and their values."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], values[order]

    @classmethod
    def from_dict(cls, d: Dict[str, str]) -> "AttrTable":
        items = [(k, str(v).strip()) for k, v in d.items() if v is not None and str(v).strip()]
        return cls(to_bytes_array(k for k, _ in items), to_bytes_array(v for _, v in items))

    @classmethod
    def first_nonempty(cls, keys: np.ndarray, values: np.ndarray) -> "AttrTable":
        """From rows in file order: per key the value of its first row with a non-empty value."""
        ok = values != b""
        keys, values = keys[ok], values[ok]
        uk, first = np.unique(keys, return_index=True)
        return cls(uk, values[first])

    def get(self, raw: np.ndarray) -> np.ndarray:
        """Value of each raw item id (byte array); b'' when absent."""
        if not len(self.keys):
            return np.zeros(len(raw), "S1")
        pos = np.minimum(np.searchsorted(self.keys, raw), len(self.keys) - 1)
        return np.where(self.keys[pos] == raw, self.values[pos], b"")

    def __len__(self):
        return len(self.keys)


@dataclasses.dataclass
class ItemInfo:
    """Item attributes keyed by raw item id (only items that may matter need to be present): dicts, or
    `AttrTable`s for large item sets (no Python object per item). Texts stay a dict (only for item_text.tsv)."""

    cate: Union[Dict[str, str], AttrTable] = dataclasses.field(default_factory=dict)
    brand: Optional[Union[Dict[str, str], AttrTable]] = None
    text: Optional[Dict[str, str]] = None
