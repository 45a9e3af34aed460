"""The output directory of a conversion: claimed (locked, and replaced only when it is a dataset of the same
name), atomic and resumable staging, id-map and text TSV files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence

from mmctr_tf import locks
from mmctr_tf.data.schema import MANIFEST, SchemaError

MAP_FILES = {"user_id": "user_map.tsv", "item_id": "item_map.tsv", "cate_id": "cate_map.tsv",
             "brand_id": "brand_map.tsv"}
ITEM_TEXT_FILE = "item_text.tsv"


PROGRESS_DIR = ".progress"
WORK_DIR = ".work"


class OutputDirRefused(ValueError):
    """The output directory exists and is not a dataset of the same name: a conversion never replaces it."""


def check_replaceable(out_dir: str, name: str, source: str = "") -> None:
    """Raises OutputDirRefused unless `out_dir` is absent, an empty directory, or a converted dataset named `name`
    (whose manifest's `source` starts with `source`, when given): the only directories a conversion may replace."""
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        raise OutputDirRefused(f"{out_dir}: exists and is not a directory; choose another --out_dir")
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise OutputDirRefused(
            f"{out_dir}: exists and is not a converted dataset (no {MANIFEST}; it holds "
            f"{', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); a conversion replaces its output "
            f"directory as a whole, so it writes only into a new or empty directory or over a dataset of the same "
            f"name: choose another --out_dir") from None
    except (OSError, ValueError) as e:
        raise OutputDirRefused(f"{path}: unreadable ({e}); {out_dir} is not replaced: choose another --out_dir "
                               f"or remove it yourself") from None
    old = manifest.get("name") if isinstance(manifest, dict) else None
    old_source = str(manifest.get("source", "")) if isinstance(manifest, dict) else ""
    if old != name or not old_source.startswith(source):
        raise OutputDirRefused(f"{out_dir}: holds dataset '{old}' (source {old_source or '?'}), not '{name}'"
                               + (f" from {source}" if source else "") + "; a conversion replaces only a dataset of "
                               "the same name: choose another --out_dir")


def _swap_into_place(tmp: str, out_dir: str, name: str, source: str) -> None:
    check_replaceable(out_dir, name, source)  # again: the lock keeps conversions out, not other programs
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
def claimed_output_dir(out_dir: str, name: str, source: str = "", log=print):
    """Holds the lock of `out_dir` (`mmctr_tf.locks`: a second conversion into it is refused, naming the holder's
    pid) and checks that it may be replaced (`check_replaceable`) before anything is written."""
    with locks.hold(out_dir, f"the conversion of '{name}'", log=log):
        check_replaceable(out_dir, name, source)
        yield


@contextlib.contextmanager
def atomic_output_dir(out_dir: str, name: str, source: str = "", log=print):
    """Yields a fresh hidden temp dir beside `out_dir`; on success it replaces `out_dir`, on failure it is deleted.
    `out_dir` is claimed first (`claimed_output_dir`)."""
    out_dir = out_dir.rstrip("/") or out_dir
    with claimed_output_dir(out_dir, name, source, log=log):
        parent = os.path.dirname(os.path.abspath(out_dir))
        base = os.path.basename(os.path.abspath(out_dir))
        tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
        os.chmod(tmp, 0o755)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _swap_into_place(tmp, out_dir, name, source)


def partial_dir(out_dir: str) -> str:
    """Where a restartable conversion of `out_dir` is staged: `.<name>.partial` beside it."""
    out = os.path.abspath(out_dir.rstrip("/") or out_dir)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")


def finished_partitions(out_dir: str) -> int:
    """Partitions a killed restartable conversion of `out_dir` has finished (kept in `partial_dir(out_dir)`)."""
    prog = os.path.join(partial_dir(out_dir), PROGRESS_DIR)
    return sum(f.startswith("part-") for f in os.listdir(prog)) if os.path.isdir(prog) else 0


@contextlib.contextmanager
def resumable_output_dir(out_dir: str, name: str, log=print):
    """Like `atomic_output_dir`, but staged in the fixed `partial_dir(out_dir)`, kept after a failure when it holds
    finished partitions (`.progress/part-*.json`), so that the same conversion can resume."""
    out_dir = out_dir.rstrip("/") or out_dir
    with claimed_output_dir(out_dir, name, log=log):
        tmp = partial_dir(out_dir)
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o755)
        try:
            yield tmp
        except BaseException as e:
            if not finished_partitions(out_dir):
                shutil.rmtree(tmp, ignore_errors=True)
            elif not isinstance(e, KeyboardInterrupt):  # run.make_data says it in its one line on Ctrl-C
                log(f"[convert] interrupted: finished partitions kept in {tmp}; run the same command again to "
                    f"resume")
            raise
        for d in (PROGRESS_DIR, WORK_DIR):
            shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
        _swap_into_place(tmp, out_dir, name, "")


def _clean_field(s: str) -> str:
    return str(s).replace("\t", " ").replace("\r", " ").replace("\n", " ").replace("\x00", " ")


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
