"""MovieLens (GroupLens) ratings -> CTR examples with real labels, as in DIN / DMAE: rating > 3 is a click.

Raw files, in `--raw_dir` or one sub-folder of it (e.g. the unzipped `ml-20m/`):
  ratings.csv  (`userId,movieId,rating,timestamp`, ML-20M/25M/latest)  or  ratings.dat (`u::m::r::t`, ML-1M/10M)
  movies.csv   (`movieId,title,genres`)                                 or  movies.dat  (`m::title::genres`)

Protocol (`ProtocolConfig(split="fraction", history="positive")`): users with >= 5 ratings; per user, ratings in
time order (ties keep file order); every rating is one example, label = rating > `threshold` (3 by default,
the DMAE / DIN setting); the history of a rating is the user's positively rated movies before it (most recent
`seq_len`), possibly empty (hist_len 0); per user the last 10% of ratings (>= 1) are test, the 10% before them
validation, the rest training. No sampled negatives: the log has real non-clicks. Category = the FIRST genre of
the movie (`Adventure|Animation|...` -> `Adventure`; "(no genres listed)" is a category of its own).
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional

from mmctr_tf.data.converters.build import build_dataset
from mmctr_tf.data.converters.events import EventLog, ItemInfo
from mmctr_tf.data.converters.protocol import ProtocolConfig, WriteConfig
from mmctr_tf.data.converters.reading import LineErrors, RawFilesMissing, id_problem, open_text
from mmctr_tf.data.converters.vectors import VectorSource

LINKS = "https://grouplens.org/datasets/movielens/ (e.g. ml-20m.zip)"


def find_raw_files(raw_dir: Optional[str]) -> Dict[str, Optional[str]]:
    found = {"ratings": None, "movies": None}
    if not raw_dir or not os.path.isdir(raw_dir):
        return found
    dirs = [raw_dir] + sorted(os.path.join(raw_dir, d) for d in os.listdir(raw_dir)
                              if os.path.isdir(os.path.join(raw_dir, d)))
    for d in dirs:
        r = next((os.path.join(d, n) for n in ("ratings.csv", "ratings.dat") if os.path.isfile(os.path.join(d, n))),
                 None)
        if r:
            m = next((os.path.join(d, n) for n in ("movies.csv", "movies.dat") if os.path.isfile(os.path.join(d, n))),
                     None)
            return {"ratings": r, "movies": m}
    return found


def missing_message(dataset: str, raw_dir: Optional[str], out_dir: Optional[str] = None) -> str:
    where = raw_dir or f"raw/{dataset}"
    out = f" --out_dir={out_dir}" if out_dir else ""
    return "\n".join([
        f"dataset '{dataset}' (MovieLens): raw files not found in {where}/",
        f"Download from {LINKS}, unzip, and put into {where}/ (directly or in one sub-folder):",
        "  ratings.csv  (userId,movieId,rating,timestamp)   or ratings.dat (ML-1M/10M)",
        "  movies.csv   (movieId,title,genres)              or movies.dat",
        "Then run:",
        f"  python -m run.make_data --dataset={dataset} --raw_dir={where}{out}",
    ])


def _split_dat(line: str) -> List[str]:
    return line.rstrip("\r\n").split("::")


def _rows(path: str, errors: LineErrors, header_names):
    """(line number, fields) of a MovieLens .dat ('::') or .csv file, skipping a CSV header whose first column is
    one of `header_names` and blank lines; `errors.lines` counts every line read."""
    dat = path.endswith(".dat")
    with open_text(path, encoding="latin-1" if dat else "utf-8") as f:
        rows = (_split_dat(line) for line in f) if dat else csv.reader(f)
        for lineno, row in enumerate(rows, start=1):
            errors.lines = lineno
            if not dat and lineno == 1 and row and row[0].strip().lower() in header_names:
                continue  # header
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            yield lineno, row


def read_ratings(path: str, events: EventLog, threshold: float) -> LineErrors:
    errors = LineErrors(path)
    for lineno, row in _rows(path, errors, ("userid", "user_id", "user")):
        if len(row) < 4:
            errors.add(lineno, f"expected 4 fields (user, movie, rating, timestamp), got {len(row)}")
            continue
        user, movie = row[0].strip(), row[1].strip()
        try:
            rating = float(row[2])
            ts = float(row[3])
            if rating != rating or ts != ts:
                raise ValueError("NaN")
        except ValueError:
            errors.add(lineno, f"rating / timestamp not numeric: {row[2]!r}, {row[3]!r}")
            continue
        if not user or not movie:
            errors.add(lineno, "empty user or movie id")
            continue
        if not events.add(user, movie, ts, 1 if rating > threshold else 0):
            errors.add(lineno, f"user or movie id {id_problem(user, movie)}")
    return errors


def read_movies(path: Optional[str]):
    info = ItemInfo(cate={}, text={})
    if not path:
        return info, None
    errors = LineErrors(path)
    for lineno, row in _rows(path, errors, ("movieid", "movie_id", "item_id")):
        if len(row) < 3:
            errors.add(lineno, f"expected 3 fields (movieId, title, genres), got {len(row)}")
            continue
        movie = row[0].strip()
        title = row[1].strip()
        genres = row[-1].strip()
        first = genres.split("|")[0].strip() if genres else ""
        if first:
            info.cate[movie] = first
        if title:
            info.text[movie] = title
    return info, errors


def convert(dataset: str, raw_dir: Optional[str], out_dir: str, protocol: ProtocolConfig, write: WriteConfig,
            threshold: float = 3.0, vector_sources: List[VectorSource] = (), log=print) -> dict:
    files = find_raw_files(raw_dir)
    if not files["ratings"]:
        raise RawFilesMissing(missing_message(dataset, raw_dir, out_dir))
    if not files["movies"]:
        log(f"[movielens] no movies.csv / movies.dat beside {files['ratings']}: every movie gets cate_id 0")
    log(f"[movielens] reading {files['ratings']}")
    with EventLog(with_labels=True, spill_near=out_dir) as events:
        rat_err = read_ratings(files["ratings"], events, threshold)
        log(f"[movielens] {len(events)} ratings by {len(events.users)} users on {len(events.items)} movies "
            f"({rat_err.count} malformed lines)")
        info, mov_err = read_movies(files["movies"])
        errs = [rat_err] + ([mov_err] if mov_err is not None else [])
        return build_dataset(
            out_dir, name=dataset, source="movielens", events=events, info=info, protocol=protocol, write=write,
            vector_sources=list(vector_sources), raw_files=files, read_errors=errs,
            extra={"converter": {"name": "movielens", "positive": f"rating > {threshold:g}",
                                 "category": "first genre"}},
            log=log)
