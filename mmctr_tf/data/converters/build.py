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

Scale (issue #8: a 10M-user / 2M-item log). No Python object is kept per id or per event:
  * the `EventLog` keeps events in chunks of `EventLog.CHUNK_ROWS` rows; each chunk holds its distinct raw ids as a
    sorted fixed-width byte array (`np.unique`) and int32 indices into it, and is spilled to a `.npz` file beside
    the output once there is more than one chunk, so reading holds one chunk of Python strings at a time;
  * the id vocabularies are sorted byte arrays (`IdVocab`, merged like an LSM tree); raw -> id is `searchsorted`,
    the final order (numeric or lexicographic) an `argsort` of the kept ids;
  * users are split into P = ceil(events / `WriteConfig.partition_events`) partitions by id range; the events of
    each partition are scattered to flat files once, and each partition is then read, sorted, turned into examples
    and written on its own (memory: one partition). Partition p writes its own shards (`<split>-<k>-of-<n>`, k in
    p's range), dealt round-robin inside the partition; P = 1 (every log below `partition_events`) is exactly the
    former single-pass conversion (same shards, same negatives).
  * restartable (`WriteConfig.resume`): the output is staged in `.<name>.partial/` beside it; a partition's shards
    are renamed into place when complete and recorded in `.progress/part-<p>.json` (with a digest of the
    partition's events and a fingerprint of vocabularies, schema, protocol and write settings). After a kill, the
    same command re-reads the raw files (fast, deterministic) and skips every partition already recorded with a
    matching digest; the result equals an uninterrupted conversion. Without `resume` a failed conversion leaves
    nothing behind (a random temp dir, deleted).

The DIN protocol needs every event of a user (its last event is the test target, the negatives avoid all of the
user's items), so examples cannot be emitted while the log is still being read: conversion is two-pass (read +
scatter to on-disk partitions, then per partition), with memory O(distinct ids + one partition), not O(log).

Everything is written into a hidden temporary directory beside the output that is renamed into place only when
complete, so a failed or interrupted conversion never leaves partial output (and never destroys an older,
complete dataset at the same place).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mmctr_tf.data import tables as tables_lib
from mmctr_tf.data.converters.events import AttrTable, EventLog, ItemInfo
from mmctr_tf.data.converters.output import (
    ITEM_TEXT_FILE,
    MAP_FILES,
    PROGRESS_DIR,
    WORK_DIR,
    atomic_output_dir,
    resumable_output_dir,
    write_tsv,
)
from mmctr_tf.data.converters.protocol import ProtocolConfig, WriteConfig
from mmctr_tf.data.converters.raw_ids import id_order, iter_decoded
from mmctr_tf.data.converters.reading import ConversionError, LineErrors
from mmctr_tf.data.schema import SPLITS, Schema, write_json_atomic, write_manifest
from mmctr_tf.data.tfrecord import ShardedWriter

# Test hook: called with the partition index after each partition's shards are complete and recorded.
_PARTITION_DONE_HOOK: Optional[Callable[[int], None]] = None


def _segments(sorted_users: np.ndarray, num_users: int) -> np.ndarray:
    """starts[u-1] .. starts[u] is the segment of user id u (1..num_users) in a user-sorted array."""
    return np.searchsorted(sorted_users, np.arange(1, num_users + 2), side="left")


def _final_ids(raw_sorted: np.ndarray, keep: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(final id 1..K of each temporary index, 0 where not kept; the kept raw ids in final-id order)."""
    idx = np.flatnonzero(keep)
    order = id_order(raw_sorted[idx])
    final = np.zeros(len(raw_sorted), np.int64)
    final[idx[order]] = np.arange(1, len(idx) + 1)
    return final, raw_sorted[idx[order]]


def _attr_ids(source: Union[Dict[str, str], AttrTable], items_raw: np.ndarray):
    """(attribute id per item id [V] (0 = none), attribute raw values in id order, items without a value)."""
    table = source if isinstance(source, AttrTable) else AttrTable.from_dict(source)
    vals = table.get(items_raw)
    has = vals != b""
    uniq = np.unique(vals[has]) if has.any() else np.zeros(0, "S1")
    order = id_order(uniq)
    final_of_sorted = np.zeros(len(uniq), np.int64)
    final_of_sorted[order] = np.arange(1, len(uniq) + 1)
    arr = np.zeros(len(items_raw) + 1, np.int64)
    arr[1:][has] = final_of_sorted[np.searchsorted(uniq, vals[has])]
    return arr, uniq[order], int((~has).sum())


_PART_DTYPE = np.dtype([("u", "<i8"), ("i", "<i8"), ("t", "<f8"), ("y", "i1"), ("o", "<i8")])


class _Partitions:
    """The events split into P partitions by temporary user index range [bounds[p], bounds[p+1]): in memory for
    P = 1, else scattered once into one flat file per partition under `work_dir`."""

    def __init__(self, events: EventLog, P: int, work_dir: str):
        n_users = len(events.users)
        self.P = P
        self.bounds = np.array([(p * n_users) // P for p in range(P + 1)], np.int64)
        self._mem = None
        if P == 1:
            u, i, t, y = events.arrays()
            self._mem = (u, i, t, y, np.arange(len(u), dtype=np.int64))
            return
        shutil.rmtree(work_dir, ignore_errors=True)
        os.makedirs(work_dir)
        self.paths = [os.path.join(work_dir, f"part-{p:05d}.events") for p in range(P)]
        files = [open(path, "wb") for path in self.paths]
        try:
            for u, i, t, y, start in events.chunks():
                rec = np.empty(len(u), _PART_DTYPE)
                rec["u"], rec["i"], rec["t"], rec["y"] = u, i, t, y
                rec["o"] = start + np.arange(len(u))
                part = np.searchsorted(self.bounds, u, side="right") - 1
                order = np.argsort(part, kind="stable")
                cuts = np.searchsorted(part[order], np.arange(P + 1))
                for p in range(P):
                    if cuts[p + 1] > cuts[p]:
                        rec[order[cuts[p]:cuts[p + 1]]].tofile(files[p])
        finally:
            for f in files:
                f.close()

    def load(self, p: int):
        """(user temp index, item temp index, time, label, file-order index) of partition p, in file order."""
        if self._mem is not None:
            return self._mem
        rec = np.fromfile(self.paths[p], _PART_DTYPE)
        return rec["u"], rec["i"], rec["t"], rec["y"], rec["o"]

    def digest(self, p: int) -> str:
        h = hashlib.sha256()
        if self._mem is not None:
            for a in self._mem:
                h.update(np.ascontiguousarray(a).tobytes())
        else:
            with open(self.paths[p], "rb") as f:
                for blk in iter(lambda: f.read(1 << 24), b""):
                    h.update(blk)
        return h.hexdigest()


def _truncate(u_sorted: np.ndarray, lo: int, hi: int, max_behaviors: int) -> np.ndarray:
    """Mask of the `max_behaviors` most recent events of each user in a (user, time)-sorted array of user ids
    in [lo, hi) (0 = all)."""
    if not max_behaviors:
        return np.ones(len(u_sorted), bool)
    ends = np.searchsorted(u_sorted, np.arange(lo + 1, hi + 1), side="left")  # segment end of user lo + k
    return (ends[u_sorted - lo] - np.arange(len(u_sorted))) <= max_behaviors


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
    n_read = len(events)
    if n_read == 0:
        why = "; ".join(f"{os.path.basename(e.path)}: {e.count} malformed line(s), e.g. {', '.join(e.examples[:2])}"
                        for e in read_errors if e.count)
        raise ConversionError(f"dataset '{name}': the raw files hold no valid interaction"
                              + (f" ({why})" if why else ""))
    users_sorted = events.users.sorted()
    items_sorted = events.items.sorted()
    users_read, NI = len(users_sorted), len(items_sorted)
    P = max(1, math.ceil(n_read / max(1, write.partition_events)))
    staging = (resumable_output_dir(out_dir, name, log=log) if write.resume
               else atomic_output_dir(out_dir, name, log=log))
    with staging as tmp:
        parts = _Partitions(events, P, os.path.join(tmp, WORK_DIR))
        if P > 1:
            log(f"[convert] {n_read} events of {users_read} users scattered into {P} partitions")

        # Pass 1 over the partitions: users with enough events, the max_behaviors most recent events of each,
        # the items they hold (-> item vocabulary) and their frequencies.
        keep_user = np.zeros(users_read, bool)
        item_used = np.zeros(NI, bool)
        item_count = np.zeros(NI, np.int64) if cfg.negatives == "popularity" else None
        events_kept = events_in_kept_users = 0
        digests = []
        for p in range(P):
            u, i, t, _, o = parts.load(p)
            digests.append(parts.digest(p))
            lo, hi = int(parts.bounds[p]), int(parts.bounds[p + 1])
            kp = np.bincount(u - lo, minlength=hi - lo) >= cfg.min_behaviors
            keep_user[lo:hi] = kp
            ev = kp[u - lo]
            u, i, t, o = u[ev], i[ev], t[ev], o[ev]
            events_in_kept_users += len(u)
            order = np.lexsort((o, t, u))  # by user, time, file order
            u, i = u[order], i[order]
            iT = i[_truncate(u, lo, hi, cfg.max_behaviors)]
            events_kept += len(iT)
            item_used[iT] = True
            if item_count is not None:
                item_count += np.bincount(iT, minlength=NI)
            del u, i, t, o, order, iT
        U = int(keep_user.sum())
        if not U:
            raise ConversionError(f"dataset '{name}': no user has >= {cfg.min_behaviors} events "
                                  f"({users_read} users, {n_read} events read)")
        if events_kept < events_in_kept_users:
            cut = events_in_kept_users - events_kept
            log(f"[convert] warning: only the {cfg.max_behaviors} most recent events of each user are kept "
                f"(--max_behaviors={cfg.max_behaviors}): {cut} of {events_in_kept_users} events of the kept users "
                f"({100.0 * cut / events_in_kept_users:.1f}%) are dropped; --max_behaviors=0 keeps them all")

        # Final ids: raw ids of kept users / used items / their attributes in the deterministic order.
        user_final, users_raw = _final_ids(users_sorted, keep_user)
        item_final, items_raw = _final_ids(items_sorted, item_used)
        V = len(items_raw) + 1
        attr_names = ["cate_id"] + (["brand_id"] if info.brand is not None else [])
        attr_of: Dict[str, np.ndarray] = {}
        attr_raw: Dict[str, np.ndarray] = {}
        attr_missing: Dict[str, int] = {}
        for attr in attr_names:
            attr_of[attr], attr_raw[attr], attr_missing[attr] = _attr_ids(
                info.cate if attr == "cate_id" else info.brand, items_raw)
        schema = Schema(seq_len=cfg.seq_len,
                        vocab={"user_id": max(U + 1, 2), "item_id": max(V, 2),
                               **{a: max(len(attr_raw[a]) + 1, 2) for a in attr_names}},
                        modalities={})
        pop = None
        if item_count is not None:
            pop = np.zeros(V, np.int64)
            pop[item_final[item_used]] = item_count[item_used]

        # Vector tables are checked (shapes, alignment) before any example is written.
        tables, table_info = vectors_lib.build_tables(vector_sources, items_raw, write, tmp_dir=tmp, log=log)
        schema = dataclasses.replace(schema, modalities={m: t.dim for m, t in tables.items()})

        # Pass 2: examples, partition by partition; finished partitions of an earlier run are reused.
        per_part = max(1, math.ceil(write.num_shards / P))
        fingerprint = _fingerprint(cfg, write, schema, P, per_part, n_read,
                                   [users_raw, items_raw, user_final, item_final] + [attr_of[a] for a in attr_names]
                                   + ([pop] if pop is not None else []))
        done = _finished_partitions(tmp, fingerprint, digests, write.resume, log)
        summaries: Dict[int, dict] = dict(done)
        for p in range(P):
            if p in done:
                continue
            summaries[p] = _write_partition(
                tmp, p, parts, digests[p], keep_user, user_final, item_final, V, attr_of, pop, schema, cfg, write,
                per_part, P * per_part)
            write_json_atomic(os.path.join(tmp, PROGRESS_DIR, f"part-{p:05d}.json"), summaries[p])
            if P > 1:
                ex = sum(e["examples"] for e in summaries[p]["splits"].values())
                log(f"[convert] partition {p + 1}/{P}: {ex} examples ({time.time() - t0:.0f} s)")
            if _PARTITION_DONE_HOOK is not None:
                _PARTITION_DONE_HOOK(p)
        negatives_unavailable = sum(summaries[p]["negatives_unavailable"] for p in range(P))
        del parts
        for d in (PROGRESS_DIR, WORK_DIR):
            shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)

        manifest = {"name": name, "source": source, "schema": schema.to_dict(),
                    "compression": write.compression or "", "splits": {}, "tables": {},
                    "protocol": {**dataclasses.asdict(cfg), "description": cfg.describe()}}
        total_examples = total_pos = 0
        for s in SPLITS:
            parts = [summaries[p]["splits"][s] for p in range(P)]
            entry = {"files": [f for e in parts for f in e["files"]], "examples": 0, "positives": 0, "oov": {},
                     "max_id": {}, "users": 0}
            # (absent when a partition finished by a version that did not count examples per file was resumed)
            if all("file_examples" in e for e in parts):
                entry["file_examples"] = [n for e in parts for n in e["file_examples"]]
            for e in parts:
                entry["examples"] += e["examples"]
                entry["positives"] += e["positives"]
                entry["users"] += e["users"]
                for k, v in e["oov"].items():
                    entry["oov"][k] = entry["oov"].get(k, 0) + v
                for k, v in e.get("max_id", {}).items():
                    entry["max_id"][k] = max(entry["max_id"].get(k, 0), v)
            n = entry["examples"]
            entry["positive_rate"] = float(entry["positives"] / n) if n else 0.0
            manifest["splits"][s] = entry
            total_examples += n
            total_pos += entry["positives"]
        for m, table in tables.items():
            manifest["tables"][m] = {**tables_lib.save_table(os.path.join(tmp, "tables"), m, table),
                                     **table_info[m]}

        # id maps (row k <-> id k) so vectors and serving can be aligned with the raw ids.
        write_tsv(os.path.join(tmp, MAP_FILES["user_id"]), ["user_id", "raw_id"],
                  ((k + 1, r) for k, r in enumerate(iter_decoded(users_raw))))
        header = ["item_id", "raw_id"] + attr_names
        write_tsv(os.path.join(tmp, MAP_FILES["item_id"]), header,
                  ([k + 1, r] + [int(attr_of[a][k + 1]) for a in attr_names]
                   for k, r in enumerate(iter_decoded(items_raw))))
        for a in attr_names:
            write_tsv(os.path.join(tmp, MAP_FILES[a]), [a, "raw_value"],
                      ((k + 1, r) for k, r in enumerate(iter_decoded(attr_raw[a]))))
        maps = {a: MAP_FILES[a] for a in ["user_id", "item_id"] + attr_names}
        items_with_text = 0
        if info.text is not None:
            counter = [0]

            def text_rows():
                for k, r in enumerate(iter_decoded(items_raw)):
                    t = info.text.get(r, "") or ""
                    counter[0] += bool(t.strip())
                    yield k + 1, t

            write_tsv(os.path.join(tmp, ITEM_TEXT_FILE), ["item_id", "text"], text_rows())
            items_with_text = counter[0]
            maps["text"] = ITEM_TEXT_FILE
        manifest["maps"] = maps

        n_items = V - 1
        manifest["stats"] = {
            "users": U,
            "items": n_items,
            "categories": len(attr_raw["cate_id"]),
            **({"brands": len(attr_raw["brand_id"])} if "brand_id" in attr_raw else {}),
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
            "events_kept": int(events_kept),
            "events_beyond_max_behaviors": int(events_in_kept_users - events_kept),
            "negatives_unavailable": int(negatives_unavailable),
            "malformed_lines": {os.path.basename(e.path): e.count for e in read_errors},
            "read_errors": [e.to_dict() for e in read_errors],
            "partitions": P,
            "partitions_reused": len(done),
            "seconds": round(time.time() - t0, 2),
        }
        if raw_files:
            manifest["raw_files"] = {k: (os.path.abspath(v) if v else None) for k, v in raw_files.items()}
        if extra:
            manifest.update(extra)
        write_manifest(tmp, manifest)
    return manifest


def _fingerprint(cfg: ProtocolConfig, write: WriteConfig, schema: Schema, P: int, per_part: int, n_read: int,
                 arrays: Sequence[np.ndarray]) -> str:
    """What the shards of a partition depend on besides its own events: settings, schema and every id map."""
    h = hashlib.sha256(json.dumps({
        "protocol": dataclasses.asdict(cfg), "schema": schema.to_dict(), "partitions": P, "shards": per_part,
        "events": n_read, "write": {"num_shards": write.num_shards, "compression": write.compression or "",
                                    "partition_events": write.partition_events}}, sort_keys=True).encode())
    for a in arrays:
        h.update(str(a.dtype).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _finished_partitions(tmp: str, fingerprint: str, digests: List[str], resume: bool, log) -> Dict[int, dict]:
    """Summaries of the partitions an earlier run of the same conversion finished (resume); otherwise clears any
    shard or progress left in `tmp` and records the fingerprint."""
    prog = os.path.join(tmp, PROGRESS_DIR)
    fp_path = os.path.join(prog, "fingerprint.json")
    done: Dict[int, dict] = {}
    if resume and os.path.exists(fp_path):
        try:
            with open(fp_path) as f:
                same = json.load(f).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            same = False
        if same:
            for fn in sorted(os.listdir(prog)):
                if not (fn.startswith("part-") and fn.endswith(".json")):
                    continue
                try:
                    with open(os.path.join(prog, fn)) as f:
                        summ = json.load(f)
                    p = int(summ["partition"])
                except (OSError, ValueError, KeyError):
                    continue
                files = [x for e in summ["splits"].values() for x in e["files"]]
                if (p < len(digests) and summ.get("digest") == digests[p]
                        and all(os.path.exists(os.path.join(tmp, x)) for x in files)):
                    done[p] = summ
            if done:
                log(f"[convert] resuming: {len(done)} of {len(digests)} partitions already written in {tmp}")
        else:
            log(f"[convert] {tmp}: left by a different conversion (inputs or settings changed); starting over")
    if not done:
        shutil.rmtree(prog, ignore_errors=True)
        for fn in os.listdir(tmp):
            if ".tfrecord" in fn:
                os.remove(os.path.join(tmp, fn))
    os.makedirs(prog, exist_ok=True)
    write_json_atomic(fp_path, {"fingerprint": fingerprint})
    return done


def _write_partition(tmp, p, parts: _Partitions, digest, keep_user, user_final, item_final, V, attr_of, pop,
                     schema: Schema, cfg: ProtocolConfig, write: WriteConfig, per_part: int, total_shards: int):
    """Examples of the users of partition p into its shards; returns the partition's summary."""
    u, i, t, y, o = parts.load(p)
    ev = keep_user[u]
    uf = user_final[u[ev]]
    i, t, y, o = i[ev], t[ev], y[ev], o[ev]
    order = np.lexsort((o, t, uf))  # by user, time, file order
    uf, i, y = uf[order], i[order], y[order].astype(np.int64)
    del u, t, o, order, ev
    users_p = np.unique(uf)  # final ids of the partition's users; local id k <-> users_p[k - 1]
    n_p = len(users_p)
    uF = np.searchsorted(users_p, uf) + 1
    startsF = _segments(uF, n_p)
    keepT = _truncate(uF, 1, n_p + 1, cfg.max_behaviors)
    uT, yT = uF[keepT], y[keepT]
    iF = item_final[i]  # 0 for items outside the vocabulary (only in truncated-away events)
    iT = iF[keepT]
    startsT = _segments(uT, n_p)
    lensT = np.diff(startsT)
    # partition 0 draws from the streams of the former single-pass conversion (P = 1 output unchanged)
    rng = np.random.default_rng(cfg.seed if p == 0 else [cfg.seed, 2, p])
    row_rng = np.random.default_rng([cfg.seed, 1] if p == 0 else [cfg.seed, 3, p])
    sampler = _NegativeSampler(V, pop, rng) if cfg.split == "din" else None
    writers = {s: ShardedWriter(tmp, s, schema, per_part, write.compression or None, first_shard=p * per_part,
                                total_shards=total_shards) for s in SPLITS}
    split_users = {s: 0 for s in SPLITS}
    negatives_unavailable = 0
    try:
        a = 1
        while a <= n_p:
            # users a..b-1, about chunk_events kept events
            b = int(np.searchsorted(startsT, startsT[a - 1] + cfg.chunk_events, side="right"))
            b = min(max(b, a + 1), n_p + 1)
            blocks, n_unavail = _chunk_examples(a, b, uT, iT, yT, startsT, lensT, uF, iF, startsF, cfg, attr_of,
                                                sampler, V)
            negatives_unavailable += n_unavail
            for s_idx, s in enumerate(SPLITS):
                cols = blocks[s_idx]
                if cols is not None and len(cols["label"]):
                    cols["user_id"] = users_p[cols["user_id"] - 1]
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
    return {"partition": p, "digest": digest, "events": int(len(uF)), "negatives_unavailable": negatives_unavailable,
            "splits": {s: {**writers[s].summary(), "users": split_users[s]} for s in SPLITS}}


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
