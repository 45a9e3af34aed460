"""Evaluates a trained run on any split: `python -m run.evaluate --run_dir=runs/din-synthetic-s0 [--split=test]`.

Prints a one-line table and writes `<run_dir>/eval_<split>.json`. With --baseline_run_dir, adds RelaImpr
((AUC - 0.5) / (AUC_base - 0.5) - 1) against that run on the same split. GAUC is impression-weighted (see
mmctr_tf/evaluation/metrics.py). A second table gives AUC and Logloss per bucket of the target item's training clicks
(--click_buckets).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from run import common

FLAGS = flags.FLAGS
flags.DEFINE_string("split", "test", "train | valid | test.")
flags.DEFINE_string("baseline_run_dir", None, "Run to compute RelaImpr against (evaluated on the same split).")


def evaluate_run(run_dir: str, split: str, dataset=None, batch_size: int = 4096, click_buckets=None) -> dict:
    from mmctr_tf.data.datasets import Dataset, ensure_dataset
    from mmctr_tf.evaluation.evaluate import evaluate_split
    from mmctr_tf.training.trainer import load_run

    model, record = load_run(run_dir)
    path = dataset or record.get("data_path") or ensure_dataset(record["train"]["dataset"], record["train"]["data_dir"])
    return {"model": record["train"]["model"], "run_dir": run_dir, "split": split,
            **evaluate_split(model, Dataset(path), split, batch_size, click_buckets)}


def main(argv):
    del argv
    common.quiet_tf()
    from mmctr_tf.data.schema import write_json_atomic
    from mmctr_tf.evaluation.metrics import check_click_buckets, rela_impr

    if not FLAGS.run_dir:
        return common.fail("run.evaluate: --run_dir is required")
    ds = FLAGS.dataset if FLAGS["dataset"].present else None
    try:
        res = evaluate_run(FLAGS.run_dir, FLAGS.split, ds, click_buckets=check_click_buckets(FLAGS.click_buckets))
        if FLAGS.baseline_run_dir:
            base = evaluate_run(FLAGS.baseline_run_dir, FLAGS.split, ds)
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
