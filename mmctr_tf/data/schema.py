"""The data contract (SPEC §1): one `Schema` object is the single source of truth.

Every other part of the project (TFRecord writer and reader, the models' inputs, the serving signatures, the
converters) derives feature names, dtypes, the sequence length and the vocabulary sizes from a `Schema`, which is
stored in each dataset's `manifest.json`.

Conventions fixed here:
  * id 0 is padding / unknown (out of vocabulary) for every id feature; real ids are 1..vocab-1.
  * history sequences are RIGHT-padded: slots 0..hist_len-1 are valid, oldest first, the most recent behaviour at
    slot hist_len-1; slots >= hist_len hold 0.  The validity mask is `arange(L) < hist_len`.
  * frozen modality vectors are not stored in examples; they live in one item-indexed table per modality.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Tuple

MANIFEST = "manifest.json"
SPLITS = ("train", "valid", "test")

# Target-side categorical features that may have a history twin (`hist_<name>`).
ITEM_SIDE_FEATURES = ("item_id", "cate_id", "brand_id", "seller_id")


class SchemaError(ValueError):
    """A dataset, file or request does not match the schema; the message names the file and the field."""


@dataclasses.dataclass
class Schema:
    """Feature layout of one dataset.

    Attributes:
      seq_len: L, the history length every example is padded/truncated to.
      vocab: vocabulary size per id feature, including row 0 (so valid ids are 1..size-1). Must contain
        `user_id`, `item_id` and `cate_id`; may contain `brand_id`, `seller_id`.
      modalities: frozen vector dimension per modality name, e.g. {"text": 512, "image": 512}. Tables are indexed
        by `item_id`.
      optional: extra scalar int64 features present in the files (`request_id`, `ts`).
    """

    seq_len: int
    vocab: Dict[str, int]
    modalities: Dict[str, int] = dataclasses.field(default_factory=dict)
    optional: Tuple[str, ...] = ()

    def __post_init__(self):
        self.vocab = {k: int(v) for k, v in self.vocab.items()}
        self.modalities = {k: int(v) for k, v in self.modalities.items()}
        self.optional = tuple(self.optional)
        for name in ("user_id", "item_id", "cate_id"):
            if name not in self.vocab:
                raise SchemaError(f"schema: vocab has no entry for required field '{name}'")
        for name in self.vocab:
            if name != "user_id" and name not in ITEM_SIDE_FEATURES:
                raise SchemaError(f"schema: unknown id field '{name}' "
                                  f"(allowed: user_id, {', '.join(ITEM_SIDE_FEATURES)})")
        for name, size in self.vocab.items():
            if size < 2:
                raise SchemaError(f"schema: vocab size of '{name}' is {size}; it must be >= 2 (row 0 is padding/OOV)")
        if self.seq_len < 1:
            raise SchemaError(f"schema: seq_len must be >= 1, got {self.seq_len}")
        for name in self.optional:
            if name not in ("request_id", "ts"):
                raise SchemaError(f"schema: unknown optional field '{name}' (allowed: request_id, ts)")

    # ----------------------------------------------------------------------------------------------- names
    @property
    def item_features(self) -> List[str]:
        """Target-side id features, `item_id` first (e.g. ['item_id', 'cate_id'])."""
        return [n for n in ITEM_SIDE_FEATURES if n in self.vocab]

    @property
    def hist_features(self) -> List[str]:
        return ["hist_" + n for n in self.item_features]

    @property
    def id_features(self) -> List[str]:
        """All id inputs a model takes: user, target and history ids."""
        return ["user_id"] + self.item_features + self.hist_features

    @property
    def model_inputs(self) -> List[str]:
        """Every feature a model (and the serving signature) takes, without the label."""
        return self.id_features + ["hist_len"]

    def vocab_of(self, feature: str) -> int:
        """Vocabulary size of an id feature; `hist_x` shares the vocabulary of `x`."""
        base = feature[5:] if feature.startswith("hist_") else feature
        return self.vocab[base]

    # ----------------------------------------------------------------------------------------------- parsing
    def feature_names(self, with_label: bool = True) -> List[str]:
        """The TFRecords' features in `feature_spec` order (the writer's encoding order), without TensorFlow."""
        names = ["user_id"] + self.item_features + ["hist_len"] + list(self.optional) + self.hist_features
        return names + ["label"] if with_label else names

    def feature_spec(self, with_label: bool = True):
        """`tf.io.parse_example` spec of the TFRecords (fixed-length, parse-after-batch)."""
        import tensorflow as tf

        spec = {}
        for name in self.feature_names(with_label):
            if name == "label":
                spec[name] = tf.io.FixedLenFeature([], tf.float32)
            else:
                spec[name] = tf.io.FixedLenFeature([self.seq_len] if name in self.hist_features else [], tf.int64)
        return spec

    def serving_spec(self):
        """Spec for the serialized `tf.Example` serving signature: histories of any length (truncated by the model
        to the most recent `seq_len`), missing optional parts default to empty/0."""
        import tensorflow as tf

        spec = {}
        for name in ["user_id"] + self.item_features:
            spec[name] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        spec["hist_len"] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        for name in self.hist_features:
            spec[name] = tf.io.RaggedFeature(tf.int64)
        return spec

    # ----------------------------------------------------------------------------------------------- io
    def to_dict(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "vocab": dict(self.vocab),
            "modalities": dict(self.modalities),
            "optional": list(self.optional),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "schema") -> "Schema":
        try:
            return cls(
                seq_len=int(d["seq_len"]),
                vocab=d["vocab"],
                modalities=d.get("modalities", {}),
                optional=tuple(d.get("optional", ())),
            )
        except KeyError as e:
            raise SchemaError(f"{source}: schema has no field {e}") from None


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_jsonl(path: str) -> List[dict]:
    """The rows of a JSON-lines file written by appending (`epochs.jsonl`); [] when it does not exist.

    A final line without its newline that does not parse is the row a killed process was writing: it is dropped.
    Any other line that does not parse is an error naming the file and the line."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            if n == len(lines):  # no newline after it: torn by a kill while it was written
                break
            raise SchemaError(f"{path}: line {n} is not valid JSON ({e})") from None
    return rows


def read_manifest(data_dir: str) -> dict:
    """Reads `<data_dir>/manifest.json`, checking the parts every consumer relies on."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        raise SchemaError(f"{path}: no manifest (is '{data_dir}' a converted dataset? run `python -m run.make_data`)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON ({e})") from None
    for key in ("schema", "splits"):
        if key not in manifest:
            raise SchemaError(f"{path}: manifest has no field '{key}'")
    manifest["schema_obj"] = Schema.from_dict(manifest["schema"], source=path)
    check_max_ids(manifest, path)
    return manifest


def check_max_ids(manifest: dict, source: str) -> None:
    """Raises SchemaError when a split's recorded largest id (`max_id`, written by the converters) is not inside
    the manifest's vocabulary: the manifest does not describe its shards, whose ids a model would read as
    out-of-vocabulary."""
    vocab = manifest["schema"]["vocab"]
    for split, entry in manifest["splits"].items():
        for field, top in (entry.get("max_id") or {}).items():
            base = field[5:] if field.startswith("hist_") else field
            if base in vocab and top >= vocab[base]:
                raise SchemaError(f"{source}: split '{split}' holds {field} ids up to {top}, but the vocabulary of "
                                  f"'{base}' has {vocab[base]} rows (ids 0..{vocab[base] - 1}): the manifest does not "
                                  f"describe its shards (convert the dataset again)")


def schema_of(data_dir: str) -> Schema:
    return read_manifest(data_dir)["schema_obj"]


def write_manifest(data_dir: str, manifest: dict) -> None:
    manifest = {k: v for k, v in manifest.items() if k != "schema_obj"}
    check_max_ids(manifest, os.path.join(data_dir, MANIFEST))
    write_json_atomic(os.path.join(data_dir, MANIFEST), manifest)
