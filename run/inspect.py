"""Shows what a trained model looks at for one example:
`python -m run.inspect --run_dir=runs/dmae-synthetic-s0 --example=5 [--split=test] [--out=inspect.png]`.

Prints the example's ids, label and predicted probability, and renders one PNG with what the model family exposes:
history attention weights (DIN family), the interest distribution P next to the decoded Q (DMAE, like the paper's
Fig. 3), the MFE / FDAF gates and fusion attention (Diff-MSIN). See mmctr_tf/evaluation/inspect.py.
The dataset is the run's own (config.json) unless --dataset is given explicitly.
"""

from __future__ import annotations

from absl import app, flags

from run import common

FLAGS = common.FLAGS


def _define(kind, name, default, help_):
    if name not in FLAGS:  # run.evaluate defines --split too; both may be imported in one process
        getattr(flags, f"DEFINE_{kind}")(name, default, help_)


_define("string", "split", "test", "train | valid | test.")
_define("integer", "example", 0, "0-based index of the example in the split (file order).")
_define("string", "out", None, "PNG path (default <run_dir>/inspect_<split>_<example>.png).")


def main(argv):
    del argv
    common.quiet_tf()
    from mmctr_tf.data.schema import SchemaError
    from mmctr_tf.evaluation.inspect import inspect_run

    if not FLAGS.run_dir:
        return common.fail("run.inspect: --run_dir is required")
    ds = FLAGS.dataset if FLAGS["dataset"].present else None
    try:
        info = inspect_run(FLAGS.run_dir, FLAGS.example, FLAGS.split, FLAGS.out, ds)
    except (SchemaError, ValueError, FileNotFoundError, RuntimeError) as e:
        return common.fail(f"run.inspect: {e}")
    print(info["text"])
    print(f"-> {info['png']}")
    return 0


if __name__ == "__main__":
    app.run(main)
