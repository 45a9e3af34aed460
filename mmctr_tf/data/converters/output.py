"""The output directory of a conversion: atomic and resumable staging, id-map and text TSV files."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence

from mmctr_tf.data.schema import SchemaError

MAP_FILES = {"user_id": "user_map.tsv", "item_id": "item_map.tsv", "cate_id": "cate_map.tsv",
             "brand_id": "brand_map.tsv"}
ITEM_TEXT_FILE = "item_text.tsv"


PROGRESS_DIR = ".progress"
WORK_DIR = ".work"


def _swap_into_place(tmp: str, out_dir: str) -> None:
    parent, base = os.path.split(os.path.abspath(out_dir))
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rmdir(old)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


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
    _swap_into_place(tmp, out_dir)


def partial_dir(out_dir: str) -> str:
    """Where a restartable conversion of `out_dir` is staged: `.<name>.partial` beside it."""
    out = os.path.abspath(out_dir.rstrip("/") or out_dir)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")


@contextlib.contextmanager
def resumable_output_dir(out_dir: str, log=print):
    """Like `atomic_output_dir`, but staged in the fixed `partial_dir(out_dir)`, kept after a failure when it holds
    finished partitions (`.progress/part-*.json`), so that the same conversion can resume."""
    out_dir = out_dir.rstrip("/") or out_dir
    tmp = partial_dir(out_dir)
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        prog = os.path.join(tmp, PROGRESS_DIR)
        if os.path.isdir(prog) and any(f.startswith("part-") for f in os.listdir(prog)):
            log(f"[convert] interrupted: finished partitions kept in {tmp}; run the same command again to resume")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for d in (PROGRESS_DIR, WORK_DIR):
        shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
    _swap_into_place(tmp, out_dir)


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
