"""Reading raw files: text files (gzip or not), errors that name the file, per-file malformed-line counts."""

from __future__ import annotations

import gzip
import io
import os
from typing import List, Optional

from mmctr_tf.data.schema import SchemaError

MAX_ID_CHARS = 256  # longer raw ids are malformed lines (ids are stored as fixed-width byte arrays)


def id_problem(*raw_ids: str) -> Optional[str]:
    """Why one of these raw ids cannot be an id (None when all can): longer than MAX_ID_CHARS, or holding a NUL
    byte (fixed-width byte arrays drop trailing NULs, so 'a\\0' would become 'a'; id maps are text files)."""
    for raw in raw_ids:
        if len(raw) > MAX_ID_CHARS:
            return f"longer than {MAX_ID_CHARS} characters"
        if "\x00" in raw:
            return "contains a NUL byte"
    return None


class RawFilesMissing(SchemaError):
    """The raw files a converter needs are not where they were looked for; the message says what to put where."""


class ConversionError(SchemaError):
    """A raw file is unusable as a whole (wrong columns, wrong shape); the message names the file."""


def open_text(path: str, encoding: str = "utf-8"):
    """Opens a text file, transparently gunzipping `*.gz`; undecodable bytes are replaced, never fatal. UTF-8 is read
    as 'utf-8-sig': a byte-order mark at the start (as some spreadsheet programs write) is not part of the first
    column's name."""
    if encoding.lower().replace("-", "").replace("_", "") == "utf8":
        encoding = "utf-8-sig"
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
