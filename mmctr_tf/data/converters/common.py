"""Shared machinery of the real-dataset converters: event log, id maps, the DIN protocol, the dataset writer.

A converter (amazon.py, movielens.py, generic.py) only *reads* raw files: it streams interactions into an
`EventLog` (raw user id, raw item id, time, optional label) and item attributes into an `ItemInfo` (category,
optional brand, optional text), and names its vector sources. `build_dataset` does the rest, identically for all
sources:

  1. keep users with >= `min_behaviors` events; order each user's events by (time, file order) — ties keep the
     order of the raw file;
  2. keep the `max_behaviors` most recent events per user (0 = all);
  3. remap raw ids to 1..V-1 (0 = padding / OOV) in a deterministic order: raw ids sorted numerically when all of
     them are integers, else as strings. Users, items, categories (and brands) alike. The item vocabulary is the
     set of items that occur in the kept events;
  4. build examples (SPEC §1 (a), the DIN protocol, or a per-user time-fraction split for logs with real labels,
     see `ProtocolConfig`): the history of the target at position k holds only the behaviours before k, right
     padded, oldest first, the most recent at slot hist_len-1 (`tfrecord.pad_sequences` layout);
  5. stream the examples, in blocks of users, into sharded TFRecords (`ShardedWriter`), write one frozen vector
     table per modality (missing flag for items without a vector), the id maps and `manifest.json`.

Everything is written into a hidden temporary directory beside the output that is renamed into place only when
complete, so a failed or interrupted conversion never leaves partial output (and never destroys an older,
complete dataset at the same place).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import gzip
import io
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from mmctr_tf.data import tables as tables_lib
from mmctr_tf.data.schema import SPLITS, Schema, SchemaError, write_manifest
from mmctr_tf.data.tfrecord import ShardedWriter

MAP_FILES = {"user_id": "user_map.tsv", "item_id": "item_map.tsv", "cate_id": "cate_map.tsv",
             "brand_id": "brand_map.tsv"}
ITEM_TEXT_FILE = "item_text.tsv"


class RawFilesMissing(SchemaError):
    """The raw files a converter needs are not where they were looked for; the message says what to put where."""


class ConversionError(SchemaError):
    """A raw file is unusable as a whole (wrong columns, wrong shape); the message names the file."""


# ----------------------------------------------------------------------------------------------------- reading
def open_text(path: str, encoding: str = "utf-8"):
    """Opens a text file, transparently gunzipping `*.gz`; undecodable bytes are replaced, never fatal."""
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors="replace", newline="")
    return open(path, encoding=encoding, errors="replace", newline="")


class LineErrors:
    """Counts malformed lines of one raw file and keeps the first few (line number + reason) for the report."""

    KEEP = 5

    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self.lines = 0
        self.examples: List[str] = []

    def add(self, lineno: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self.KEEP:
            self.examples.append(f"line {lineno}: {reason[:160]}")

    def to_dict(self) -> dict:
        return {"file": os.path.basename(self.path), "lines": self.lines, "malformed": self.count,
                "examples": list(self.examples)}


class IdIndex:
    """Raw id (string) -> dense temporary index, in order of first appearance."""

    def __init__(self):
        self.index: Dict[str, int] = {}
        self.raw: List[str] = []

    def get(self, raw: str) -> int:
        i = self.index.get(raw)
        if i is None:
            i = len(self.raw)
            self.index[raw] = i
            self.raw.append(raw)
        return i

    def __len__(self):
        return len(self.raw)

    def __contains__(self, raw):
        return raw in self.index


_INT_RE = re.compile(r"^[+-]?\d+$")


def sort_raw_ids(raw: Sequence[str]) -> List[str]:
    """Deterministic order of raw ids: numerically if every id is an integer, else lexicographically."""
    raw = list(raw)
    if raw and all(_INT_RE.match(r) for r in raw):
        return sorted(raw, key=lambda r: (int(r), r))
    return sorted(raw)


class EventLog:
    """Interactions as compact arrays: (user, item) temporary indices, time, optional label (0/1)."""

    def __init__(self, with_labels: bool = False):
        self.users = IdIndex()
        self.items = IdIndex()
        self._u = array.array("i")
        self._i = array.array("i")
        self._t = array.array("d")
        self._y = array.array("b") if with_labels else None

    @property
    def with_labels(self) -> bool:
        return self._y is not None

    def add(self, user: str, item: str, t: float, label: Optional[int] = None) -> None:
        self._u.append(self.users.get(user))
        self._i.append(self.items.get(item))
        self._t.append(t)
        if self._y is not None:
            self._y.append(1 if label else 0)

    def __len__(self):
        return len(self._u)

    def arrays(self):
        u = np.frombuffer(self._u, dtype=np.int32) if len(self._u) else np.zeros(0, np.int32)
        i = np.frombuffer(self._i, dtype=np.int32) if len(self._i) else np.zeros(0, np.int32)
        t = np.frombuffer(self._t, dtype=np.float64) if len(self._t) else np.zeros(0, np.float64)
        if self._y is None:
            y = np.ones(len(u), np.int8)
        else:
            y = np.frombuffer(self._y, dtype=np.int8) if len(self._y) else np.zeros(0, np.int8)
        return u, i, t, y


@dataclasses.dataclass
class ItemInfo:
    """Item attributes keyed by raw item id (only items that may matter need to be present)."""

    cate: Dict[str, str] = dataclasses.field(default_factory=dict)
    brand: Optional[Dict[str, str]] = None
    text: Optional[Dict[str, str]] = None


# ----------------------------------------------------------------------------------------------------- protocol
@dataclasses.dataclass
class ProtocolConfig:
    """How examples are built from per-user event sequences.

    split="din" (SPEC §1 (a), Amazon): every event is a positive behaviour; per user (time order, 0-based
      positions 0..n-1 after keeping the `max_behaviors` most recent), targets 1..n-3 are training examples,
      n-2 the validation and n-1 the test example; each positive gets one sampled negative item the user never
      interacted with (over all of the user's events, also those beyond the most recent `max_behaviors`), with
      the same history. `negatives` = "uniform" over the item vocabulary (default) or "popularity" (item
      frequency in the kept events).
    split="fraction" (logs with real labels, e.g. MovieLens): every event of the user at position >=
      `target_min_pos` is an example with its own label; per user the last round(test_frac * n) (>= 1) events
      are test, the round(valid_frac * n) (>= 1) before them validation, the rest training. No sampled
      negatives.
    history="all": every earlier event is a behaviour; "positive": only earlier events with label 1.
    """

    seq_len: int = 50
    min_behaviors: int = 5
    max_behaviors: int = 50
    split: str = "din"
    negatives: str = "uniform"
    history: str = "all"
    valid_frac: float = 0.1
    test_frac: float = 0.1
    target_min_pos: int = 1
    seed: int = 0
    chunk_events: int = 50_000

    def validate(self) -> None:
        if self.split not in ("din", "fraction"):
            raise SchemaError(f"protocol: split must be 'din' or 'fraction', got '{self.split}'")
        if self.negatives not in ("uniform", "popularity", "none"):
            raise SchemaError(f"protocol: negatives must be uniform | popularity | none, got '{self.negatives}'")
        if self.history not in ("all", "positive"):
            raise SchemaError(f"protocol: history must be 'all' or 'positive', got '{self.history}'")
        if self.seq_len < 1:
            raise SchemaError(f"protocol: seq_len must be >= 1, got {self.seq_len}")
        if self.split == "din":
            if self.min_behaviors < 4:
                raise SchemaError("protocol: the DIN split needs min_behaviors >= 4 (>= 1 training target, one "
                                  f"validation and one test target per user), got {self.min_behaviors}")
            if self.max_behaviors and self.max_behaviors < 4:
                raise SchemaError(f"protocol: max_behaviors must be 0 (all) or >= 4, got {self.max_behaviors}")
            if self.negatives == "none":
                raise SchemaError("protocol: the DIN split needs sampled negatives (uniform | popularity)")
        else:
            if self.min_behaviors < 3:
                raise SchemaError(f"protocol: the fraction split needs min_behaviors >= 3, got {self.min_behaviors}")
            if not (0 < self.valid_frac < 1 and 0 < self.test_frac < 1 and self.valid_frac + self.test_frac < 1):
                raise SchemaError("protocol: valid_frac and test_frac must be in (0, 1) with a sum below 1")

    def describe(self) -> str:
        trunc = f"the {self.max_behaviors} most recent" if self.max_behaviors else "all"
        if self.split == "din":
            return (f"DIN protocol: users with >= {self.min_behaviors} behaviours, {trunc} kept, ordered by time; "
                    f"targets at positions 1..n-3 train, n-2 validation, n-1 test; one {self.negatives} negative "
                    f"per positive (an item the user never interacted with, seed {self.seed}), same history; "
                    f"history = the behaviours before the target, most recent {self.seq_len}")
        return (f"time-fraction protocol: users with >= {self.min_behaviors} events, {trunc} kept, ordered by "
                f"time; per user the last {self.test_frac:g} of events test, the {self.valid_frac:g} before "
                f"validation, the rest train (each >= 1 event); labels from the log; history = the "
                f"{'positive' if self.history == 'positive' else ''} events before the target, most recent "
                f"{self.seq_len}").replace("the  events", "the events")


@dataclasses.dataclass
class WriteConfig:
    num_shards: int = 4
    compression: str = "GZIP"
    table_dtype: str = "float32"
    pca_dim: int = 0


# ----------------------------------------------------------------------------------------------------- output dir
@contextlib.contextmanager
def atomic_output_dir(out_dir: str):
    """Yields a fresh hidden temp dir beside `out_dir`; on success it replaces `out_dir`, on failure it is deleted."""
    out_dir = out_dir.rstrip("/") or out_dir
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(os.path.abspath(out_dir))
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rmdir(old)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _clean_field(s: str) -> str:
    return str(s).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_tsv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(_clean_field(x) for x in row) + "\n")


def load_id_map(data_dir: str, field: str = "item_id") -> List[Optional[str]]:
    """Raw ids of a converted dataset indexed by id (entry 0 = None, the padding / OOV row)."""
    path = os.path.join(data_dir, MAP_FILES[field])
    if not os.path.exists(path):
        raise SchemaError(f"{path}: no id map for '{field}' (was the dataset made by a converter?)")
    out: List[Optional[str]] = [None]
    with open(path, encoding="utf-8") as f:
        f.readline()
        for n, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if int(parts[0]) != n:
                raise SchemaError(f"{path}: line {n + 1}: expected id {n}, got {parts[0]}")
            out.append(parts[1])
    return out


def load_item_texts(data_dir: str) -> Dict[int, str]:
    """item id -> text (title) of a converted dataset, from `item_text.tsv`."""
    path = os.path.join(data_dir, ITEM_TEXT_FILE)
    if not os.path.exists(path):
        raise SchemaError(f"{path}: the dataset has no item texts (its raw data had no titles)")
    out = {}
    with open(path, encoding="utf-8") as f:
        f.readline()
        for line in f:
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) == 2 and parts[1].strip():
                out[int(parts[0])] = parts[1]
    return out


# ----------------------------------------------------------------------------------------------------- building
@dataclasses.dataclass
class _Vocab:
    raw: List[str]  # raw ids in id order (index 0 -> id 1)

    @property
    def size(self) -> int:
        return len(self.raw) + 1


def _make_vocab(raw_values: Iterable[str]) -> _Vocab:
    return _Vocab(sort_raw_ids(set(raw_values)))


def _segments(sorted_users: np.ndarray, num_users: int) -> np.ndarray:
    """starts[u-1] .. starts[u] is the segment of user id u (1..num_users) in a user-sorted array."""
    return np.searchsorted(sorted_users, np.arange(1, num_users + 2), side="left")


class _NegativeSampler:
    def __init__(self, vocab_size: int, counts: Optional[np.ndarray], rng: np.random.Generator):
        self.V = vocab_size
        self.rng = rng
        self.cdf = None
        if counts is not None:
            p = counts.astype(np.float64)
            p[0] = 0.0
            self.cdf = np.cumsum(p / p.sum())
            self.cdf[-1] = 1.0

    def draw(self, n: int) -> np.ndarray:
        if self.cdf is None:
            return self.rng.integers(1, self.V, size=n)
        return np.minimum(np.searchsorted(self.cdf, self.rng.random(n), side="right"), self.V - 1)

    def sample(self, users_local: np.ndarray, excl_keys: np.ndarray, excl_by_user: Callable[[int], np.ndarray]):
        """One negative per row: an item whose (user, item) key is not in `excl_keys`. Returns (items, ok mask)."""
        n = len(users_local)
        neg = self.draw(n)
        bad = np.arange(n)
        V = self.V
        for _ in range(64):
            keys = users_local[bad].astype(np.int64) * V + neg[bad]
            pos = np.minimum(np.searchsorted(excl_keys, keys), max(len(excl_keys) - 1, 0))
            hit = excl_keys[pos] == keys if len(excl_keys) else np.zeros(len(bad), bool)
            bad = bad[hit]
            if not len(bad):
                return neg, np.ones(n, bool)
            neg[bad] = self.draw(len(bad))
        # Users who interacted with (nearly) every item: draw from the explicit complement, if there is one.
        ok = np.ones(n, bool)
        for r in bad:
            seen = excl_by_user(int(users_local[r]))
            free = np.setdiff1d(np.arange(1, V), seen)
            if len(free):
                neg[r] = free[self.rng.integers(0, len(free))]
            else:
                ok[r] = False
        return neg, ok


def build_dataset(out_dir: str, *, name: str, source: str, events: EventLog, info: ItemInfo,
                  protocol: ProtocolConfig, write: WriteConfig, vector_sources=(), raw_files=None,
                  read_errors: Sequence[LineErrors] = (), extra: Optional[dict] = None,
                  log: Callable[[str], None] = print) -> dict:
    """Builds the dataset into `out_dir` (atomically) and returns its manifest (see module docstring)."""
    from mmctr_tf.data.converters import vectors as vectors_lib

    protocol.validate()
    t0 = time.time()
    cfg = protocol
    L = cfg.seq_len
    u_tmp, i_tmp, t_ev, y_ev = events.arrays()
    n_read = len(u_tmp)
    if n_read == 0:
        raise ConversionError(f"dataset '{name}': the raw files hold no valid interaction")
    users_read = len(events.users)

    # 1. users with enough events; final user ids in sorted raw order.
    counts = np.bincount(u_tmp, minlength=len(events.users))
    keep_user = counts >= cfg.min_behaviors
    kept_tmp_users = np.flatnonzero(keep_user)
    if not len(kept_tmp_users):
        raise ConversionError(f"dataset '{name}': no user has >= {cfg.min_behaviors} events "
                              f"({users_read} users, {n_read} events read)")
    user_vocab = _make_vocab(events.users.raw[j] for j in kept_tmp_users)
    user_pos = {r: k + 1 for k, r in enumerate(user_vocab.raw)}
    user_final_of_tmp = np.zeros(len(events.users), np.int64)
    for j in kept_tmp_users:
        user_final_of_tmp[j] = user_pos[events.users.raw[j]]
    del user_pos
    U = len(user_vocab.raw)

    ev = np.flatnonzero(keep_user[u_tmp])
    uF = user_final_of_tmp[u_tmp[ev]]
    order = np.lexsort((ev, t_ev[ev], uF))  # by user, time, file order
    ev = ev[order]
    uF = uF[order]
    iF_tmp = i_tmp[ev].astype(np.int64)
    yF = y_ev[ev].astype(np.int64)
    del order
    startsF = _segments(uF, U)

    # 2. the max_behaviors most recent events per user.
    if cfg.max_behaviors:
        end_of = startsF[uF]  # segment end (exclusive) of each event's user
        keepT = (end_of - np.arange(len(uF))) <= cfg.max_behaviors
        del end_of
    else:
        keepT = np.ones(len(uF), bool)
    uT, yT = uF[keepT], yF[keepT]
    iT_tmp = iF_tmp[keepT]
    startsT = _segments(uT, U)
    lensT = np.diff(startsT)

    # 3. item vocabulary = items of the kept events; categories (and brands) of those items.
    used_tmp_items = np.unique(iT_tmp)
    item_vocab = _make_vocab(events.items.raw[j] for j in used_tmp_items)
    V = item_vocab.size
    item_pos = {r: k + 1 for k, r in enumerate(item_vocab.raw)}
    item_final_of_tmp = np.zeros(len(events.items), np.int64)
    for j in used_tmp_items:
        item_final_of_tmp[j] = item_pos[events.items.raw[j]]
    iF = item_final_of_tmp[iF_tmp]  # 0 for items outside the vocabulary (only in truncated-away events)
    iT = item_final_of_tmp[iT_tmp]
    del iF_tmp, iT_tmp, item_final_of_tmp

    attr_names = ["cate_id"] + (["brand_id"] if info.brand is not None else [])
    attr_vocab: Dict[str, _Vocab] = {}
    attr_of: Dict[str, np.ndarray] = {}
    attr_missing: Dict[str, int] = {}
    for attr in attr_names:
        source_map = info.cate if attr == "cate_id" else info.brand
        raw_vals = [source_map.get(r) for r in item_vocab.raw]
        raw_vals = [v if (v is not None and str(v).strip()) else None for v in raw_vals]
        voc = _make_vocab(str(v).strip() for v in raw_vals if v is not None)
        vpos = {r: k + 1 for k, r in enumerate(voc.raw)}
        arr = np.zeros(V, np.int64)
        for k, v in enumerate(raw_vals):
            if v is not None:
                arr[k + 1] = vpos[str(v).strip()]
        attr_vocab[attr], attr_of[attr] = voc, arr
        attr_missing[attr] = int(sum(v is None for v in raw_vals))

    schema = Schema(
        seq_len=L,
        vocab={"user_id": max(U + 1, 2), "item_id": max(V, 2),
               **{a: max(attr_vocab[a].size, 2) for a in attr_names}},
        modalities={},
    )

    # Vector tables are checked (shapes, alignment) before anything is written.
    rng = np.random.default_rng(cfg.seed)
    row_rng = np.random.default_rng([cfg.seed, 1])  # row order within blocks (independent of the negatives)
    sampler = None
    if cfg.split == "din":
        pop = np.bincount(iT, minlength=V) if cfg.negatives == "popularity" else None
        sampler = _NegativeSampler(V, pop, rng)

    with atomic_output_dir(out_dir) as tmp:
        tables, table_info = vectors_lib.build_tables(vector_sources, item_vocab.raw, write, tmp_dir=tmp, log=log)
        schema = dataclasses.replace(schema, modalities={m: t.dim for m, t in tables.items()})
        writers = {s: ShardedWriter(tmp, s, schema, write.num_shards, write.compression or None) for s in SPLITS}
        split_users = {s: 0 for s in SPLITS}
        negatives_unavailable = 0
        try:
            a = 1
            while a <= U:
                # users a..b-1, about chunk_events kept events
                b = int(np.searchsorted(startsT, startsT[a - 1] + cfg.chunk_events, side="right"))
                b = min(max(b, a + 1), U + 1)
                blocks, n_unavail = _chunk_examples(a, b, uT, iT, yT, startsT, lensT, uF, iF, startsF, cfg,
                                                    attr_of, sampler, V)
                negatives_unavailable += n_unavail
                for s_idx, s in enumerate(SPLITS):
                    cols = blocks[s_idx]
                    if cols is not None and len(cols["label"]):
                        # Shuffle the block's rows: the writer deals rows round-robin over the shards, so the
                        # positive/negative interleaving would otherwise put all positives into even shards.
                        perm = row_rng.permutation(len(cols["label"]))
                        writers[s].write({key: v[perm] for key, v in cols.items()})
                        split_users[s] += int(len(np.unique(cols["user_id"])))
                a = b
            for w in writers.values():
                w.close()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise

        manifest = {"name": name, "source": source, "schema": schema.to_dict(),
                    "compression": write.compression or "", "splits": {}, "tables": {},
                    "protocol": {**dataclasses.asdict(cfg), "description": cfg.describe()}}
        total_examples = total_pos = 0
        for s in SPLITS:
            entry = writers[s].summary()
            n = entry["examples"]
            entry["positive_rate"] = float(entry["positives"] / n) if n else 0.0
            entry["users"] = split_users[s]
            manifest["splits"][s] = entry
            total_examples += n
            total_pos += entry["positives"]
        for m, table in tables.items():
            manifest["tables"][m] = {**tables_lib.save_table(os.path.join(tmp, "tables"), m, table),
                                     **table_info[m]}

        # id maps (row k <-> id k) so vectors and serving can be aligned with the raw ids.
        write_tsv(os.path.join(tmp, MAP_FILES["user_id"]), ["user_id", "raw_id"],
                  ((k + 1, r) for k, r in enumerate(user_vocab.raw)))
        header = ["item_id", "raw_id"] + attr_names
        write_tsv(os.path.join(tmp, MAP_FILES["item_id"]), header,
                  ([k + 1, r] + [int(attr_of[a][k + 1]) for a in attr_names] for k, r in enumerate(item_vocab.raw)))
        for a in attr_names:
            write_tsv(os.path.join(tmp, MAP_FILES[a]), [a, "raw_value"],
                      ((k + 1, r) for k, r in enumerate(attr_vocab[a].raw)))
        maps = {a: MAP_FILES[a] for a in ["user_id", "item_id"] + attr_names}
        items_with_text = 0
        if info.text is not None:
            rows = [(k + 1, info.text.get(r, "") or "") for k, r in enumerate(item_vocab.raw)]
            items_with_text = sum(1 for _, t in rows if t.strip())
            write_tsv(os.path.join(tmp, ITEM_TEXT_FILE), ["item_id", "text"], rows)
            maps["text"] = ITEM_TEXT_FILE
        manifest["maps"] = maps

        n_items = V - 1
        manifest["stats"] = {
            "users": U,
            "items": n_items,
            "categories": len(attr_vocab["cate_id"].raw),
            **({"brands": len(attr_vocab["brand_id"].raw)} if "brand_id" in attr_vocab else {}),
            "examples": total_examples,
            "positives": total_pos,
            "positive_rate": float(total_pos / total_examples) if total_examples else 0.0,
            "coverage": {m: (float(t.present.sum() / n_items) if n_items else 0.0) for m, t in tables.items()},
            "items_with_vector": {m: int(t.present.sum()) for m, t in tables.items()},
            "items_with_text": items_with_text if info.text is not None else None,
            "items_without_category": attr_missing["cate_id"],
            "events_read": int(n_read),
            "users_read": int(users_read),
            "users_dropped_short": int(users_read - U),
            "events_kept": int(len(uT)),
            "events_beyond_max_behaviors": int(len(uF) - len(uT)),
            "negatives_unavailable": int(negatives_unavailable),
            "malformed_lines": {os.path.basename(e.path): e.count for e in read_errors},
            "read_errors": [e.to_dict() for e in read_errors],
            "seconds": round(time.time() - t0, 2),
        }
        if raw_files:
            manifest["raw_files"] = {k: (os.path.abspath(v) if v else None) for k, v in raw_files.items()}
        if extra:
            manifest.update(extra)
        write_manifest(tmp, manifest)
    return manifest


def _chunk_examples(a, b, uT, iT, yT, startsT, lensT, uF, iF, startsF, cfg: ProtocolConfig, attr_of, sampler, V):
    """Examples of users a..b-1 as one column block per split (None when empty)."""
    L = cfg.seq_len
    e0, e1 = int(startsT[a - 1]), int(startsT[b - 1])
    it, ut, yt = iT[e0:e1], uT[e0:e1], yT[e0:e1]
    n_ev = e1 - e0
    idx = np.arange(n_ev)
    ustart = startsT[ut - 1] - e0
    n = lensT[ut - 1]
    k = idx - ustart
    if cfg.split == "din":
        code = np.where(k == n - 1, 2, np.where(k == n - 2, 1, 0))
        target = k >= 1
        labels = np.ones(n_ev, np.int64)
    else:
        n_test = np.maximum(1, np.floor(cfg.test_frac * n + 0.5)).astype(np.int64)
        n_valid = np.maximum(1, np.floor(cfg.valid_frac * n + 0.5)).astype(np.int64)
        code = np.where(k >= n - n_test, 2, np.where(k >= n - n_test - n_valid, 1, 0))
        target = k >= cfg.target_min_pos
        labels = yt

    # History of each event: the behaviours of the same user strictly before it, the most recent L of them.
    beh = np.ones(n_ev, bool) if cfg.history == "all" else (yt == 1)
    P = np.flatnonzero(beh)
    tg = np.flatnonzero(target)
    r = np.searchsorted(P, tg, side="left")  # behaviours with index < tg (in this chunk)
    r0 = np.searchsorted(P, ustart[tg], side="left")
    hl = np.minimum(r - r0, L)
    j = np.arange(L)
    valid = j[None, :] < hl[:, None]
    if len(P):
        hidx = P[np.clip(r[:, None] - hl[:, None] + j[None, :], 0, len(P) - 1)]
        hist_item = np.where(valid, it[hidx], 0)
    else:
        hist_item = np.zeros((len(tg), L), np.int64)

    pos = {"user_id": ut[tg], "item_id": it[tg], "hist_item_id": hist_item, "hist_len": hl,
           "label": labels[tg].astype(np.float32)}
    for attr, table in attr_of.items():
        pos[attr] = table[pos["item_id"]]
        pos["hist_" + attr] = table[hist_item]
    codes = code[tg]

    n_unavail = 0
    if cfg.split == "din":
        # Exclusion set: every (user, item) pair of these users, also beyond the most recent max_behaviors.
        f0, f1 = int(startsF[a - 1]), int(startsF[b - 1])
        uf_local = uF[f0:f1] - a
        excl = np.unique(uf_local.astype(np.int64) * V + iF[f0:f1])

        def excl_by_user(u_local):
            lo, hi = int(startsF[a - 1 + u_local]), int(startsF[a + u_local])
            return iF[lo:hi]

        neg_items, ok = sampler.sample(pos["user_id"] - a, excl, excl_by_user)
        n_unavail = int((~ok).sum())
        neg = dict(pos)
        neg["item_id"] = neg_items
        neg["label"] = np.zeros(len(tg), np.float32)
        for attr, table in attr_of.items():
            neg[attr] = table[neg_items]
        # interleave: positive, its negative, next positive, ...
        cols = {key: np.stack([pos[key], neg[key]], axis=1).reshape((2 * len(tg),) + pos[key].shape[1:])
                for key in pos}
        codes = np.repeat(codes, 2)
        keep = np.stack([np.ones(len(tg), bool), ok], axis=1).reshape(-1)
        if not keep.all():
            cols = {key: v[keep] for key, v in cols.items()}
            codes = codes[keep]
    else:
        cols = pos
    blocks = []
    for s_idx in range(len(SPLITS)):
        m = codes == s_idx
        blocks.append({key: v[m] for key, v in cols.items()} if m.any() else None)
    return blocks, n_unavail


# ----------------------------------------------------------------------------------------------------- reporting
def format_stats(manifest: dict) -> List[str]:
    """Human-readable conversion statistics (the `stats` block of a converter's manifest)."""
    st = manifest.get("stats", {})
    if "events_read" not in st:
        return []
    lines = [
        f"  stats: users {st['users']}, items {st['items']}, categories {st['categories']}"
        + (f", brands {st['brands']}" if "brands" in st else "")
        + f", examples {st['examples']} (positives {st['positives']}, positive rate {st['positive_rate']:.4f})",
        f"  events: read {st['events_read']} from {st['users_read']} users; kept {st['events_kept']} "
        f"(users with < {manifest.get('protocol', {}).get('min_behaviors', '?')} events dropped: "
        f"{st['users_dropped_short']}, events beyond the {manifest.get('protocol', {}).get('max_behaviors', '?')} "
        f"most recent dropped: {st['events_beyond_max_behaviors']})",
    ]
    cov = st.get("coverage") or {}
    if cov:
        lines.append("  vector coverage: " + ", ".join(
            f"{m} {100 * c:.2f}% ({st['items_with_vector'][m]}/{st['items']})" for m, c in cov.items()))
    else:
        lines.append("  vector coverage: no modalities (no vector tables)")
    if st.get("items_with_text") is not None:
        lines.append(f"  items with a text (title) for run.embed_text: {st['items_with_text']}/{st['items']}")
    lines.append(f"  items without category (cate_id 0): {st['items_without_category']}")
    if st.get("negatives_unavailable"):
        lines.append(f"  positives without a possible negative (user saw every item): {st['negatives_unavailable']}")
    for e in st.get("read_errors", []):
        msg = f"  {e['file']}: {e['lines']} lines, {e['malformed']} malformed"
        if e["examples"]:
            msg += " (first: " + "; ".join(e["examples"][:3]) + ")"
        lines.append(msg)
    return lines
