"""Exports a trained run as a TF Serving SavedModel: `python -m run.export --run_dir=... --export_dir=...`.

Writes `<export_dir>/<version>/` (next free version unless --version) atomically, with the signatures
`serving_default` (named id tensors) and `serving_tf_example` (serialized tf.Example), and verifies both against
the Keras model on a batch of the run's test split (or a dummy batch if the data is absent).
"""

from __future__ import annotations

import os

from absl import app, flags

from run import common

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "TF Serving model base directory (versions are created below it).")
flags.DEFINE_integer("version", None, "Version number (default: highest existing + 1).")


def main(argv):
    del argv
    if not FLAGS.run_dir or not FLAGS.export_dir:
        return common.fail("run.export: --run_dir and --export_dir are required")
    bad = common.flag_error(["version"], {"version": (lambda v: v is None or v >= 1, ">= 1 (or not given: the next "
                                                     "one)")})
    if bad:
        return common.fail(f"run.export: {bad}")
    common.quiet_tf()
    from mmctr_tf.data.datasets import Dataset
    from mmctr_tf.export.saved_model import export_model
    from mmctr_tf.training.trainer import load_run

    try:
        model, record = load_run(FLAGS.run_dir)
    except FileNotFoundError as e:
        return common.fail(f"run.export: {e}")
    batch = None
    if record.get("data_path") and os.path.exists(record["data_path"]):
        feats, _ = next(iter(Dataset(record["data_path"]).tf_dataset("test", 256)))
        batch = {k: v.numpy() for k, v in feats.items()}
    export_model(model, FLAGS.export_dir, FLAGS.version, verify_batch=batch)
    return 0


if __name__ == "__main__":
    app.run(main)
