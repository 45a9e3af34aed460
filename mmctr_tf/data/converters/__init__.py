"""Real-dataset converters: raw public files -> TFRecords + frozen vector tables + manifest (see docs/datasets.md).

  amazon     electro, books, clothing, home, arts (Amazon 2014 reviews + metadata, DIN protocol)
  movielens  movielens (ratings + movies, rating > 3 positive)
  generic    interaction CSV/parquet + items file + .npy vectors; presets scientific, beauty, sports, toys
             (the real data under shared/data)

`convert()` picks the converter (by `--dataset` name, else by the files found in the raw folder), applies the
converter's protocol defaults and any overrides, and builds the dataset atomically.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional

from mmctr_tf.data.converters import amazon, generic, movielens
from mmctr_tf.data.converters.output import OutputDirRefused, claimed_output_dir, load_id_map, load_item_texts
from mmctr_tf.data.converters.protocol import ProtocolConfig, WriteConfig
from mmctr_tf.data.converters.reading import ConversionError, RawFilesMissing
from mmctr_tf.data.converters.stats import format_stats
from mmctr_tf.data.converters.vectors import VectorSource, parse_vector_specs

__all__ = ["convert", "converter_for", "default_protocol", "missing_data_message", "RawFilesMissing",
           "ConversionError", "ProtocolConfig", "WriteConfig", "format_stats", "load_id_map", "load_item_texts",
           "VectorSource", "parse_vector_specs", "CONVERTERS", "DATASETS", "OutputDirRefused"]

CONVERTERS = ("amazon", "movielens", "generic")
DATASETS = {**{k: "amazon" for k in amazon.STEMS}, "movielens": "movielens",
            **{k: "generic" for k in generic.PRESETS}}


def default_raw_dir(dataset: str) -> str:
    return os.path.join("raw", dataset)


def converter_for(dataset: str, converter: str = "auto", raw_dir: Optional[str] = None) -> str:
    if converter and converter != "auto":
        if converter not in CONVERTERS:
            raise ConversionError(f"--converter must be auto | {' | '.join(CONVERTERS)}, got '{converter}'")
        return converter
    if dataset in DATASETS:
        return DATASETS[dataset]
    if raw_dir and os.path.isdir(raw_dir):
        names = os.listdir(raw_dir)
        if any(n.startswith("reviews_") and ".json" in n for n in names):
            return "amazon"
        if movielens.find_raw_files(raw_dir)["ratings"]:
            return "movielens"
    return "generic"


def amazon_stem_from_files(raw_dir: Optional[str]) -> Optional[str]:
    if not raw_dir or not os.path.isdir(raw_dir):
        return None
    for n in sorted(os.listdir(raw_dir)):
        if n.startswith("reviews_") and ".json" in n:
            stem = n[len("reviews_"):].split(".json")[0]
            return stem[:-2] if stem.endswith("_5") else stem
    return None


def default_protocol(converter: str, seq_len: int = 50, seed: int = 0, labelled: bool = False) -> ProtocolConfig:
    """The DIN protocol for logs of behaviours (every row a click), the time-fraction protocol for logs with real
    labels (MovieLens ratings; a generic log with a label column)."""
    if converter == "movielens" or labelled:
        return ProtocolConfig(seq_len=seq_len, min_behaviors=5, max_behaviors=0, split="fraction",
                              negatives="none", history="positive", target_min_pos=0, seed=seed)
    return ProtocolConfig(seq_len=seq_len, min_behaviors=5, max_behaviors=50, split="din", negatives="uniform",
                          history="all", target_min_pos=1, seed=seed)


def missing_data_message(dataset: str, data_dir: str = "tfrecords", raw_dir: Optional[str] = None) -> str:
    """What to put where, and the exact command, for a dataset that is neither converted nor present raw."""
    from mmctr_tf.data.datasets import dataset_dir

    out = dataset_dir(dataset, data_dir)
    head = f"dataset '{dataset}': no converted data at {os.path.join(out, 'manifest.json')}.\n"
    kind = converter_for(dataset, "auto", raw_dir)
    if dataset not in DATASETS and not raw_dir:
        return head + ("Convert raw files first: python -m run.make_data --dataset=<name> --raw_dir=<folder> "
                       f"--out_dir={out}\nKnown names: {', '.join(sorted(DATASETS))} (see docs/datasets.md).")
    if kind == "amazon":
        body = amazon.missing_message(dataset, amazon.STEMS.get(dataset) or amazon_stem_from_files(raw_dir) or
                                      "<Category>", raw_dir, out)
    elif kind == "movielens":
        body = movielens.missing_message(dataset, raw_dir, out)
    else:
        body = generic.missing_message(dataset, raw_dir, out)
    return head + body


def convert(dataset: str, raw_dir: Optional[str], out_dir: str, *, converter: str = "auto",
            protocol: Optional[ProtocolConfig] = None, overrides: Optional[dict] = None,
            write: Optional[WriteConfig] = None, vector_specs: Optional[List[str]] = None,
            amazon_stem: Optional[str] = None, category_level: str = "last", with_brand: bool = False,
            image_features: bool = True, rating_threshold: float = 3.0,
            generic_options: Optional[generic.GenericOptions] = None,
            log: Callable[[str], None] = print) -> dict:
    """Converts `dataset` from `raw_dir` (default raw/<dataset>) into `out_dir`; returns the manifest.

    Raises RawFilesMissing (a message naming the files and the command) before anything is written when the raw
    files are absent; any later failure leaves no partial output. Raises OutputDirRefused when `out_dir` exists and
    is not a dataset named `dataset`, and `mmctr_tf.locks.LockHeld` while another conversion writes it; in both
    cases before anything is read or written.
    """
    raw_dir = raw_dir or default_raw_dir(dataset)
    kind = converter_for(dataset, converter, raw_dir)
    labelled = kind == "generic" and generic.label_column(dataset, raw_dir, generic_options or
                                                          generic.GenericOptions()) is not None
    proto = protocol or default_protocol(kind, labelled=labelled)
    if overrides:
        proto = dataclasses.replace(proto, **{k: v for k, v in overrides.items() if v is not None})
    proto.validate()
    write = write or WriteConfig()
    sources = parse_vector_specs(vector_specs or [])
    with claimed_output_dir(out_dir, dataset, log=log):  # before reading: a refused conversion reads nothing
        if kind == "amazon":
            stem = amazon_stem or amazon.STEMS.get(dataset) or amazon_stem_from_files(raw_dir)
            return amazon.convert(dataset, raw_dir, out_dir, proto, write, stem=stem, category_level=category_level,
                                  with_brand=with_brand, vector_sources=sources, use_image_features=image_features,
                                  log=log)
        if kind == "movielens":
            return movielens.convert(dataset, raw_dir, out_dir, proto, write, threshold=rating_threshold,
                                     vector_sources=sources, log=log)
        return generic.convert(dataset, raw_dir, out_dir, proto, write, opts=generic_options,
                               vector_sources=sources, log=log)
