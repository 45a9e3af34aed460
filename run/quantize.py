"""Test metrics and SavedModel size of trained runs served with float32, float16 and int8 frozen tables:
`python -m run.quantize --run_dirs=reports/scientific/runs/dmae-s0,reports/scientific/runs/dmae-s1`.

The tables never train, so every storage uses the run's trained weights unchanged (mmctr_tf/evaluation/quantize.py).
Prints a markdown table (mean ± std over the runs of each model; differences to float32 paired by run) and, with
--out, writes the rows as JSON.
"""

from __future__ import annotations

from absl import app, flags

from run import common

FLAGS = flags.FLAGS
flags.DEFINE_list("run_dirs", None, "Run directories of trained models with frozen vector tables.")
flags.DEFINE_string("split", "test", "valid | test.")
flags.DEFINE_list("storages", ["float32", "float16", "int8"], "Table storages to measure.")
flags.DEFINE_string("out", None, "Also write the rows as JSON to this file.")


def main(argv):
    del argv
    common.quiet_tf()
    from mmctr_tf.data.schema import write_json_atomic
    from mmctr_tf.evaluation.quantize import markdown_table, storage_rows

    if not FLAGS.run_dirs:
        return common.fail("run.quantize: --run_dirs is required")
    try:
        rows = storage_rows(FLAGS.run_dirs, FLAGS.split, FLAGS.storages)
    except (FileNotFoundError, ValueError) as e:
        return common.fail(f"run.quantize: {e}")
    print(markdown_table(rows, FLAGS.split))
    if FLAGS.out:
        write_json_atomic(FLAGS.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    app.run(main)
