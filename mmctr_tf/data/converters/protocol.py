"""How examples are built from event sequences (`ProtocolConfig`: the DIN protocol or a time-fraction split) and
how they are written (`WriteConfig`)."""

from __future__ import annotations

import dataclasses

from mmctr_tf.data.schema import SchemaError


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
    # Users are processed in partitions of about this many events (memory: one partition; see the module doc).
    partition_events: int = 2_000_000
    # Restartable: stage in .<name>.partial/ and keep finished partitions after a failure or kill.
    resume: bool = False
