"""Converts or generates a dataset into TFRecords + frozen vector tables + manifest.json.

  python -m run.make_data --dataset=synthetic [--num_users=... --num_items=... --seed=...]
  python -m run.make_data --dataset=synthetic_industrial
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic", "synthetic | synthetic_industrial | a real dataset name.")
flags.DEFINE_string("data_dir", "tfrecords", "Where converted datasets live.")
flags.DEFINE_string("raw_dir", None, "Folder with the raw files of a real dataset.")
flags.DEFINE_string("out_dir", None, "Output directory (default <data_dir>/<dataset>).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("seq_len", None, "History length L (default 50; 64 in the DMAE industrial setup).")
flags.DEFINE_enum("table_dtype", "float32", ["float32", "float16", "int8"], "Storage dtype of vector tables.")
flags.DEFINE_integer("num_shards", 4, "TFRecord shards per split.")
flags.DEFINE_enum("compression", "GZIP", ["GZIP", "none"], "TFRecord compression.")
# synthetic generator sizes
flags.DEFINE_integer("num_users", None, "synthetic: users.")
flags.DEFINE_integer("num_items", None, "synthetic: items.")
flags.DEFINE_integer("num_cates", None, "synthetic: categories.")
flags.DEFINE_integer("impressions_per_user", None, "synthetic: impressions per user.")
flags.DEFINE_integer("dim", None, "synthetic: dimension of each modality's vectors.")
flags.DEFINE_integer("num_days", None, "synthetic_industrial: days (last = test, second-to-last = validation).")


def print_summary(manifest: dict, out_dir: str) -> None:
    schema = manifest["schema"]
    print(f"dataset {manifest.get('name')} -> {out_dir}")
    print(f"  users {schema['vocab']['user_id'] - 1}, items {schema['vocab']['item_id'] - 1}, "
          f"categories {schema['vocab']['cate_id'] - 1}, seq_len {schema['seq_len']}, modalities {schema['modalities']}")
    print(f"  {'split':<6} {'examples':>9} {'users':>7} {'pos.rate':>9} {'bayes AUC':>10}  oov")
    for split, e in manifest["splits"].items():
        bayes = e.get("bayes_auc")
        bayes = f"{bayes:10.4f}" if bayes is not None else f"{'-':>10}"
        print(f"  {split:<6} {e['examples']:>9} {e.get('users', 0):>7} {e.get('positive_rate', 0):>9.4f} {bayes}  "
              f"{e.get('oov') or '-'}")
    for m, t in manifest.get("tables", {}).items():
        print(f"  table {m}: {t['rows']} x {t['dim']} {t['dtype']}, vectors present for {t['present']} items")


def main(argv):
    del argv
    out_dir = FLAGS.out_dir or os.path.join(FLAGS.data_dir, FLAGS.dataset)
    compression = "" if FLAGS.compression == "none" else FLAGS.compression
    if FLAGS.dataset in ("synthetic", "synthetic_industrial"):
        from mmctr_tf.data import synthetic

        cfg = synthetic.SyntheticConfig(
            variant="industrial" if FLAGS.dataset == "synthetic_industrial" else "default",
            seed=FLAGS.seed, table_dtype=FLAGS.table_dtype, num_shards=FLAGS.num_shards, compression=compression)
        overrides = {f: FLAGS[f].value for f in ("num_users", "num_items", "num_cates", "impressions_per_user",
                                                  "dim", "num_days", "seq_len") if FLAGS[f].value is not None}
        cfg = dataclasses.replace(cfg, **overrides)
        manifest = synthetic.build(out_dir, cfg)
    else:
        print(f"make_data: unknown --dataset '{FLAGS.dataset}'", file=sys.stderr)
        return 2
    print_summary(manifest, out_dir)
    return 0


if __name__ == "__main__":
    app.run(main)
