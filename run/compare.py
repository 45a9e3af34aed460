"""Compares models over seeds: `python -m run.compare --dataset=electro --models=din,dmae,diff_msin --seeds=3`.

Trains every model with seeds --seed, --seed+1, ... (run dirs `<out_dir>/runs/<model>-s<seed>`), each model with
its own hyper-parameters (configs/models/<model>.cfg, then hyper-parameter flags given on the command line, which
apply to every model that takes them), and writes `<out_dir>/report.{md,json,png}` (default out_dir
reports/<dataset>). Global flags (--epochs, --batch_size, --patience, ... and configs/datasets/<dataset>.cfg) apply
to every run. Every run trains until early stopping on validation AUC (--patience); --epochs is only a cap, 100 unless
given on the command line or in the dataset's config, and a run whose best epoch is its last is reported as not
converged. With --learning_rates=1e-3,3e-3 and/or --batch_sizes=256,1024 every point of the grid is trained for every
seed and the one with the best mean validation AUC is selected per model. The report adds test AUC and Logloss per
bucket of the target item's training clicks (--click_buckets). Started again with the same command, an interrupted
sweep trains only what is missing. See mmctr_tf/evaluation/compare.py.
"""

from __future__ import annotations

import math
import os
import shlex
import sys

from absl import app, flags

from run import common

FLAGS = common.FLAGS


flags.DEFINE_integer("seeds", 3, "Seeds per model: --seed, --seed+1, ...")
flags.DEFINE_string("out_dir", None, "Report and run directory (default reports/<dataset>).")
flags.DEFINE_list("learning_rates", None, "Learning-rate grid, selected per model on validation AUC "
                                          "(default: --learning_rate only).")
flags.DEFINE_list("batch_sizes", None, "Batch-size grid, selected per model on validation AUC together with the "
                                       "learning rate (default: --batch_size only).")
DEFAULT_MODELS = ["din", "dmae", "diff_msin"]
MAX_EPOCHS = 100  # --epochs unless given: a cap that early stopping, not the cap, ends the runs


def _positive_list(cast):
    """A CHECKS test: the flag is unset, or a non-empty list of values that `cast` reads as finite numbers > 0."""
    def ok(v) -> bool:
        try:
            return v is None or (bool(v) and all(math.isfinite(cast(x)) and cast(x) > 0 for x in v))
        except ValueError:
            return False
    return ok


CHECKS = {"seeds": (lambda v: v >= 1, ">= 1"),
          "learning_rates": (_positive_list(float), "a list of finite numbers > 0"),
          "batch_sizes": (_positive_list(int), "a list of integers > 0")}


def main(argv):
    del argv
    own = ["models", "seeds", "learning_rates", "batch_sizes"]
    bad = common.flag_error(own + [f for f in common.TRAIN_FLAGS if f != "model"], CHECKS)
    if bad:
        return common.fail(f"run.compare: {bad}")
    if FLAGS.print_config:
        print(common.config_in_force(models=[m.strip() for m in (FLAGS.models or DEFAULT_MODELS)]))
        return 0
    common.quiet_tf()
    from mmctr_tf.data.schema import SchemaError
    from mmctr_tf.evaluation import compare as C
    from mmctr_tf.evaluation.metrics import check_click_buckets

    try:
        lrs = [float(x) for x in FLAGS.learning_rates] if FLAGS.learning_rates else [FLAGS.learning_rate]
        batches = [int(x) for x in FLAGS.batch_sizes] if FLAGS.batch_sizes else [FLAGS.batch_size]
        edges = check_click_buckets(FLAGS.click_buckets)
        models = [m.strip() for m in (FLAGS.models or DEFAULT_MODELS) if m.strip()]
        hparams = {m: common.accepted_model_hparams(m) for m in models}
        seeds = [FLAGS.seed + i for i in range(FLAGS.seeds)]
        out_dir = FLAGS.out_dir or os.path.join("reports", os.path.basename(FLAGS.dataset.rstrip("/")))
        verbose = FLAGS.verbose if FLAGS["verbose"].present else "2"  # one line per epoch inside a sweep
        base = common.train_config(run_dir=None, verbose=int(verbose) if verbose.isdigit() else verbose,
                                   epochs=FLAGS.epochs if FLAGS["epochs"].present else MAX_EPOCHS)
        if FLAGS.run_dir:
            print(f"[compare] --run_dir={FLAGS.run_dir} is ignored: runs go to {out_dir}/runs/", flush=True)
        command = "python -m run.compare " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        report = C.compare(base, models, seeds, out_dir, hparams, lrs, batches, lr_in_name=bool(FLAGS.learning_rates),
                           batch_in_name=bool(FLAGS.batch_sizes), command=command,
                           log=lambda *a: print(*a, flush=True), click_buckets=edges)
    except (SchemaError, ValueError, FileNotFoundError, flags.ValidationError) as e:
        return common.fail(f"run.compare: {e}")
    print()
    print(C.markdown_report(report))
    if report["failed"]:
        return common.fail(f"run.compare: {len(report['failed'])} run(s) failed (see the notes above); run the same "
                           f"command again to retry them", 1)
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=common.parse_for_several_models)
