"""Amazon review data (McAuley et al., 2014 release; the 2018 release's field names work too) -> DIN protocol.

Raw files, in `--raw_dir` (from https://jmcauley.ucsd.edu/data/amazon/links.html):
  reviews_<Stem>_5.json[.gz]   the 5-core reviews (or the full `reviews_<Stem>.json[.gz]`), one object per line
  meta_<Stem>.json[.gz]        item metadata, one object per line
  image_features_<Stem>.b      optional: 4096-d CNN image features (McAuley's binary format) -> modality "image"

The files come in two line formats: strict JSON (`{"asin": "..."}`, the 5-core review files) and Python literals
(`{'asin': '...'}`, the metadata files, written with Python's repr). Each line is parsed with `json.loads`, or
`ast.literal_eval` when it is a Python literal — never `eval`. Lines that parse to something other than an
object, or lack a needed field, are counted as malformed and reported; they never stop a conversion.

Fields used: reviews `reviewerID`, `asin`, `unixReviewTime` (seconds; ties keep file order); meta `asin`,
`categories` (2014: a list of category paths) or `category` (2018: one path), `title`, optional `brand`.
Category = the LAST level of the item's first category path (`categories[0][-1]`), as in the original DIN
preprocessing; `--category_level=first` takes the first level (which is the same for every item of a file, e.g.
"Electronics", so it is only useful for mixed-category dumps). Items with no metadata or no category get
cate_id 0 (unknown) and are counted in the statistics.
"""

from __future__ import annotations

import ast
import json
import os
import re
from typing import Dict, List, Optional, Tuple

from mmctr_tf.data.converters.build import build_dataset
from mmctr_tf.data.converters.events import EventLog, ItemInfo
from mmctr_tf.data.converters.protocol import ProtocolConfig, WriteConfig
from mmctr_tf.data.converters.reading import LineErrors, RawFilesMissing, id_problem, open_text
from mmctr_tf.data.converters.vectors import VectorSource

STEMS = {
    "electro": "Electronics",
    "books": "Books",
    "clothing": "Clothing_Shoes_and_Jewelry",
    "home": "Home_and_Kitchen",
    "arts": "Arts_Crafts_and_Sewing",
}
LINKS = "https://jmcauley.ucsd.edu/data/amazon/links.html"

_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def parse_record(line: str):
    """One JSON or Python-literal object per line -> dict. Raises ValueError for anything else."""
    s = line.strip()
    if not s:
        raise ValueError("empty line")
    first_literal = s.startswith("{'")
    parsers = (_literal, _json) if first_literal else (_json, _literal)
    err = None
    for parse in parsers:
        try:
            obj = parse(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            err = e
            continue
        if not isinstance(obj, dict):
            raise ValueError(f"not an object but {type(obj).__name__}")
        return obj
    raise ValueError(f"neither JSON nor a Python literal ({type(err).__name__}: {str(err)[:80]})")


def _json(s):
    return json.loads(s)


def _literal(s):
    return ast.literal_eval(s)


def find_raw_files(raw_dir: Optional[str], stem: str) -> Dict[str, Optional[str]]:
    def first(names):
        for n in names:
            p = os.path.join(raw_dir, n)
            if os.path.isfile(p):
                return p
        return None

    if not raw_dir or not os.path.isdir(raw_dir):
        return {"reviews": None, "meta": None, "image": None}
    return {
        "reviews": first([f"reviews_{stem}_5.json.gz", f"reviews_{stem}_5.json", f"{stem}_5.json.gz",
                          f"{stem}_5.json", f"reviews_{stem}.json.gz", f"reviews_{stem}.json"]),
        "meta": first([f"meta_{stem}.json.gz", f"meta_{stem}.json"]),
        "image": first([f"image_features_{stem}.b"]),
    }


def missing_message(dataset: str, stem: str, raw_dir: Optional[str], out_dir: Optional[str] = None,
                    found: Optional[dict] = None) -> str:
    where = raw_dir or f"raw/{dataset}"
    out = f" --out_dir={out_dir}" if out_dir else ""
    lines = [f"dataset '{dataset}' (Amazon 2014 '{stem}'): raw files not found in {where}/"]
    if found:
        have = [os.path.basename(v) for v in found.values() if v]
        if have:
            lines[0] += f" (found only: {', '.join(have)})"
    lines += [
        f"Download from {LINKS} and put into {where}/:",
        f"  reviews_{stem}_5.json.gz     the '5-core' reviews (strict JSON lines; .json also accepted)",
        f"  meta_{stem}.json.gz          the metadata (Python-literal lines; .json also accepted)",
        f"  image_features_{stem}.b      optional, 4096-d image features -> modality 'image' (add --pca_dim=512)",
        "Then run:",
        f"  python -m run.make_data --dataset={dataset} --raw_dir={where}{out}",
        "Text vectors: afterwards `python -m run.embed_text --dataset=... --model=<local sentence-embedding model>`, "
        "or pass --vectors=text=<file.npy>@<item_list.txt>. See docs/datasets.md.",
    ]
    return "\n".join(lines)


def read_reviews(path: str, events: EventLog) -> LineErrors:
    errors = LineErrors(path)
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            errors.lines = lineno
            if not line.strip():
                continue
            try:
                obj = parse_record(line)
                user, item, t = obj["reviewerID"], obj["asin"], obj["unixReviewTime"]
                if not isinstance(user, str) or not isinstance(item, str) or not user or not item:
                    raise ValueError("reviewerID / asin must be non-empty strings")
                t = float(t)
                if t != t:
                    raise ValueError("unixReviewTime is NaN")
            except KeyError as e:
                errors.add(lineno, f"missing field {e}")
                continue
            except (ValueError, TypeError) as e:
                errors.add(lineno, str(e))
                continue
            if not events.add(user.strip(), item.strip(), t):
                errors.add(lineno, f"reviewerID or asin {id_problem(user.strip(), item.strip())}")
    return errors


def _category(obj: dict, level: str) -> Optional[str]:
    cats = obj.get("categories")
    path = None
    if isinstance(cats, list) and cats:
        path = cats[0] if isinstance(cats[0], list) else cats
    elif isinstance(obj.get("category"), list):
        path = obj["category"]
    if not path:
        return None
    path = [str(c).strip() for c in path if str(c).strip()]
    if not path:
        return None
    return path[-1] if level == "last" else path[0]


def read_meta(path: str, wanted, level: str = "last", with_brand: bool = False) -> Tuple[ItemInfo, LineErrors, int]:
    """Category / brand / title of the items in `wanted` (a container of raw asins); others are skipped unparsed."""
    errors = LineErrors(path)
    info = ItemInfo(cate={}, brand={} if with_brand else None, text={})
    matched = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            errors.lines = lineno
            if not line.strip():
                continue
            m = _ASIN_RE.search(line)
            if m is not None and m.group(1) not in wanted:
                continue  # not in the review data: skip without parsing
            try:
                obj = parse_record(line)
                asin = obj["asin"]
                if not isinstance(asin, str) or not asin:
                    raise ValueError("asin must be a non-empty string")
            except KeyError as e:
                errors.add(lineno, f"missing field {e}")
                continue
            except (ValueError, TypeError) as e:
                errors.add(lineno, str(e))
                continue
            asin = asin.strip()
            if asin not in wanted:
                continue
            matched += 1
            cate = _category(obj, level)
            if cate:
                info.cate[asin] = cate
            title = obj.get("title")
            if isinstance(title, str) and title.strip():
                info.text[asin] = " ".join(title.split())
            if with_brand:
                brand = obj.get("brand")
                if isinstance(brand, str) and brand.strip():
                    info.brand[asin] = brand.strip()
    return info, errors, matched


def convert(dataset: str, raw_dir: Optional[str], out_dir: str, protocol: ProtocolConfig, write: WriteConfig,
            stem: Optional[str] = None, category_level: str = "last", with_brand: bool = False,
            vector_sources: List[VectorSource] = (), use_image_features: bool = True, log=print) -> dict:
    stem = stem or STEMS.get(dataset)
    if not stem:
        raise RawFilesMissing(f"dataset '{dataset}': unknown Amazon category; pass --amazon_stem=<Category> "
                              f"(file names reviews_<Category>_5.json.gz, meta_<Category>.json.gz)")
    if category_level not in ("last", "first"):
        raise RawFilesMissing(f"--category_level must be 'last' or 'first', got '{category_level}'")
    files = find_raw_files(raw_dir, stem)
    if not files["reviews"] or not files["meta"]:
        raise RawFilesMissing(missing_message(dataset, stem, raw_dir, out_dir, files))
    log(f"[amazon] reading {files['reviews']}")
    with EventLog(spill_near=out_dir) as events:
        rev_err = read_reviews(files["reviews"], events)
        log(f"[amazon] {len(events)} reviews by {len(events.users)} users on {len(events.items)} items "
            f"({rev_err.count} malformed lines)")
        log(f"[amazon] reading {files['meta']}")
        info, meta_err, matched = read_meta(files["meta"], events.items, category_level, with_brand)
        log(f"[amazon] metadata for {matched} of {len(events.items)} reviewed items ({meta_err.count} malformed "
            f"lines)")
        sources = list(vector_sources)
        if use_image_features and files["image"] and not any(s.modality == "image" for s in sources):
            sources.append(VectorSource("image", files["image"], "mcauley"))
        return build_dataset(
            out_dir, name=dataset, source=f"amazon2014:{stem}", events=events, info=info, protocol=protocol,
            write=write, vector_sources=sources, raw_files=files, read_errors=[rev_err, meta_err],
            extra={"converter": {"name": "amazon", "stem": stem, "category_level": category_level,
                                 "with_brand": with_brand, "meta_items_matched": matched}},
            log=log)
