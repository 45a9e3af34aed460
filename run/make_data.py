"""Converts or generates a dataset into TFRecords + frozen vector tables + manifest.json.

  python -m run.make_data --dataset=synthetic [--num_users=... --num_items=... --seed=...]
  python -m run.make_data --dataset=synthetic_industrial
  python -m run.make_data --dataset=synthetic_scale [--num_users=1000000 --num_items=200000
                          --impressions_per_user=10 --chunk_users=20000]      (chunked: bounded memory)
  python -m run.make_data --dataset=synthetic_industrial_scale    (DMAE's industrial shape at 1M users, chunked)
  python -m run.make_data --dataset=electro --raw_dir=raw/electro          (books, clothing, home, arts alike)
  python -m run.make_data --dataset=movielens --raw_dir=raw/movielens
  python -m run.make_data --dataset=scientific --raw_dir=../shared/data/amazon-scientific
  python -m run.make_data --dataset=beauty --raw_dir=../shared/data/amazon-s3rec   (sports, toys alike)
  python -m run.make_data --dataset=NAME --raw_dir=DIR [--interactions=log.csv --items=items.csv
                          --vectors=text=t.npy@items.txt,image=image_features_X.b --pca_dim=512]

Real datasets: see docs/datasets.md (raw files, protocol, flags, statistics).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from mmctr_tf.data.summary import print_summary

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "synthetic | synthetic_industrial | synthetic_scale | "
                    "synthetic_industrial_scale | a real dataset name.")
flags.DEFINE_string("data_dir", "tfrecords", "Where converted datasets live.")
flags.DEFINE_string("raw_dir", None, "Folder with the raw files of a real dataset.")
flags.DEFINE_string("out_dir", None, "Output directory (default <data_dir>/<dataset>).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("seq_len", None, "History length L (default 50; 64 in the DMAE industrial setup).")
flags.DEFINE_enum("table_dtype", "float32", ["float32", "float16", "int8"], "Storage dtype of vector tables.")
flags.DEFINE_integer("num_shards", None, "TFRecord shards per split (default 4; synthetic_scale 8).")
flags.DEFINE_enum("compression", "GZIP", ["GZIP", "none"], "TFRecord compression.")
# synthetic generator sizes
flags.DEFINE_integer("num_users", None, "synthetic: users.")
flags.DEFINE_integer("num_items", None, "synthetic: items.")
flags.DEFINE_integer("num_cates", None, "synthetic: categories.")
flags.DEFINE_integer("impressions_per_user", None, "synthetic: impressions per user.")
flags.DEFINE_integer("dim", None, "synthetic: dimension of each modality's vectors.")
flags.DEFINE_integer("num_days", None, "synthetic_industrial: days (last = test, second-to-last = validation).")
flags.DEFINE_integer("chunk_users", None, "synthetic: generate and write users in chunks of this size (bounded "
                     "memory; default 0 = all at once, synthetic_scale 20000).")
# real-dataset converters (mmctr_tf/data/converters, docs/datasets.md)
flags.DEFINE_enum("converter", "auto", ["auto", "amazon", "movielens", "generic"],
                  "Converter for a real dataset (auto: by --dataset name, else by the files in --raw_dir).")
flags.DEFINE_integer("min_behaviors", None, "Keep users with at least this many events (default 5).")
flags.DEFINE_integer("max_behaviors", None, "Keep the N most recent events per user, 0 = all "
                     "(default 50; MovieLens 0).")
flags.DEFINE_enum("negatives", None, ["uniform", "popularity"], "DIN protocol: how the one negative per positive "
                  "is sampled (default uniform over the item vocabulary).")
flags.DEFINE_enum("history", None, ["all", "positive"], "Which earlier events form the history "
                  "(default: all; MovieLens: positive = rated > threshold).")
flags.DEFINE_float("valid_frac", None, "MovieLens: per-user fraction of the latest ratings for validation (0.1).")
flags.DEFINE_float("test_frac", None, "MovieLens: per-user fraction of the latest ratings for test (0.1).")
flags.DEFINE_float("rating_threshold", 3.0, "MovieLens: rating > threshold is a positive.")
flags.DEFINE_string("amazon_stem", None, "Amazon: file stem of another category (reviews_<stem>_5.json.gz).")
flags.DEFINE_enum("category_level", "last", ["last", "first"], "Amazon: category = last (DIN) or first level of "
                  "the first category path.")
flags.DEFINE_boolean("with_brand", False, "Amazon: add brand_id (meta 'brand') as an item feature.")
flags.DEFINE_boolean("image_features", True, "Amazon: use image_features_<stem>.b when present.")
flags.DEFINE_list("vectors", [], "Frozen vectors: modality=path.npy[@item_list] or modality=path.b (McAuley "
                  "binary), comma separated. Item list: text (one raw id per line) or .npy of raw ids; "
                  "generic converter: default alignment = rows of the items file.")
flags.DEFINE_integer("pca_dim", 0, "Reduce every vector table to this dimension with PCA (0 = keep).")
flags.DEFINE_integer("partition_events", 2_000_000, "Real datasets: users are converted in partitions of about this "
                     "many events (memory: one partition; each partition writes its own shards).")
flags.DEFINE_boolean("resume", True, "Real datasets: stage the output in .<name>.partial/ and, after a kill or "
                     "failure, resume from the partitions already written (--noresume: start from scratch and "
                     "leave nothing behind on failure).")
flags.DEFINE_string("interactions", None, "generic: the interaction log (.csv[.gz] or .parquet).")
flags.DEFINE_string("items", None, "generic: the items file (.csv[.gz] or .parquet).")
flags.DEFINE_string("file_prefix", None, "generic: prefix of interactions.csv / items.csv / *_vectors.npy.")
flags.DEFINE_string("user_col", None, "generic: user column name.")
flags.DEFINE_string("item_col", None, "generic: item column name.")
flags.DEFINE_string("time_col", None, "generic: time / order column name.")
flags.DEFINE_string("category_col", None, "generic: category column of the items file.")
flags.DEFINE_string("category_split", None, "generic: separator; the category is the first token.")
flags.DEFINE_string("category_regex", None, "generic: regex with one group extracting the category (from the "
                    "category column, or the text column when there is none).")
flags.DEFINE_string("text_col", None, "generic: text / title column of the items file.")
flags.DEFINE_string("label_col", None, "generic: label / rating column of the interaction log (default: a column named "
                    "label, click, clicked, is_click or rating, if any). Without one every row is a click.")
flags.DEFINE_float("label_threshold", None, "generic: a row whose label value is above this is a click, the others "
                   "are real non-clicks (needed unless the labels are 0 / 1).")


def convert_real(out_dir: str, compression: str) -> dict:
    """Dispatches a real dataset to mmctr_tf.data.converters; returns its manifest."""
    from mmctr_tf.data import converters
    from mmctr_tf.data.converters.generic import GenericOptions

    overrides = {"seq_len": FLAGS.seq_len, "seed": FLAGS.seed, "min_behaviors": FLAGS.min_behaviors,
                 "max_behaviors": FLAGS.max_behaviors, "negatives": FLAGS.negatives, "history": FLAGS.history,
                 "valid_frac": FLAGS.valid_frac, "test_frac": FLAGS.test_frac}
    opts = GenericOptions(interactions=FLAGS.interactions, items=FLAGS.items, prefix=FLAGS.file_prefix,
                          user_col=FLAGS.user_col, item_col=FLAGS.item_col, time_col=FLAGS.time_col,
                          category_col=FLAGS.category_col, category_split=FLAGS.category_split,
                          category_regex=FLAGS.category_regex, text_col=FLAGS.text_col,
                          label_col=FLAGS.label_col, label_threshold=FLAGS.label_threshold)
    write = converters.WriteConfig(num_shards=FLAGS.num_shards or 4, compression=compression,
                                   table_dtype=FLAGS.table_dtype, pca_dim=FLAGS.pca_dim,
                                   partition_events=FLAGS.partition_events, resume=FLAGS.resume)
    return converters.convert(
        FLAGS.dataset, FLAGS.raw_dir, out_dir, converter=FLAGS.converter, overrides=overrides, write=write,
        vector_specs=FLAGS.vectors, amazon_stem=FLAGS.amazon_stem, category_level=FLAGS.category_level,
        with_brand=FLAGS.with_brand, image_features=FLAGS.image_features,
        rating_threshold=FLAGS.rating_threshold, generic_options=opts)


def main(argv):
    del argv
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.data_dir, FLAGS.dataset)
    from mmctr_tf.data.converters.output import OutputDirRefused
    from mmctr_tf.locks import LockHeld

    try:
        return make(out_dir)
    except (OutputDirRefused, LockHeld) as e:
        print(f"make_data: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"make_data: interrupted; {interrupted_state(out_dir)}", file=sys.stderr)
        return 130


def interrupted_state(out_dir: str) -> str:
    """What a conversion interrupted by Ctrl-C left behind, and how to go on (one line)."""
    from mmctr_tf.data.converters.output import finished_partitions, partial_dir
    from mmctr_tf.data.schema import MANIFEST

    done = finished_partitions(out_dir)
    if done:
        return (f"{done} finished partition(s) kept in {partial_dir(out_dir)}; run the same command again to resume "
                f"(--noresume starts over)")
    before = "the previous dataset there is unchanged" if os.path.exists(os.path.join(out_dir, MANIFEST)) else \
        "nothing was written there"
    return f"nothing was kept, {before} ({out_dir}); run the same command again to start over"


def make(out_dir: str) -> int:
    compression = "" if FLAGS.compression == "none" else FLAGS.compression
    if FLAGS.dataset in ("synthetic", "synthetic_industrial", "synthetic_scale", "synthetic_industrial_scale"):
        from mmctr_tf.data import synthetic

        overrides = {f: FLAGS[f].value for f in ("num_users", "num_items", "num_cates", "impressions_per_user",
                                                  "dim", "num_days", "seq_len", "chunk_users", "num_shards")
                     if FLAGS[f].value is not None}
        cfg = synthetic.config_for(FLAGS.dataset, seed=FLAGS.seed, table_dtype=FLAGS.table_dtype,
                                   compression=compression, **overrides)
        manifest = synthetic.build(out_dir, cfg)
    else:
        from mmctr_tf.data.converters import RawFilesMissing
        from mmctr_tf.data.schema import MANIFEST, SchemaError, read_manifest

        converted = os.path.exists(os.path.join(out_dir, MANIFEST))
        if FLAGS.raw_dir is None and converted:
            print(f"make_data: '{FLAGS.dataset}' is already converted at {out_dir}; pass --raw_dir to convert again")
            print_summary(read_manifest(out_dir), out_dir)
            return 0
        try:
            manifest = convert_real(out_dir, compression)
        except RawFilesMissing as e:
            head = "" if converted else f"no converted data at {os.path.join(out_dir, MANIFEST)}, and "
            print(f"make_data: {head}{e}", file=sys.stderr)
            return 2
        except SchemaError as e:
            print(f"make_data: {e}", file=sys.stderr)
            return 1
    print_summary(manifest, out_dir)
    return 0


if __name__ == "__main__":
    app.run(main)
