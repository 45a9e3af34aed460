"""Compares models over seeds: `python -m run.compare --dataset=electro --models=din,dmae,diff_msin --seeds=3`.

Trains every model with seeds --seed, --seed+1, ... (run dirs `<out_dir>/runs/<model>-s<seed>`), each model with
its own hyper-parameters (configs/models/<model>.cfg, then hyper-parameter flags given on the command line, which
apply to every model that takes them), and writes `<out_dir>/report.{md,json,png}` (default out_dir
reports/<dataset>). Global flags (--epochs, --batch_size, --patience, ... and configs/datasets/<dataset>.cfg) apply
to every run. With --learning_rates=1e-3,1e-2 each learning rate is trained for every seed and the one with the
best mean validation AUC is selected per model. Started again with the same command, an interrupted sweep trains
only what is missing. See mmctr_tf/evaluation/compare.py.
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
DEFAULT_MODELS = ["din", "dmae", "diff_msin"]


def _rates(v) -> bool:
    try:
        return v is None or (bool(v) and all(math.isfinite(float(x)) and float(x) > 0 for x in v))
    except ValueError:
        return False


CHECKS = {"seeds": (lambda v: v >= 1, ">= 1"), "learning_rates": (_rates, "a list of finite numbers > 0")}


def main(argv):
    del argv
    bad = common.flag_error(["models", "seeds", "learning_rates"] + [f for f in common.TRAIN_FLAGS if f != "model"],
                            CHECKS)
    if bad:
        return common.fail(f"run.compare: {bad}")
    if FLAGS.print_config:
        print(common.config_in_force(models=[m.strip() for m in (FLAGS.models or DEFAULT_MODELS)]))
        return 0
    common.quiet_tf()
    from mmctr_tf.data.schema import SchemaError
    from mmctr_tf.evaluation import compare as C

    try:
        lrs = [float(x) for x in FLAGS.learning_rates] if FLAGS.learning_rates else [FLAGS.learning_rate]
        models = [m.strip() for m in (FLAGS.models or DEFAULT_MODELS) if m.strip()]
        hparams = {m: common.accepted_model_hparams(m) for m in models}
        seeds = [FLAGS.seed + i for i in range(FLAGS.seeds)]
        out_dir = FLAGS.out_dir or os.path.join("reports", os.path.basename(FLAGS.dataset.rstrip("/")))
        verbose = FLAGS.verbose if FLAGS["verbose"].present else "2"  # one line per epoch inside a sweep
        base = common.train_config(run_dir=None, verbose=int(verbose) if verbose.isdigit() else verbose)
        if FLAGS.run_dir:
            print(f"[compare] --run_dir={FLAGS.run_dir} is ignored: runs go to {out_dir}/runs/", flush=True)
        command = "python -m run.compare " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        report = C.compare(base, models, seeds, out_dir, hparams, lrs, lr_in_name=bool(FLAGS.learning_rates),
                           command=command, log=lambda *a: print(*a, flush=True))
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
