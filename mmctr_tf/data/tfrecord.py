"""TFRecord writer (sharded, optional GZIP) and tf.data reader (interleave, shuffle, batch, then parse, prefetch).

Examples are `tf.train.Example`s whose features follow `Schema.feature_spec()`. The writer takes columns (numpy
arrays, one row per example), maps ids outside the vocabulary to the OOV row 0 and counts them per field, and
writes each shard to a temporary name that is renamed only when the shard is complete, so an interrupted conversion
never leaves a shard that looks finished.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from mmctr_tf.data.schema import Schema, SchemaError


def compression_suffix(compression: Optional[str]) -> str:
    return ".gz" if compression == "GZIP" else ""


def pad_sequences(seqs: Sequence[Sequence[int]], seq_len: int) -> np.ndarray:
    """Right-pads (or keeps the most recent `seq_len` of) each sequence; oldest first, 0 = padding."""
    out = np.zeros((len(seqs), seq_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = list(s)[-seq_len:]
        out[i, : len(s)] = s
    return out


class ShardedWriter:
    """Streams example columns into `num_shards` TFRecord files `<split>-<k>-of-<n>.tfrecord[.gz]`.

    Use as a context manager; rows are dealt round-robin over shards in blocks so shards stay balanced.
    `oov` counts, per id field, the ids that were outside the vocabulary and written as 0.
    """

    def __init__(self, out_dir: str, split: str, schema: Schema, num_shards: int = 4,
                 compression: Optional[str] = "GZIP"):
        import tensorflow as tf

        if compression not in (None, "", "GZIP"):
            raise SchemaError(f"writer: compression must be '' or 'GZIP', got '{compression}'")
        self._tf = tf
        self.schema = schema
        self.compression = compression or None
        os.makedirs(out_dir, exist_ok=True)
        suffix = compression_suffix(self.compression)
        self.paths = [os.path.join(out_dir, f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord{suffix}")
                      for k in range(num_shards)]
        opts = tf.io.TFRecordOptions(compression_type=self.compression or "")
        self._writers = [tf.io.TFRecordWriter(p + ".tmp", opts) for p in self.paths]
        self._next = 0
        self.count = 0
        self.positives = 0
        self.oov: Dict[str, int] = {}
        self._closed = False

    def write(self, columns: Dict[str, np.ndarray]) -> None:
        """Writes a block of rows. `columns` holds every field of `schema.feature_spec()`."""
        tf = self._tf
        schema = self.schema
        spec = schema.feature_spec(with_label=True)
        missing = [k for k in spec if k not in columns]
        if missing:
            raise SchemaError(f"writer: columns are missing field(s) {missing}")
        n = len(columns["label"])
        cols = {}
        for name in spec:
            arr = np.asarray(columns[name])
            if name == "label":
                arr = arr.astype(np.float32)
                if not np.all((arr == 0) | (arr == 1)):
                    raise SchemaError("writer: field 'label' must be 0 or 1")
            else:
                arr = arr.astype(np.int64)
            if arr.shape[0] != n:
                raise SchemaError(f"writer: field '{name}' has {arr.shape[0]} rows, 'label' has {n}")
            if name.startswith("hist_") and name != "hist_len" and arr.shape[1:] != (schema.seq_len,):
                raise SchemaError(f"writer: field '{name}' must be [rows, {schema.seq_len}], got {arr.shape}")
            if name in schema.vocab or (name.startswith("hist_") and name[5:] in schema.vocab):
                bad = (arr < 0) | (arr >= schema.vocab_of(name))
                nbad = int(bad.sum())
                if nbad:
                    self.oov[name] = self.oov.get(name, 0) + nbad
                    arr = np.where(bad, 0, arr)
            if name == "hist_len":
                arr = np.clip(arr, 0, schema.seq_len)
            cols[name] = arr
        for i in range(n):
            feats = {}
            for name, arr in cols.items():
                v = arr[i]
                if name == "label":
                    feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
                else:
                    vals = v.tolist() if arr.ndim == 2 else [int(v)]
                    feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
            ex = tf.train.Example(features=tf.train.Features(feature=feats))
            self._writers[self._next].write(ex.SerializeToString())
            self._next = (self._next + 1) % len(self._writers)
        self.count += n
        self.positives += int(cols["label"].sum())

    def close(self) -> List[str]:
        if not self._closed:
            for w, p in zip(self._writers, self.paths):
                w.close()
                os.replace(p + ".tmp", p)
            self._closed = True
        return self.paths

    def abort(self) -> None:
        for w, p in zip(self._writers, self.paths):
            w.close()
            if os.path.exists(p + ".tmp"):
                os.remove(p + ".tmp")
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def summary(self) -> dict:
        return {"files": [os.path.basename(p) for p in self.paths], "examples": self.count,
                "positives": self.positives, "oov": dict(self.oov)}


def make_dataset(files: Sequence[str], schema: Schema, batch_size: int, *, compression: Optional[str] = None,
                 shuffle: bool = False, seed: Optional[int] = None, repeat: bool = False,
                 drop_remainder: bool = False, shuffle_buffer: int = 20_000, with_label: bool = True,
                 cycle_length: int = 4, num_examples: Optional[int] = None):
    """tf.data pipeline over TFRecord shards: interleave files in parallel, shuffle, batch, parse the batch, prefetch.

    Yields `(features, label)` (or `features` if `with_label=False`), features being a dict of int64 tensors
    named as in the schema. With `seed` set the order is deterministic. `num_examples` (from the manifest) makes
    the number of batches known to Keras and is checked against the files while reading.
    """
    import tensorflow as tf

    files = list(files)
    if not files:
        raise SchemaError("reader: no TFRecord files given")
    for f in files:
        if not tf.io.gfile.exists(f):
            raise SchemaError(f"{f}: TFRecord shard does not exist")
    deterministic = seed is not None or not shuffle
    spec = schema.feature_spec(with_label=with_label)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression or ""),
        cycle_length=max(1, min(cycle_length, len(files))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if num_examples is not None and not repeat:
        n = num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))

    def parse(serialized):
        feats = tf.io.parse_example(serialized, spec)
        if with_label:
            label = feats.pop("label")
            return feats, label
        return feats

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def find_bad_shard(files: Iterable[str], schema: Schema, compression: Optional[str] = None) -> Optional[str]:
    """Reads each shard on its own and returns 'file: reason' for the first that is corrupt or off-schema."""
    import tensorflow as tf

    spec = schema.feature_spec(with_label=True)
    for f in files:
        try:
            ds = tf.data.TFRecordDataset(f, compression_type=compression or "").batch(4096)
            for batch in ds:
                tf.io.parse_example(batch, spec)
        except (tf.errors.OpError, ValueError) as e:
            msg = getattr(e, "message", str(e)).strip().splitlines()[0]
            return f"{f}: {msg}"
    return None
