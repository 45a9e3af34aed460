"""Reading raw files: text files (gzip or not), errors that name the file, per-file malformed-line counts."""

from __future__ import annotations

import gzip
import io
import os
from typing import List

from mmctr_tf.data.schema import SchemaError

MAX_ID_CHARS = 256  # longer raw ids are malformed lines (ids are stored as fixed-width byte arrays)


class RawFilesMissing(SchemaError):
    """The raw files a converter needs are not where they were looked for; the message says what to put where."""


class ConversionError(SchemaError):
    """A raw file is unusable as a whole (wrong columns, wrong shape); the message names the file."""


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
