"""Resolves `--dataset` / `--data_dir` to a converted dataset directory and builds its tf.data splits."""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Tuple

from mmctr_tf.data import schema as schema_lib
from mmctr_tf.data import tables as tables_lib
from mmctr_tf.data.schema import SchemaError
from mmctr_tf.data.tfrecord import make_dataset


def dataset_dir(dataset: str, data_dir: str = "tfrecords") -> str:
    """A name resolves to `<data_dir>/<name>`; anything containing a path separator is used as a path."""
    if os.sep in dataset or dataset.startswith("."):
        return dataset
    return os.path.join(data_dir, dataset)


def ensure_dataset(dataset: str, data_dir: str = "tfrecords", log=print) -> str:
    """Returns the directory of a converted dataset, generating the synthetic defaults on first use."""
    path = dataset_dir(dataset, data_dir)
    if os.path.exists(os.path.join(path, schema_lib.MANIFEST)):
        return path
    if dataset in ("synthetic", "synthetic_industrial"):
        from mmctr_tf.data import synthetic
        from mmctr_tf.data.summary import print_summary

        log(f"[data] generating '{dataset}' into {path} (first use)")
        print_summary(synthetic.build(path, synthetic.config_for(dataset), log=log), path, log=log)
        return path
    from mmctr_tf.data.converters import missing_data_message

    raise SchemaError(missing_data_message(dataset, data_dir))


class Dataset:
    """A converted dataset: manifest, schema, vector tables and per-split tf.data pipelines."""

    def __init__(self, path: str, mmap_tables: bool = False):
        self.path = path
        self._stamp = self._manifest_stamp()  # before reading it: a replacement in between is seen as one
        self.manifest = schema_lib.read_manifest(path)
        self.schema: schema_lib.Schema = self.manifest["schema_obj"]
        self.compression = self.manifest.get("compression") or None
        self._tables = None
        self._mmap = mmap_tables

    def _manifest_stamp(self) -> Optional[str]:
        try:
            with open(os.path.join(self.path, schema_lib.MANIFEST), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None

    def replaced(self) -> bool:
        """Whether the dataset on disk is no longer the one this object opened (its manifest changed or is gone:
        re-converted or replaced), so its shards and ids may not be the ones the manifest read here describes."""
        return self._manifest_stamp() != self._stamp

    @property
    def tables(self):
        if self._tables is None:
            self._tables = tables_lib.load_tables(self.path, self.manifest, mmap=self._mmap)
        return self._tables

    def files(self, split: str):
        if split not in self.manifest["splits"]:
            raise SchemaError(f"{self.path}/manifest.json: no split '{split}' (has {sorted(self.manifest['splits'])})")
        return [os.path.join(self.path, f) for f in self.manifest["splits"][split]["files"]]

    def examples(self, split: str) -> int:
        return int(self.manifest["splits"][split]["examples"])

    def file_examples(self, split: str):
        """Examples per file of `split`, in the order of `files(split)`, or None (manifests written before they were
        recorded)."""
        counts = self.manifest["splits"][split].get("file_examples")
        return None if counts is None else [int(n) for n in counts]

    def tf_dataset(self, split: str, batch_size: int, *, shuffle: bool = False, seed: Optional[int] = None,
                   repeat: bool = False, drop_remainder: bool = False, with_label: bool = True, files=None,
                   shard: Optional[Tuple[int, int]] = None):
        """`shard=(num_shards, index)` reads one part of the split (see `make_dataset`)."""
        num_shards, shard_index = shard or (1, 0)
        return make_dataset(files if files is not None else self.files(split), self.schema, batch_size,
                            compression=self.compression, shuffle=shuffle, seed=seed, repeat=repeat,
                            drop_remainder=drop_remainder, with_label=with_label,
                            num_examples=(self.file_examples(split) or self.examples(split)) if files is None
                            else None,
                            num_shards=num_shards, shard_index=shard_index)
