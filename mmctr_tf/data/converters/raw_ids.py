"""Raw ids as fixed-width byte arrays: encoding, the deterministic id order, and `IdVocab` (a sorted set of raw
ids merged like an LSM tree, no Python object per id)."""

from __future__ import annotations

import re
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np


def to_bytes_array(values: Iterable) -> np.ndarray:
    """Raw ids / values (str, bytes; None -> b'') as a fixed-width UTF-8 byte array (numpy 'S'); empty -> 'S1'."""
    out = [v if isinstance(v, bytes) else b"" if v is None else str(v).encode("utf-8") for v in values]
    return np.array(out, dtype=bytes) if out else np.zeros(0, "S1")


def iter_decoded(arr: np.ndarray, block: int = 65536) -> Iterator[str]:
    """The strings of a byte array, decoded block by block (no list of all of them at once)."""
    for s in range(0, len(arr), block):
        for b in arr[s:s + block].tolist():
            yield b.decode("utf-8", "replace")


_INT_RE = re.compile(r"^[+-]?\d+$")


def sort_raw_ids(raw: Sequence[str]) -> List[str]:
    """Deterministic order of raw ids: numerically if every id is an integer, else lexicographically."""
    raw = list(raw)
    if raw and all(_INT_RE.match(r) for r in raw):
        return sorted(raw, key=lambda r: (int(r), r))
    return sorted(raw)


def _int_values(raw: np.ndarray) -> Optional[np.ndarray]:
    """int64 values of a byte array when every entry is an integer ([+-]?digits, <= 18 digits), else None."""
    n = len(raw)
    if n == 0:
        return None
    w = raw.dtype.itemsize
    m = np.ascontiguousarray(raw).view(np.uint8).reshape(n, w)
    digit = (m >= 48) & (m <= 57)
    pad = m == 0
    sign = (m[:, 0] == 43) | (m[:, 0] == 45)
    body = digit.copy()
    body[:, 0] |= sign
    if not np.all(body | pad):
        return None
    if w > 1 and np.any(pad[:, :-1] & ~pad[:, 1:]):
        return None  # a NUL inside an id
    ndig = digit.sum(1)
    if np.any(ndig == 0) or ndig.max() > 18:
        return None
    vals = np.zeros(n, np.int64)
    for j in range(w):
        d = digit[:, j]
        vals = np.where(d, vals * 10 + (m[:, j].astype(np.int64) - 48), vals)
    return np.where(m[:, 0] == 45, -vals, vals)


def id_order(raw: np.ndarray) -> np.ndarray:
    """argsort of raw ids (byte array) in the deterministic id order of `sort_raw_ids`: numerically (ties by the
    string, e.g. '007' < '7') when every id is an integer, else lexicographically (UTF-8 byte order = code point
    order)."""
    ints = _int_values(raw)
    if ints is not None:
        return np.lexsort((raw, ints))
    if len(raw) and all(_INT_RE.match(r) for r in iter_decoded(raw)):  # integers beyond 18 digits: rare
        keys = [(int(r), r) for r in iter_decoded(raw)]
        return np.array(sorted(range(len(keys)), key=keys.__getitem__), np.int64)
    return np.argsort(raw, kind="stable")


class IdVocab:
    """Distinct raw ids (as UTF-8 bytes) seen so far: a few sorted unique byte arrays, merged like an LSM tree
    (a new run is merged into the previous one while it is at least half its size), so adding n ids costs
    O(n log n) and memory O(distinct ids). `sorted()` is the temporary id order (byte order)."""

    def __init__(self):
        self._runs: List[np.ndarray] = []
        self._sorted: Optional[np.ndarray] = None

    def add(self, uniq: np.ndarray) -> None:
        """Adds a sorted unique byte array."""
        self._sorted = None
        self._runs.append(uniq)
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            b = self._runs.pop()
            a = self._runs.pop()
            self._runs.append(np.unique(np.concatenate([a, b])))

    def sorted(self) -> np.ndarray:
        if self._sorted is None:
            if len(self._runs) > 1:
                self._runs = [np.unique(np.concatenate(self._runs))]
            self._sorted = self._runs[0] if self._runs else np.zeros(0, "S1")
        return self._sorted

    def lookup(self, raw: np.ndarray) -> np.ndarray:
        """Temporary index (position in `sorted()`) of each raw id; -1 for ids never added."""
        voc = self.sorted()
        if not len(voc):
            return np.full(len(raw), -1, np.int64)
        pos = np.minimum(np.searchsorted(voc, raw), len(voc) - 1)
        return np.where(voc[pos] == raw, pos, -1)

    def __len__(self):
        return len(self.sorted())

    def __contains__(self, raw) -> bool:
        b = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
        return bool(self.lookup(np.array([b]))[0] >= 0)
