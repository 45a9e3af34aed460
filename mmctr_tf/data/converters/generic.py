"""Generic converter: an interaction log (CSV, or parquet with pyarrow) + an items file + per-item `.npy` vectors.

Layout in `--raw_dir` (`<prefix>` is empty or e.g. `Beauty.`; every name can be overridden by a flag):
  <prefix>interactions.csv[.gz] | .parquet   one positive behaviour per row: user, item, order/time column
  <prefix>items.csv[.gz] | .parquet          optional: item id, category, text, `row` (vector row of the item)
  <prefix><modality>_vectors.npy             optional: float [rows, d]; row r = the item whose `row` is r in the
                                             items file (line order when there is no `row` column)

Columns are found by name (first match), or given with --user_col / --item_col / --time_col / --category_col /
--text_col:
  user: user_id, userId, user, reviewerID, uid          item: item_id, itemId, movieId, item, asin, iid
  time: seq_pos, timestamp, ts, time, unixReviewTime (numeric; without one, file order is the time order)
  label: label, click, clicked, is_click, rating (optional, numeric; see below)
  category: cate_id, category, categories, attribute_ids, genres, cate   text: text, title, name
The category value is the first token of `attribute_ids` (space separated) or `genres` (`|` separated), the whole
value otherwise (or `--category_split` to set the separator); `--category_regex` (one group; its last match) extracts
it from the category column, or from the text column when there is no category column.

Without a label column every row is a positive behaviour and examples follow the DIN protocol (`ProtocolConfig`,
split="din": one sampled negative per positive). With one (`--label_col`, or a column named as above), every row is
an impression with its own label: value > `--label_threshold` is a click (the threshold is required unless every
value is 0 or 1), the other rows are real non-clicks, and examples follow the time-fraction protocol of logs with
labels (as MovieLens: per user the latest 10% test, the 10% before validation; the history = earlier clicks; no
sampled negatives). The converter prints how many rows became clicks and non-clicks.

Presets (`--dataset=NAME`) for the real data in shared/data:
  scientific   amazon-scientific/: interactions.csv + items.csv (text "title. category path. brand.") +
               text_vectors.npy + image_vectors.npy; category = the category path after its constant first level
               "Industrial & Scientific" (regex on the text); modalities text and image.
  beauty, sports, toys   amazon-s3rec/: <Set>.interactions.csv + <Set>.items.csv; category = first attribute id;
               no vectors (no modalities).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import os
import re
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from mmctr_tf.data.converters.build import build_dataset
from mmctr_tf.data.converters.events import AttrTable, EventLog, ItemInfo
from mmctr_tf.data.converters.protocol import ProtocolConfig, WriteConfig
from mmctr_tf.data.converters.raw_ids import to_bytes_array
from mmctr_tf.data.converters.reading import ConversionError, LineErrors, RawFilesMissing, id_problem, open_text
from mmctr_tf.data.converters.vectors import VectorSource, npy_source

USER_COLS = ("user_id", "userId", "user", "reviewerID", "uid")
ITEM_COLS = ("item_id", "itemId", "movieId", "item", "asin", "iid")
TIME_COLS = ("seq_pos", "timestamp", "ts", "time", "unixReviewTime")
CATE_COLS = ("cate_id", "category", "categories", "attribute_ids", "genres", "cate")
TEXT_COLS = ("text", "title", "name")
LABEL_COLS = ("label", "click", "clicked", "is_click", "rating")

PRESETS = {
    "scientific": {"prefix": "", "category_regex": r"Industrial & Scientific ([^.]+)\.",
                   "about": "amazon-scientific (shared/data): text + image CLIP vectors"},
    "beauty": {"prefix": "Beauty.", "about": "amazon-s3rec Beauty (shared/data)"},
    "sports": {"prefix": "Sports_and_Outdoors.", "about": "amazon-s3rec Sports_and_Outdoors (shared/data)"},
    "toys": {"prefix": "Toys_and_Games.", "about": "amazon-s3rec Toys_and_Games (shared/data)"},
}


@dataclasses.dataclass
class GenericOptions:
    interactions: Optional[str] = None
    items: Optional[str] = None
    prefix: Optional[str] = None
    user_col: Optional[str] = None
    item_col: Optional[str] = None
    time_col: Optional[str] = None
    category_col: Optional[str] = None
    category_split: Optional[str] = None
    category_regex: Optional[str] = None
    text_col: Optional[str] = None
    label_col: Optional[str] = None
    label_threshold: Optional[float] = None  # value > threshold is a click; None: the values must be 0 / 1
    auto_vectors: bool = True


class ParquetUnavailable(ConversionError):
    pass


def iter_rows(path: str, errors: LineErrors) -> Iterator[Tuple[int, List[str]]]:
    """(line number, fields) of a CSV (header first, as line 1) or parquet file (header = column names)."""
    if path.endswith(".parquet") or path.endswith(".pq"):
        try:
            import pyarrow.parquet as pq  # noqa: F401
        except ImportError:
            raise ParquetUnavailable(f"{path}: reading parquet needs pyarrow, which is not installed "
                                     f"(pip install pyarrow), or save the table as CSV") from None
        pf = pq.ParquetFile(path)
        names = list(pf.schema_arrow.names)
        yield 1, names
        lineno = 1
        for batch in pf.iter_batches(batch_size=65536):
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for row in zip(*cols):
                lineno += 1
                errors.lines = lineno
                yield lineno, ["" if v is None else (str(int(v)) if isinstance(v, float) and v.is_integer()
                                                      else str(v)) for v in row]
        return
    with open_text(path) as f:
        reader = csv.reader(f)
        lineno = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                lineno += 1
                errors.lines = lineno
                errors.add(lineno, f"CSV error: {e}")
                continue
            lineno = reader.line_num
            errors.lines = lineno
            yield lineno, row


def _pick(header: List[str], given: Optional[str], candidates, what: str, path: str, required: bool = True):
    if given:
        if given not in header:
            raise ConversionError(f"{path}: no column '{given}' ({what}); columns are {header}")
        return header.index(given)
    for c in candidates:
        if c in header:
            return header.index(c)
    if required:
        raise ConversionError(f"{path}: no {what} column (looked for {', '.join(candidates)}; columns are {header}); "
                              f"name it with --{what}_col")
    return None


def _find(raw_dir: str, stem: str) -> Optional[str]:
    for ext in (".csv", ".csv.gz", ".parquet", ".pq"):
        p = os.path.join(raw_dir, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def resolve_files(dataset: str, raw_dir: Optional[str], opts: GenericOptions) -> Dict[str, Optional[str]]:
    preset = PRESETS.get(dataset, {})
    prefix = opts.prefix if opts.prefix is not None else preset.get("prefix")
    found = {"interactions": opts.interactions, "items": opts.items, "prefix": prefix}
    if raw_dir and os.path.isdir(raw_dir):
        if prefix is None:
            # `<dataset>.interactions.csv` (case-insensitive), else plain interactions.csv
            prefix = ""
            for p in sorted(glob.glob(os.path.join(raw_dir, "*.interactions.*"))):
                stem = os.path.basename(p).split(".interactions.")[0]
                if stem.lower() == dataset.lower():
                    prefix = stem + "."
            found["prefix"] = prefix
        if not found["interactions"]:
            found["interactions"] = _find(raw_dir, prefix + "interactions")
        if not found["items"]:
            found["items"] = _find(raw_dir, prefix + "items")
    return found


def missing_message(dataset: str, raw_dir: Optional[str], out_dir: Optional[str] = None) -> str:
    where = raw_dir or f"raw/{dataset}"
    preset = PRESETS.get(dataset, {})
    prefix = preset.get("prefix", "")
    out = f" --out_dir={out_dir}" if out_dir else ""
    lines = [f"dataset '{dataset}': no interaction log found in {where}/"]
    if preset:
        lines.append(f"(preset: {preset['about']}; e.g. --raw_dir=../shared/data/"
                     f"{'amazon-scientific' if dataset == 'scientific' else 'amazon-s3rec'})")
    lines += [
        f"Put into {where}/:",
        f"  {prefix}interactions.csv   columns user_id,item_id,seq_pos (or timestamp); one behaviour per row",
        f"  {prefix}items.csv          optional: item_id, category (or attribute_ids), text, row",
        f"  {prefix}<modality>_vectors.npy  optional: float [rows, d], row r = items.csv row r",
        "(or name the files with --interactions=... --items=... --vectors=modality=path.npy@item_list.txt)",
        "Then run:",
        f"  python -m run.make_data --dataset={dataset} --raw_dir={where}{out}",
    ]
    return "\n".join(lines)


def _rows_with_header(path: str, errors: LineErrors):
    """(row iterator positioned after the header, stripped header names) of a CSV/parquet file."""
    rows = iter_rows(path, errors)
    try:
        _, header = next(rows)
    except StopIteration:
        raise ConversionError(f"{path}: empty file (no header)") from None
    return rows, [h.strip() for h in header]


def label_column(dataset: str, raw_dir: Optional[str], opts: GenericOptions) -> Optional[str]:
    """Name of the interaction log's label column (`--label_col`, else the first of LABEL_COLS in its header), or
    None when every row is a positive behaviour (also when the log is not found: `convert` reports that)."""
    path = resolve_files(dataset, raw_dir, opts)["interactions"]
    if not path or not os.path.isfile(path):
        return opts.label_col
    _, header = _rows_with_header(path, LineErrors(path))
    i = _pick(header, opts.label_col, LABEL_COLS, "label", path, required=False)
    return None if i is None else header[i]


def _number(text: str):
    """float(text), or None when it is not a number (NaN included)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return None if value != value else value


def read_interactions(path: str, events: EventLog, opts: GenericOptions) -> Tuple[LineErrors, str, Dict[str, int]]:
    """Reads the log into `events` (with each row's label when `events.with_labels`); returns the errors, the time
    order used, and the label counts {"clicks", "non_clicks"}."""
    errors = LineErrors(path)
    rows, header = _rows_with_header(path, errors)
    ui = _pick(header, opts.user_col, USER_COLS, "user", path)
    ii = _pick(header, opts.item_col, ITEM_COLS, "item", path)
    ti = _pick(header, opts.time_col, TIME_COLS, "time", path, required=False)
    li = _pick(header, opts.label_col, LABEL_COLS, "label", path, required=False) if events.with_labels else None
    need = max(x for x in (ui, ii, ti, li) if x is not None) + 1
    order = f"column '{header[ti]}'" if ti is not None else "file order (no time column)"
    counts = {"clicks": 0, "non_clicks": 0}
    n = 0
    for lineno, row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) < need:
            errors.add(lineno, f"expected >= {need} fields, got {len(row)}")
            continue
        user, item = row[ui].strip(), row[ii].strip()
        if not user or not item:
            errors.add(lineno, "empty user or item id")
            continue
        if ti is not None:
            t = _number(row[ti])
            if t is None:
                errors.add(lineno, f"time value {row[ti]!r} is not numeric")
                continue
        else:
            t = float(n)
        label = None
        if li is not None:
            value = _number(row[li])
            if value is None:
                errors.add(lineno, f"label value {row[li]!r} is not numeric")
                continue
            if opts.label_threshold is None and value not in (0.0, 1.0):
                raise ConversionError(f"{path}: line {lineno}: label column '{header[li]}' holds {row[li]!r}, not "
                                      f"0 or 1: give --label_threshold (rows whose value is above it are clicks, "
                                      f"e.g. 3 for 1-5 ratings)")
            label = int(value > (0.5 if opts.label_threshold is None else opts.label_threshold))
        if not events.add(user, item, t, label):
            errors.add(lineno, f"user or item id {id_problem(user, item)}")
            continue
        if label is not None:
            counts["clicks" if label else "non_clicks"] += 1
        n += 1
    return errors, order, counts


def _first_token(value: str, sep: Optional[str]) -> str:
    value = value.strip()
    if sep is None:
        return value
    parts = value.split() if sep == " " else value.split(sep)
    parts = [p.strip() for p in parts if p.strip()]
    return parts[0] if parts else ""


def _last_match(rx, value: str) -> Optional[str]:
    """Group 1 of the LAST match (the category path sits at the end of "title. category path. brand.", and a
    title may itself contain the category prefix)."""
    last = None
    for m in rx.finditer(value):
        last = m
    return last.group(1).strip() if last is not None else None


def read_items(path: str, opts: GenericOptions, category_regex: Optional[str]):
    """ItemInfo (category as an `AttrTable`, text) + the raw item id of each vector row (byte array, b'' for
    rows without an item) + errors."""
    errors = LineErrors(path)
    rows, header = _rows_with_header(path, errors)
    ii = _pick(header, opts.item_col, ITEM_COLS, "item", path)
    ci = _pick(header, opts.category_col, CATE_COLS, "category", path, required=False)
    xi = _pick(header, opts.text_col, TEXT_COLS, "text", path, required=False)
    ri = header.index("row") if "row" in header else None
    sep = opts.category_split
    if sep is None and ci is not None:
        sep = {"attribute_ids": " ", "genres": "|"}.get(header[ci])
    rx = re.compile(category_regex) if category_regex else None
    if rx is not None and rx.groups < 1:
        raise ConversionError(f"--category_regex '{category_regex}' needs one capturing group")
    texts: Optional[Dict[str, str]] = {} if xi is not None else None
    parts: Dict[str, List[np.ndarray]] = {"item": [], "cate": [], "row": []}
    buf: Dict[str, list] = {"item": [], "cate": [], "row": []}

    def flush():
        if buf["item"]:
            parts["item"].append(to_bytes_array(buf["item"]))
            parts["cate"].append(to_bytes_array(buf["cate"]))
            parts["row"].append(np.array(buf["row"], np.int64))
            for v in buf.values():
                v.clear()

    data_index = -1
    need = max(x for x in (ii, ci, xi, ri) if x is not None) + 1
    for lineno, row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        data_index += 1
        if len(row) < need:
            errors.add(lineno, f"expected >= {need} fields, got {len(row)}")
            continue
        item = row[ii].strip()
        if not item:
            errors.add(lineno, "empty item id")
            continue
        if id_problem(item):
            errors.add(lineno, f"item id {id_problem(item)}")
            continue
        if ri is not None:
            try:
                r = int(row[ri])
                if r < 0:
                    raise ValueError
            except ValueError:
                errors.add(lineno, f"row {row[ri]!r} is not a non-negative integer")
                continue
        else:
            r = data_index
        text = row[xi] if xi is not None else None
        cate = None
        if ci is not None:
            cate = row[ci]
            cate = _last_match(rx, cate) if rx is not None else _first_token(cate, sep)
        elif rx is not None and text is not None:
            cate = _last_match(rx, text)
        buf["item"].append(item)
        buf["cate"].append(cate.strip() if cate else "")
        buf["row"].append(r)
        if texts is not None and text and text.strip() and item not in texts:
            texts[item] = " ".join(text.split())
        if len(buf["item"]) >= 262144:
            flush()
    flush()
    # Compact arrays, no Python object per item: first non-empty category of each item, first item of each row.
    items = np.concatenate(parts["item"]) if parts["item"] else np.zeros(0, "S1")
    cates = np.concatenate(parts["cate"]) if parts["cate"] else np.zeros(0, "S1")
    rows_of = np.concatenate(parts["row"]) if parts["row"] else np.zeros(0, np.int64)
    duplicates = int(len(items) - len(np.unique(items)))
    info = ItemInfo(cate=AttrTable.first_nonempty(items, cates), text=texts)
    items_by_row = np.zeros(int(rows_of.max()) + 1 if len(rows_of) else 0, items.dtype)
    uniq_rows, first = np.unique(rows_of, return_index=True)
    items_by_row[uniq_rows] = items[first]
    return info, items_by_row, errors, {"category_column": header[ci] if ci is not None else None,
                                        "text_column": header[xi] if xi is not None else None,
                                        "row_column": ri is not None, "duplicate_items": duplicates}


def convert(dataset: str, raw_dir: Optional[str], out_dir: str, protocol: ProtocolConfig, write: WriteConfig,
            opts: Optional[GenericOptions] = None, vector_sources: List[VectorSource] = (), log=print) -> dict:
    opts = opts or GenericOptions()
    preset = PRESETS.get(dataset, {})
    files = resolve_files(dataset, raw_dir, opts)
    if not files["interactions"] or not os.path.isfile(files["interactions"]):
        raise RawFilesMissing(missing_message(dataset, raw_dir, out_dir))
    if opts.items and not os.path.isfile(opts.items):
        raise RawFilesMissing(f"--items={opts.items}: no such file")
    category_regex = opts.category_regex if opts.category_regex is not None else preset.get("category_regex")
    labelled = label_column(dataset, raw_dir, opts) is not None
    if labelled != (protocol.split == "fraction"):
        raise ConversionError(f"{files['interactions']}: a log {'with' if labelled else 'without'} a label column "
                              f"needs the {'time-fraction' if labelled else 'DIN'} protocol (see docs/datasets.md)")
    log(f"[generic] reading {files['interactions']}")
    with EventLog(with_labels=labelled, spill_near=out_dir) as events:
        return _convert(dataset, out_dir, protocol, write, opts, vector_sources, log, files, category_regex, raw_dir,
                        events)


def _convert(dataset, out_dir, protocol, write, opts, vector_sources, log, files, category_regex, raw_dir, events):
    int_err, order, counts = read_interactions(files["interactions"], events, opts)
    log(f"[generic] {len(events)} interactions by {len(events.users)} users on {len(events.items)} items, "
        f"ordered by {order} ({int_err.count} malformed lines)")
    label_note = {}
    if events.with_labels:
        rule = f"> {opts.label_threshold:g}" if opts.label_threshold is not None else "= 1"
        log(f"[generic] labels from the log (value {rule} is a click): {counts['clicks']} clicks, "
            f"{counts['non_clicks']} non-clicks (real negatives; no negatives are sampled)")
        label_note = {"label": f"value {rule} is a click", **counts}
    errs = [int_err]
    info, items_by_row, item_meta = ItemInfo(cate={}), None, {}
    if files["items"]:
        log(f"[generic] reading {files['items']}")
        info, items_by_row, it_err, item_meta = read_items(files["items"], opts, category_regex)
        errs.append(it_err)
    sources = list(vector_sources)
    for s in sources:
        if s.kind == "npy" and s.items is None:
            if items_by_row is None:
                raise ConversionError(f"{s.path}: no item list for its rows and no items file to align it with")
            s.items, s.items_file = items_by_row, files["items"]
    if opts.auto_vectors and raw_dir and os.path.isdir(raw_dir):
        prefix = files["prefix"] or ""
        for p in sorted(glob.glob(os.path.join(raw_dir, glob.escape(prefix) + "*_vectors.npy"))):
            name = os.path.basename(p)[len(prefix):-len("_vectors.npy")]
            if not name.isidentifier() or any(s.modality == name for s in sources):
                continue
            src = npy_source(name, p)  # an item list beside the file wins, as for --vectors
            if src.items is None:
                if items_by_row is None:
                    raise ConversionError(f"{p}: vector file found but no {prefix}items.csv (nor "
                                          f"{os.path.basename(p)[:-4]}.items.txt beside it) to align its rows with")
                src.items, src.items_file = items_by_row, files["items"]
            sources.append(src)
    return build_dataset(
        out_dir, name=dataset, source=f"generic:{os.path.basename(files['interactions'])}", events=events,
        info=info, protocol=protocol, write=write, vector_sources=sources,
        raw_files={"interactions": files["interactions"], "items": files["items"]}, read_errors=errs,
        extra={"converter": {"name": "generic", "order": order, "category_regex": category_regex,
                             **item_meta, **label_note}},
        log=log)
