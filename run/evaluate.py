"""Evaluates a trained run on any split: `python -m run.evaluate --run_dir=runs/din-synthetic-s0 [--split=test]`.

Prints a one-line table and writes `<run_dir>/eval_<split>.json`, which names the dataset; `--dataset` evaluates the
run on another dataset than its own, with a warning, and records the run's own in `trained_on`. With
--baseline_run_dir, adds RelaImpr ((AUC - 0.5) / (AUC_base - 0.5) - 1) against that run on the same split. GAUC is
impression-weighted (see mmctr_tf/evaluation/metrics.py). A second table gives AUC and Logloss per bucket of the
target item's training clicks (--click_buckets).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from run import common

FLAGS = flags.FLAGS
flags.DEFINE_string("split", "test", "train | valid | test.")
flags.DEFINE_string("baseline_run_dir", None, "Run to compute RelaImpr against (evaluated on the same split).")


def main(argv):
    del argv
    if not FLAGS.run_dir:
        return common.fail("run.evaluate: --run_dir is required")
    bad = common.flag_error(["split"], {"split": (lambda v: v in ("train", "valid", "test"), "train, valid or test")})
    if bad:
        return common.fail(f"run.evaluate: {bad}")
    common.quiet_tf()
    from mmctr_tf.data.schema import write_json_atomic
    from mmctr_tf.evaluation.evaluate import evaluate_run
    from mmctr_tf.evaluation.metrics import check_click_buckets, rela_impr

    ds = FLAGS.dataset if FLAGS["dataset"].present else None
    try:
        res = evaluate_run(FLAGS.run_dir, FLAGS.split, ds, click_buckets=check_click_buckets(FLAGS.click_buckets))
        if FLAGS.baseline_run_dir:
            base = evaluate_run(FLAGS.baseline_run_dir, FLAGS.split, ds)
            if os.path.realpath(base["data_path"]) != os.path.realpath(res["data_path"]):
                raise ValueError(f"--baseline_run_dir={FLAGS.baseline_run_dir} was evaluated on {base['data_path']}, "
                                 f"the run on {res['data_path']}: RelaImpr compares AUCs on the same data (pass "
                                 f"--dataset to evaluate both on one dataset)")
            res["baseline_run_dir"] = FLAGS.baseline_run_dir
            res["baseline_auc"] = base["auc"]
            res["rela_impr"] = rela_impr(res["auc"], base["auc"])
    except (FileNotFoundError, ValueError) as e:
        return common.fail(f"run.evaluate: {e}")
    write_json_atomic(os.path.join(FLAGS.run_dir, f"eval_{FLAGS.split}.json"), res)
    cols = ["auc", "logloss", "gauc_user", "gauc_request", "rela_impr", "examples"]
    shown = [c for c in cols if res.get(c) is not None]
    print("| model | split | " + " | ".join(shown) + " |")
    print("|---|---|" + "---|" * len(shown))
    print(f"| {res['model']} | {FLAGS.split} | " + " | ".join(
        f"{res[c]:.4f}" if isinstance(res[c], float) else str(res[c]) for c in shown) + " |")
    cold = res["cold_start"]
    print(f"\nCold start (clicks = {cold['definition']}):")
    print("| clicks | examples | positives | auc | logloss |\n|---|---|---|---|---|")
    for b in cold["buckets"]:
        print(f"| {b['bucket']} | {b['examples']} | {b['positives']} | {b['auc']:.4f} | {b['logloss']:.4f} |")
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    app.run(main)
